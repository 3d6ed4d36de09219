"""Quiet calls into ONNX Runtime's quantization tools, with one progress line of our own instead.

``onnxruntime.quantization.calibrate`` reports each calibration step with ``print()`` ("Collecting tensor data
and making histogram ...", bin counts: 8 lines per export) and ``quantize_static`` logs "Please consider
pre-processing before quantization" through the root logger; neither says anything a user of ``export`` can act
on. :func:`quiet_quantization` swallows that stdout and those log records (other warnings, e.g. an int32 bias
overflow, still show) and reports the step through ``progress`` as one line with its duration.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable, Iterator

# Root-logger warnings of onnxruntime.quantization that carry no information for our users.
_NOISE = ("Please consider",)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE)


@contextlib.contextmanager
def quiet_quantization(what: str, progress: Callable[[str], None] | None = None) -> Iterator[None]:
    """Run the block with ORT's quantization chatter silenced; report ``what`` and its duration via ``progress``."""
    root = logging.getLogger()
    noise = _DropNoise()
    root.addFilter(noise)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(noise)
    if progress is not None:
        progress(f"{what} ({time.perf_counter() - start:.1f} s)")
