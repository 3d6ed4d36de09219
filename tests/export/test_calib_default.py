"""The default INT8 calibration method (minmax: benchmarks/RESULTS.md, "INT8 safety net") is one default, in the
library and on the command line; the legacy TensorRT cache still names the calibrator TensorRT replays it with."""

from __future__ import annotations

import inspect

from mosaic_edge.commands.export import export
from mosaic_edge.export.pipeline import ExportConfig
from mosaic_edge.trt_calib_cache import parse_calib_cache, write_calib_cache


def test_minmax_is_the_default_everywhere(tmp_path):
    assert ExportConfig().calib_method == "minmax"
    assert inspect.signature(export).parameters["calib_method"].default.default == "minmax"
    path = write_calib_cache(tmp_path / "calib.cache", {"input": 2.0}, trt_version="10.3.0")
    assert parse_calib_cache(path.read_text()).algorithm == "EntropyCalibration2"
