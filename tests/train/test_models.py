"""Encoder registry, model output contract, augmentation geometry, checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mosaic_edge.contract import OUTPUT_NAMES, Contract
from mosaic_edge.errors import DataError
from mosaic_edge.train.augment import AugmentConfig, augment_pair
from mosaic_edge.train.checkpoint import load_checkpoint, save_checkpoint, state_dict_hash
from mosaic_edge.train.encoders import create_encoder, list_encoders
from mosaic_edge.train.models import build_model
from mosaic_edge.train.probe import tune_thresholds


def test_registry_lists_required_archs() -> None:
    assert {"tiny", "resnet10_micro", "resnet18_narrow", "resnet18", "resnet50"} <= set(list_encoders())
    with pytest.raises(ValueError, match="unknown architecture"):
        create_encoder("vgg", 3)


@pytest.mark.parametrize("arch,width", [("resnet18", 512), ("resnet50", 2048), ("tiny", 16)])
def test_encoder_features_split(arch: str, width: int) -> None:
    enc = create_encoder(arch, 12).eval()
    x = torch.randn(2, 12, 36, 36)
    with torch.no_grad():
        fmap = enc.forward_features(x)
        assert fmap.ndim == 4 and fmap.shape[1] == width == enc.num_features
        assert torch.allclose(enc.forward_head(fmap), enc(x))
    assert enc.stem[0][0].in_channels == 12 if arch != "tiny" else True


def test_model_outputs_follow_contract() -> None:
    model = build_model("tiny", num_classes=5, embed_dim=16).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 2, 24, 24), torch.randn(3, 12, 24, 24))
    assert tuple(out) == OUTPUT_NAMES
    for k in ("logits", "logits_sar", "logits_optical"):
        assert out[k].shape == (3, 5)
    for k in ("emb_sar", "emb_optical"):
        assert out[k].shape == (3, 16)
        assert torch.allclose(out[k].norm(dim=1), torch.ones(3), atol=1e-5)
    assert build_model(**model.config).config == model.config


def test_checkpoint_round_trip_weights_only(tmp_path: Path) -> None:
    model = build_model("tiny", num_classes=19)
    contract = Contract(thresholds=(0.3,) * 19)
    written = save_checkpoint(tmp_path / "m.pt", model, contract, extra={"note": "x"})
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["model_config"]["arch"] == "tiny" and raw["extra"] == {"note": "x"}
    loaded, c2 = load_checkpoint(tmp_path / "m.pt")
    assert not loaded.training
    assert c2 == written and c2.thresholds == (0.3,) * 19 and c2.model_name == "tiny"
    assert c2.model_hash == state_dict_hash(loaded.state_dict())
    x = (torch.randn(2, 2, 16, 16), torch.randn(2, 12, 16, 16))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(*x)["logits"], loaded(*x)["logits"])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError):
        load_checkpoint(tmp_path / "bad.pt")


def test_augment_same_geometry_for_both_modalities() -> None:
    # Pure spatial transform, identical content in both modalities -> identical outputs.
    cfg = AugmentConfig(speckle_p=0, gain=0, cloud_p=0)
    base = torch.randn(4, 1, 24, 24)
    sar, opt = base.repeat(1, 2, 1, 1), base.repeat(1, 12, 1, 1)
    c = Contract()
    s, o = augment_pair(sar, opt, c, cfg, torch.Generator().manual_seed(3))
    assert torch.allclose(s[:, :1], o[:, :1], atol=1e-6)
    assert not torch.allclose(s, sar)
    s2, _ = augment_pair(sar, opt, c, AugmentConfig(), torch.Generator().manual_seed(3), size=16)
    s3, _ = augment_pair(sar, opt, c, AugmentConfig(), torch.Generator().manual_seed(3), size=16)
    assert s2.shape == (4, 2, 16, 16) and torch.equal(s2, s3)  # seeded generator -> reproducible


def test_tune_thresholds_maximises_f1() -> None:
    probs = torch.tensor([[0.9, 0.2], [0.8, 0.1], [0.3, 0.6], [0.1, 0.05]]).numpy()
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0]]).numpy()
    t = tune_thresholds(probs, labels)
    assert 0.3 < t[0] < 0.8 and 0.2 < t[1] <= 0.6
    assert ((probs >= t) == labels.astype(bool)).all()
