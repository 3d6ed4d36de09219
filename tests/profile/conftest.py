"""Fixtures of the profile tests: the runtime tests' tiny ONNX export (reused, not copied).

``tests/edge_runtime/conftest.py`` writes a tiny ONNX model with the contract's I/O and an export directory
with a manifest; its helpers are loaded from that file so both suites profile/serve the same fixture model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_RUNTIME_CONFTEST = Path(__file__).resolve().parents[1] / "edge_runtime" / "conftest.py"


def _runtime_fixtures():
    spec = importlib.util.spec_from_file_location("_mosaic_runtime_fixtures", _RUNTIME_CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def profile_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Export dir: model.onnx (fp32), model.int8.onnx (TensorRT Q/DQ), model.int8-cpu.onnx, manifest."""
    fx = _runtime_fixtures()
    return fx.write_tiny_export(tmp_path_factory.mktemp("profile_export"), fx.tiny_contract())
