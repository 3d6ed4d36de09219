"""The two caches a TensorRT build reads: the timing cache (a speed-up) and the legacy calibration cache.

Timing cache -- a corrupt, truncated or foreign file never stops a build (TensorRT's Python API:
``IBuilderConfig.create_timing_cache(bytes)`` returns None for bytes it cannot parse, ``set_timing_cache(cache,
ignore_mismatch=False)`` returns False for a cache made on another device or TensorRT, ``get_timing_cache()``
returns None when no cache is set). Each means "build with an empty cache" and a warning. The file is written to
a temporary file and renamed, under an exclusive ``fcntl`` lock, so two builds never interleave their bytes and a
reader never sees half a file.

Calibration cache (implicit INT8, TensorRT < 11) -- TensorRT reads ``calib.cache`` only when its header
(``TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2``) names the running version; otherwise it ignores the cache and
calibrates, which a replay-only calibrator cannot. :func:`calibration_cache_for` checks the header, rewrites it
when every tensor of the cache is a tensor of the network (same model, other TensorRT), and refuses otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from packaging.version import Version

from mosaic_edge.errors import UserError
from mosaic_edge.trt_calib_cache import ALGORITHM, parse_calib_cache, trt_version_int

log = logging.getLogger(__name__)


def set_timing_cache(config: Any, path: Path | None) -> bool:
    """Hand the timing cache at ``path`` (if any) to the builder config; an unusable one is replaced by an empty one.

    Returns:
        Whether the config holds a timing cache (False only when TensorRT will not even take an empty one).
    """
    data = b""
    if path is not None and path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("timing cache %s unreadable (%s); building with an empty one", path, exc)
    cache = config.create_timing_cache(data)
    if cache is None and data:
        log.warning("timing cache %s is corrupt or from another TensorRT; building with an empty one", path)
        data, cache = b"", config.create_timing_cache(b"")
    if cache is not None and not config.set_timing_cache(cache, False):
        if not data:
            cache = None
        else:
            log.warning("timing cache %s was made on another device or TensorRT; building with an empty one", path)
            cache = config.create_timing_cache(b"")
            if cache is not None and not config.set_timing_cache(cache, False):
                cache = None
    if cache is None:
        log.warning("TensorRT gave no timing cache; building without one")
    return cache is not None


def save_timing_cache(config: Any, path: Path) -> bool:
    """Write the config's timing cache to ``path`` atomically, under a lock; False (and a warning) if there is none."""
    cache = config.get_timing_cache()
    if cache is None:
        log.warning("TensorRT returned no timing cache after the build; %s left as it was", path)
        return False
    data = bytes(cache.serialize())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_locked(path, data)
    return True


def write_locked(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file + fsync + rename, under an exclusive lock on ``<path>.lock``."""
    import fcntl

    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def network_tensor_names(network: Any) -> set[str]:
    """Names of the network's inputs and of every layer output (what calibration-cache lines refer to)."""
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        names.update(layer.get_output(j).name for j in range(layer.num_outputs))
    return names


def calibration_cache_for(path: Path, trt_version: Version, tensor_names: Iterable[str]) -> bytes:
    """The bytes of ``calib.cache`` the running TensorRT will accept.

    Only called for TensorRT < 11 (:func:`~mosaic_edge.export.trt.plan_build` refuses a cache on later ones).

    Raises:
        UserError: the file is not a calibration cache, or it was written for another TensorRT AND names tensors
            this network does not have (another model).
    """
    text = path.read_text()
    cache = parse_calib_cache(text, str(path))
    if cache.algorithm != ALGORITHM:
        raise UserError(f"{path}: calibration algorithm {cache.algorithm}, the builder replays {ALGORITHM} only")
    want = trt_version_int(str(trt_version))
    if cache.version_int == want:
        return text.encode()
    missing = sorted(set(cache.scales) - set(tensor_names))
    if missing:
        raise UserError(
            f"{path} was written for another TensorRT (header TRT-{cache.version_int}, running TensorRT "
            f"{trt_version} wants TRT-{want}) and {len(missing)} of its tensors are not in this network "
            f"(e.g. {missing[:3]}): it belongs to another model. Re-export with --int8, or build model.int8.onnx"
        )
    log.warning("%s: header TRT-%d rewritten to TRT-%d for TensorRT %s (all %d tensors found in the network)",
                path, cache.version_int, want, trt_version, len(cache.scales))
    lines = text.splitlines()
    lines[0] = f"TRT-{want}-{cache.algorithm}"
    return ("\n".join(lines) + "\n").encode()
