"""Phase 3 (end-to-end fine-tune) moves the encoders; the linear-probe protocol (phase 2) must not."""

from __future__ import annotations

import torch

from mosaic_edge.train.config import TrainConfig
from mosaic_edge.train.data import contract_for_config, load_split
from mosaic_edge.train.evaluate import linear_probe
from mosaic_edge.train.finetune import finetune
from mosaic_edge.train.models import build_model

CFG = TrainConfig(arch="tiny", n_train=32, n_val=16, n_test=16, patch_size=24, head_epochs=5, device="cpu")


def _encoder_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("enc_")}


def _setup(label_fraction: float = 1.0):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    contract = contract_for_config(CFG)
    model = build_model("tiny", contract.num_classes, 16)
    return model, contract, load_split(CFG, contract, "train", label_fraction)


def test_linear_probe_keeps_encoders_frozen() -> None:
    model, contract, split = _setup()
    before = _encoder_state(model)
    heads_before = model.cls_fused.weight.clone()
    linear_probe(model, CFG, contract, 1.0, torch.device("cpu"), split)
    after = _encoder_state(model)
    # BatchNorm running statistics included: extraction runs in eval mode
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(heads_before, model.cls_fused.weight)


def test_finetune_updates_encoders_and_heads_and_lowers_the_loss() -> None:
    model, contract, split = _setup()
    enc_before, head_before = _encoder_state(model), model.cls_fused.weight.clone()
    proj_before = model.proj_sar.net[0].weight.clone()
    hist = finetune(model, split, contract, 6, 3e-3, 0, torch.device("cpu"), batch_size=16)
    assert len(hist) == 6 and hist[-1] < hist[0]
    changed = [
        k
        for k, v in _encoder_state(model).items()
        if v.is_floating_point() and not torch.equal(v, enc_before[k])
    ]
    assert any(k.startswith("enc_sar") for k in changed) and any(k.startswith("enc_optical") for k in changed)
    assert not torch.equal(head_before, model.cls_fused.weight)
    assert torch.equal(proj_before, model.proj_sar.net[0].weight)  # projection heads are not fine-tuned
    assert not model.training


def test_finetune_uses_only_labelled_patches_and_is_deterministic() -> None:
    model, contract, split = _setup(label_fraction=0.5)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    h1 = finetune(model, split, contract, 2, 1e-3, 3, torch.device("cpu"), batch_size=8)
    w1 = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ref)
    h2 = finetune(model, split, contract, 2, 1e-3, 3, torch.device("cpu"), batch_size=8)
    assert h1 == h2 and all(torch.equal(w1[k], v) for k, v in model.state_dict().items())
    # with no labelled patch there is nothing to fine-tune on: a no-op
    split.labelled = torch.zeros_like(split.labelled)
    assert finetune(model, split, contract, 2, 1e-3, 3, torch.device("cpu")) == []
