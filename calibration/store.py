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
from mosaic_edge.errors import ContractMismatchError, DataError


def validate_calibration_set(
    data: Mapping[str, np.ndarray], contract: Contract, what: str = "calibration set"
) -> int:
    """Check keys, dtype (float32), shapes ``[N, C, P, P]`` and finiteness; return N.

    Raises:
        DataError: naming every problem.
    """
    try:
        n = contract.validate_batch(data)  # names, float32 dtype, [N, C, P, P] shapes, one N
    except ContractMismatchError as exc:
        raise DataError(f"{what}: {exc}") from exc
    bad = [name for name in contract.input_names if not np.isfinite(data[name]).all()]
    if bad:
        raise DataError(f"{what}: {', '.join(bad)} hold(s) non-finite values")
    return n


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
