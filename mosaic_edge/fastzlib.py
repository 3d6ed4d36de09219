"""zlib's inflate and CRC-32 for the tile readers, through libdeflate when it is installed.

libdeflate (the ``deflate`` package, extra ``runtime``) inflates a whole buffer of known size ~2x faster than
zlib and computes CRC-32 ~9x faster (carry-less multiplication); tile reading is the host's largest cost
after hashing. Without it the standard library's :mod:`zlib` does the same work with the same results.
"""

from __future__ import annotations

import importlib
import zlib
from typing import Any

try:
    _libdeflate: Any = importlib.import_module("deflate")
except ImportError:  # the core works without it
    _libdeflate = None

BACKEND = "libdeflate" if _libdeflate is not None else "zlib"


def crc32(data: Any) -> int:
    """CRC-32 of a bytes-like object (as :func:`zlib.crc32`)."""
    return _libdeflate.crc32(data) if _libdeflate is not None else zlib.crc32(data)


def inflate(data: Any, size: int) -> bytes | bytearray:
    """The first ``size`` bytes of a zlib stream's content (fewer when it holds fewer).

    Raises:
        zlib.error: the stream is corrupt.
    """
    if _libdeflate is not None:
        try:
            return _libdeflate.zlib_decompress(data, size)
        except _libdeflate.DeflateError:
            pass  # corrupt, or more than ``size`` bytes inside: zlib says which
    return zlib.decompressobj().decompress(data, size)
