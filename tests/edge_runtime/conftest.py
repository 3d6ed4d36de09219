"""Fixtures of the runtime tests (helpers live in :mod:`tests.support.runtime`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mosaic_edge.contract import Contract
from mosaic_edge.data.sources import DataSpec
from tests.support.runtime import tiny_contract, write_safety_export, write_tiny_export

# The safety export's INT8 logits are the fp32 ones +-SAFETY_SHIFT (alternating per class); its fallback margin
# is SAFETY_SHIFT + 0.01, so every window whose decision could flip is re-run.
SAFETY_SHIFT = 0.05


@pytest.fixture(scope="session")
def contract() -> Contract:
    return tiny_contract()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory, contract: Contract) -> Path:
    return write_tiny_export(tmp_path_factory.mktemp("tiny_export"), contract)


@pytest.fixture(scope="session")
def safety_export(tmp_path_factory: pytest.TempPathFactory, contract: Contract) -> Path:
    """The tiny export with the INT8 safety net (:func:`tests.support.runtime.write_safety_export`)."""
    return write_safety_export(tmp_path_factory.mktemp("safety_export"), contract, margin=SAFETY_SHIFT + 0.01,
                               shift=SAFETY_SHIFT)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_export: Path) -> Path:
    return tiny_export / "model.onnx"


@pytest.fixture(scope="session")
def real_tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `tiny` MosaicModel (random weights, 24 px) exported by the export stage (fp32 only: fast)."""
    torch = pytest.importorskip("torch")
    from mosaic_edge.export.pipeline import ExportConfig, run_export
    from mosaic_edge.train.checkpoint import save_checkpoint
    from mosaic_edge.train.models import build_model

    root = tmp_path_factory.mktemp("real_export")
    torch.manual_seed(0)
    contract = Contract(patch_size=24, model_name="tiny")
    spec = DataSpec("synthetic", {"patch_size": 24, "n_train": 32, "n_val": 8, "n_test": 16, "seed": 0})
    extra = {"data_spec": spec.to_dict()}
    save_checkpoint(root / "tiny.pt", build_model("tiny").eval(), contract, extra=extra)
    run_export(root / "tiny.pt", root / "export", ExportConfig(eval_limit=8, parity_limit=4))
    return root / "export"
