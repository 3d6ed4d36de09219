"""``.npz`` tiles parsed from bytes already in memory: no pickles, no copies, sizes checked first.

``np.savez`` writes a zip of uncompressed (stored) ``.npy`` members. :func:`parse_npz` reads the zip's central
directory, checks every member's name, ``.npy`` header (shape, dtype: no Python objects), declared size
against the limit and CRC, and returns each array as a read-only view into the file's bytes -- the one read of
the file is the only copy. ``data`` is any bytes-like object (the readers hand over a memoryview of the buffer
the file was read into). Archives it does not take in place (Deflate-compressed members from
``np.savez_compressed``, zip64 central directories, encryption) go through :mod:`zipfile` with the same checks
before anything is decompressed.
"""

from __future__ import annotations

import io
import struct
import zipfile
from functools import lru_cache
from typing import Any

import numpy as np

from mosaic_edge import fastzlib
from mosaic_edge.errors import DataError

NPZ_KEYS = frozenset({"sar", "optical", "cloudy", "transform", "crs", "scl", "cloud_mask", "optical_product"})
_EOCD, _EOCD64_LOCATOR, _CENTRAL, _LOCAL = b"PK\x05\x06", b"PK\x06\x07", b"PK\x01\x02", b"PK\x03\x04"
# Central directory entry: flags, method, crc32, compressed size, uncompressed size, name / extra / comment
# lengths, local header offset (APPNOTE 4.3.12).
_CENTRAL_ENTRY = struct.Struct("<8xHH4xIIIHHH8xI")


def _zip_members(data: Any, name: str) -> list[tuple[str, int, int, int, int, int]] | None:
    """``(member, method, flags, crc, compressed size, offset of its data)`` from the central directory.

    None when the archive uses something left to :mod:`zipfile` (zip64 records, multiple disks).
    """
    tail = max(0, len(data) - 22 - 65535)
    at = bytes(data[tail:]).rfind(_EOCD)
    at = at + tail if at >= 0 else at
    if at < 0 or at + 22 > len(data):
        raise DataError(f"{name}: unreadable .npz (not a zip archive)")
    disk, _cd_disk, _n_here, n, _size, cd_offset = struct.unpack_from("<HHHHII", data, at + 4)
    if disk != 0 or cd_offset == 0xFFFFFFFF or (at >= 20 and bytes(data[at - 20:at - 16]) == _EOCD64_LOCATOR):
        return None
    members, pos = [], cd_offset
    for _ in range(n):
        if bytes(data[pos:pos + 4]) != _CENTRAL or pos + _CENTRAL_ENTRY.size > len(data):
            raise DataError(f"{name}: unreadable .npz (corrupt central directory)")
        flags, method, crc, csize, usize, nlen, xlen, clen, local = _CENTRAL_ENTRY.unpack_from(data, pos)
        member = bytes(data[pos + 46:pos + 46 + nlen]).decode("utf-8", "replace")
        pos += 46 + nlen + xlen + clen
        if 0xFFFFFFFF in (csize, usize, local):
            return None
        if bytes(data[local:local + 4]) != _LOCAL or local + 30 > len(data):
            raise DataError(f"{name}: unreadable .npz (corrupt local header of {member})")
        lnlen, lxlen = struct.unpack_from("<HH", data, local + 26)
        members.append((member, method, flags, crc, csize, local + 30 + lnlen + lxlen))
    return members


@lru_cache(maxsize=256)
def _npy_header(major: int, header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of an ``.npy`` header (the bytes after magic and version), parsed by
    numpy's own reader (``ast.literal_eval``, size-capped); cached because tiles repeat their headers."""
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return read(io.BytesIO(header))


def check_declared(shape: tuple[int, ...], dtype: np.dtype, key: str, name: str, max_pixels: int) -> None:
    """Refuse object arrays and arrays declaring more than 16 bands of ``max_pixels`` (before any read)."""
    if dtype.hasobject:
        raise DataError(f"{name}: array {key!r} holds Python objects (pickles refused)")
    if int(np.prod(shape, dtype=np.int64)) > 16 * max_pixels:
        raise DataError(f"{name}: array {key!r} declares shape {shape}, over the limit")


def _npy_view(data: Any, start: int, size: int, key: str, name: str, max_pixels: int) -> np.ndarray:
    """The ``.npy`` array stored at ``data[start:start + size]``, as a read-only view (no copy)."""
    member = memoryview(data)[start:start + size]
    if size < 10 or bytes(member[:6]) != b"\x93NUMPY":
        raise DataError(f"{name}: unreadable .npz (array {key!r} is not .npy data)")
    major = member[6]
    if major == 1:
        hlen = 10 + struct.unpack_from("<H", member, 8)[0]
    elif major == 2:
        hlen = 12 + struct.unpack_from("<I", member, 8)[0]
    else:
        raise DataError(f"{name}: unreadable .npz (array {key!r} has .npy format version {major})")
    try:
        shape, fortran, dtype = _npy_header(major, bytes(member[8:hlen]))
    except ValueError as exc:
        raise DataError(f"{name}: unreadable .npz (array {key!r}: {exc})") from exc
    check_declared(shape, dtype, key, name, max_pixels)
    count = int(np.prod(shape, dtype=np.int64))
    if hlen + count * dtype.itemsize > size:
        raise DataError(f"{name}: unreadable .npz (array {key!r} is truncated)")
    arr = np.frombuffer(member, dtype, count, hlen)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def parse_npz(data: Any, name: str, max_pixels: int) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file's bytes (names in :data:`NPZ_KEYS`; see the module docstring).

    Raises:
        DataError: naming ``name`` and the problem.
    """
    if len(data) < 22:
        raise DataError(f"{name}: unreadable .npz (a {len(data)}-byte file is not a zip archive)")
    members = _zip_members(data, name)
    if members is None or any(method != 0 or flags & 1 for _, method, flags, *_ in members):
        return _load_with_zipfile(io.BytesIO(bytes(data)), name, max_pixels)
    out: dict[str, np.ndarray] = {}
    for member, _method, _flags, crc, size, start in members:
        key = member.removesuffix(".npy")
        if key not in NPZ_KEYS:
            raise DataError(f"{name}: unexpected array {key!r} (allowed: {sorted(NPZ_KEYS)})")
        if start + size > len(data):
            raise DataError(f"{name}: unreadable .npz (array {key!r} ends past the end of the file)")
        arr = _npy_view(data, start, size, key, name, max_pixels)
        if fastzlib.crc32(memoryview(data)[start:start + size]) != crc:
            raise DataError(f"{name}: unreadable .npz (array {key!r} fails its CRC check)")
        out[key] = arr
    return out


def _load_with_zipfile(source: Any, name: str, max_pixels: int) -> dict[str, np.ndarray]:
    """The :mod:`zipfile` route: each member's header is checked before the member is decompressed."""
    fmt = np.lib.format
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                if key not in NPZ_KEYS:
                    raise DataError(f"{name}: unexpected array {key!r} (allowed: {sorted(NPZ_KEYS)})")
                with zf.open(info) as fh:
                    version = fmt.read_magic(fh)
                    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, _fortran, dtype = reader(fh)
                    check_declared(shape, dtype, key, name, max_pixels)
                with zf.open(info) as fh:
                    out[key] = fmt.read_array(fh, allow_pickle=False)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile/numpy raise many types on corrupt archives
        raise DataError(f"{name}: unreadable .npz ({type(exc).__name__}: {exc})") from exc
    return out
