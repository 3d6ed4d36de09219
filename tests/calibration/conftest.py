"""Calibration test fixtures (helpers live in :mod:`tests.support.calib`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests.support.calib import build_tiny_onnx, heavy_tailed_calib  # noqa: E402


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("tiny") / "model.onnx")


@pytest.fixture(scope="session")
def calib_data() -> dict[str, np.ndarray]:
    return heavy_tailed_calib()
