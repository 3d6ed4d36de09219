"""scripts/gpu_checks/train_paths.py runs end to end (here on the CPU, with torch.compile stubbed)."""

from __future__ import annotations

import pytest
import torch

from mosaic_edge.data.synthetic import SyntheticConfig
from scripts.gpu_checks import train_paths


def test_train_paths_check_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # inductor needs minutes on a CPU
    small = SyntheticConfig(n_train=32, n_val=8, n_test=8, patch_size=12, stats_samples=16)
    rows = train_paths.run("cpu", small, pack_workers=0, arch="tiny", batch_size=16, num_workers=0,
                               head_epochs=3, epochs=1, label_fraction=0.5, finetune_epochs=1)
    by = {r["check"]: r for r in rows}
    assert set(by) == {"train_paths/eager", "train_paths/compiled", "train_paths/store_loader"}
    assert all(r["status"] == "ok" for r in rows), rows
    assert by["train_paths/eager"]["phases"] == ["pretrain", "head", "finetune", "test"]
    assert by["train_paths/compiled"]["compile"] is True and by["train_paths/store_loader"]["patches_per_s"] > 0


def test_train_paths_check_skips_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert {r["status"] for r in train_paths.run()} == {"skip"}
