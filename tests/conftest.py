"""Shared fixtures and hardware capability probes (STYLE.md #9).

Tests marked ``gpu`` need a CUDA GPU, ``trt`` needs TensorRT; they are skipped when the probe says no.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mosaic_edge.optional import available

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
BENV2_MINI = DATA / "benv2-mini"


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch means no CUDA for our purposes
        return False


HAS_TRT = available("tensorrt")
HAS_CUDA = _has_cuda()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU on this machine")
    skip_trt = pytest.mark.skip(reason="TensorRT is not installed")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "trt" in item.keywords and not HAS_TRT:
            item.add_marker(skip_trt)


@pytest.fixture(scope="session")
def benv2_root() -> Path:
    """The 24 real BigEarthNet v2.0 pairs (CDLA-Permissive-1.0, see tests/data/README.md)."""
    return BENV2_MINI
