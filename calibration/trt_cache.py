"""The TensorRT calibration cache as calibration writes it; the format lives in the core
(:mod:`mosaic_edge.trt_calib_cache`) because the engine builder on the device reads it too."""

from mosaic_edge.trt_calib_cache import (
    ALGORITHM,
    DEFAULT_TRT_VERSION,
    CalibCache,
    format_calib_cache,
    hex_to_scale,
    parse_calib_cache,
    read_calib_cache,
    scale_to_hex,
    trt_version_int,
    write_calib_cache,
)

__all__ = ["ALGORITHM", "DEFAULT_TRT_VERSION", "CalibCache", "format_calib_cache", "hex_to_scale",
           "parse_calib_cache", "read_calib_cache", "scale_to_hex", "trt_version_int", "write_calib_cache"]
