"""mosaic_edge.calibration: calibration-set sampling, the .npz store, Q/DQ INT8 quantization, TensorRT lint.

The TensorRT calibration cache format lives in the core (:mod:`mosaic_edge.trt_calib_cache`): the engine
builder on the device reads it too.

Never imports torch (tested). onnx / onnxruntime are imported inside :mod:`.quantize` functions only, so
sampling and the store work with numpy alone.
"""

from mosaic_edge.calibration.sampling import (
    SamplingConfig,
    sample_calibration_set,
    select_calibration_indices,
)
from mosaic_edge.calibration.store import load_calibration_set, save_calibration_set, validate_calibration_set

__all__ = [
    "SamplingConfig",
    "load_calibration_set",
    "sample_calibration_set",
    "save_calibration_set",
    "select_calibration_indices",
    "validate_calibration_set",
]
