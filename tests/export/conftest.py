"""Fixtures of the export tests: a tiny checkpoint trained for a few seconds, samples, one full CLI export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mosaic_edge.contract import Contract
from mosaic_edge.data.sources import DataSpec
from mosaic_edge.data.synthetic import SyntheticConfig, SyntheticMosaic
from mosaic_edge.export.parity import Samples, collect_samples

# Synthetic data is in BigEarthNet v2 raw units, so the published benv2 statistics normalise it well enough
# and the contract needs no statistics pass. 24 px patches (the model is fully convolutional) keep data
# generation and the few training steps to seconds on 2 busy cores.
PATCH = 24
CONTRACT = Contract(dataset="synthetic", model_name="tiny", patch_size=PATCH)
SYNTHETIC = SyntheticConfig(patch_size=PATCH)
SYNTHETIC_SPEC = DataSpec("synthetic", dataclasses.asdict(SYNTHETIC))
N_TRAIN, N_TEST = 128, 64


@pytest.fixture(scope="session")
def train_samples() -> Samples:
    return collect_samples("synthetic-train", [SyntheticMosaic(SYNTHETIC, "train")], CONTRACT, N_TRAIN)


@pytest.fixture(scope="session")
def test_samples() -> Samples:
    return collect_samples("synthetic-test", [SyntheticMosaic(SYNTHETIC, "test")], CONTRACT, N_TEST)


@pytest.fixture(scope="session")
def benv2_samples(benv2_root: Path) -> Samples:
    from mosaic_edge.data.benv2 import BigEarthNetV2

    splits = ("train", "validation", "test")
    sources = [BigEarthNetV2(benv2_root, split, include_snow_cloud=True) for split in splits]
    return collect_samples("benv2-sample", sources, CONTRACT)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, train_samples: Samples) -> Path:
    """A tiny MosaicModel fitted with BCE on 128 synthetic patches (seconds), so INT8 damage shows in mAP."""
    torch = pytest.importorskip("torch")  # here, not at module level: the TensorRT tests beside need no torch
    from mosaic_edge.train.checkpoint import save_checkpoint
    from mosaic_edge.train.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 10x faster than 2 threads for this tiny net on a shared, busy machine
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=CONTRACT.num_classes, embed_dim=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sar, opt_in = (torch.from_numpy(train_samples.inputs[k]) for k in ("sar", "optical"))
    labels = torch.from_numpy(train_samples.labels)
    model.train()
    for step in range(60):
        idx = torch.from_numpy(np.random.default_rng(step).choice(len(labels), 32, replace=False))
        out = model(sar[idx], opt_in[idx])
        loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(out[k], labels[idx])
                   for k in ("logits", "logits_sar", "logits_optical"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model.eval(), CONTRACT, extra={"data_spec": SYNTHETIC_SPEC.to_dict()})
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, benv2_root: Path) -> Path:
    """One full ``mosaic-edge export --fp16 --int8`` through the CLI entry point (shared by several tests)."""
    from mosaic_edge.cli import main

    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("export")
    # minmax: the fastest calibration (entropy's KL search costs seconds per tensor); --max-map-drop 5: on
    # 64 test patches of a 24 px model a class with 2 positives moves macro mAP by pts when one pair re-ranks.
    argv = ["export", str(tiny_checkpoint), "--out", str(out), "--fp16", "--int8", "--calib-size", "32",
            "--calib-method", "minmax", "--max-map-drop", "5", "--eval-limit", str(N_TEST),
            "--eval-data", str(benv2_root)]
    try:
        main(argv)
    except SystemExit as exc:  # typer's standalone mode exits 0 on success
        assert exc.code in (0, None), f"export exited {exc.code}"
    return out


@pytest.fixture(scope="session")
def contract() -> Contract:
    return CONTRACT
