"""Fixtures of the profile tests: the runtime tests' tiny ONNX export (:mod:`tests.support.runtime`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.runtime import tiny_contract, write_tiny_export


@pytest.fixture(scope="session")
def profile_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Export dir: model.onnx (fp32), model.int8.onnx (TensorRT Q/DQ), model.int8-cpu.onnx, manifest."""
    return write_tiny_export(tmp_path_factory.mktemp("profile_export"), tiny_contract())
