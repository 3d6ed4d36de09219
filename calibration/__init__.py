"""mosaic_edge.calibration: calibration-set sampling, the .npz store, Q/DQ INT8 quantization, TensorRT cache.

Never imports torch (tested). onnx / onnxruntime are imported inside :mod:`.quantize` functions only, so
sampling and the store work with numpy alone.
"""

from mosaic_edge.calibration.sampling import (
    SamplingConfig,
    sample_calibration_set,
    select_calibration_indices,
)
from mosaic_edge.calibration.store import load_calibration_set, save_calibration_set, validate_calibration_set
from mosaic_edge.calibration.trt_cache import parse_calib_cache, read_calib_cache, write_calib_cache

__all__ = [
    "SamplingConfig",
    "load_calibration_set",
    "parse_calib_cache",
    "read_calib_cache",
    "sample_calibration_set",
    "save_calibration_set",
    "select_calibration_indices",
    "validate_calibration_set",
    "write_calib_cache",
]
