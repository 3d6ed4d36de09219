"""The GPU training-path check script runs its checks end to end (on the CPU here, torch.compile stubbed)."""

from __future__ import annotations

import pytest
import torch

from mosaic_edge.data.synthetic import SyntheticConfig
from scripts import gpu_train_steps


def test_gpu_train_steps_script_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # inductor needs minutes on a CPU
    small = SyntheticConfig(n_train=32, n_val=8, n_test=8, patch_size=12, stats_samples=16)
    rows = gpu_train_steps.run("cpu", small, pack_workers=0, arch="tiny", batch_size=16, num_workers=0,
                               head_epochs=3, epochs=1, label_fraction=0.5, finetune_epochs=1)
    by = {r["check"]: r for r in rows}
    assert set(by) == {"train_eager", "train_compiled", "store_loader"}
    assert all(r["status"] == "ok" for r in rows), rows
    assert by["train_eager"]["phases"] == ["pretrain", "head", "finetune", "test"]
    assert by["train_compiled"]["compile"] is True and by["store_loader"]["patches_per_s"] > 0


def test_gpu_train_steps_skips_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert {r["status"] for r in gpu_train_steps.run()} == {"skipped"}
