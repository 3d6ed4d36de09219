"""The calibration set on disk: one ``.npz`` keyed by model input name, validated against the contract.

Loaded with ``allow_pickle=False`` (STYLE.md #11): a file holding object arrays is refused, as is one whose
keys, dtypes or shapes differ from what the contract says the model consumes.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.errors import DataError


def validate_calibration_set(
    data: Mapping[str, np.ndarray], contract: Contract, what: str = "calibration set"
) -> int:
    """Check keys, dtype (float32), shapes ``[N, C, P, P]`` and finiteness; return N.

    Raises:
        DataError: naming every problem.
    """
    problems = []
    keys, want = sorted(data), sorted(contract.input_names)
    if keys != want:
        problems.append(f"has arrays {keys}, the contract's inputs are {want}")
    sizes = set()
    for name, shape in contract.input_shapes().items():
        if name not in data:
            continue
        arr = data[name]
        if arr.dtype != np.float32:
            problems.append(f"{name} has dtype {arr.dtype}, expected float32")
        if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(shape[1:]):
            problems.append(f"{name} has shape {tuple(arr.shape)}, expected {shape}")
            continue
        if arr.shape[0] == 0:
            problems.append(f"{name} is empty")
        elif arr.dtype.kind == "f" and not np.isfinite(arr).all():
            problems.append(f"{name} holds non-finite values")
        sizes.add(int(arr.shape[0]))
    if len(sizes) > 1:
        problems.append(f"inputs disagree on the number of samples {sorted(sizes)}")
    if problems:
        raise DataError(f"{what}: " + "; ".join(problems))
    return sizes.pop()


def save_calibration_set(path: str | Path, data: Mapping[str, np.ndarray], contract: Contract) -> Path:
    """Validate and write ``data`` as a compressed ``.npz`` (atomically: temp file, then rename)."""
    path = Path(path)
    validate_calibration_set(data, contract, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **{k: np.ascontiguousarray(data[k]) for k in contract.input_names})  # type: ignore[arg-type]
    tmp.replace(path)
    return path


def load_calibration_set(path: str | Path, contract: Contract) -> dict[str, np.ndarray]:
    """Load a calibration ``.npz`` (no pickles) and validate it against ``contract``.

    Raises:
        DataError: unreadable file, pickled/object arrays, wrong keys, dtypes or shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: calibration set not found")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not an .npz archive (got a single array)")
        with npz:
            data = {k: npz[k] for k in npz.files}
    except ValueError as exc:  # numpy refuses object arrays without allow_pickle
        raise DataError(f"{path}: refused (pickled or object arrays are not allowed): {exc}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: unreadable calibration set: {exc}") from exc
    validate_calibration_set(data, contract, str(path))
    return data
