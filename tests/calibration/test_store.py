"""The .npz calibration store: validated against the contract, no pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mosaic_edge.calibration.store import load_calibration_set, save_calibration_set
from mosaic_edge.contract import Contract
from mosaic_edge.errors import DataError

P = 8


def _contract() -> Contract:
    return Contract(patch_size=P)


def _data(n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "sar": rng.normal(size=(n, 2, P, P)).astype(np.float32),
        "optical": rng.normal(size=(n, 12, P, P)).astype(np.float32),
    }


def test_round_trip(tmp_path: Path) -> None:
    data = _data()
    path = save_calibration_set(tmp_path / "calib.npz", data, _contract())
    back = load_calibration_set(path, _contract())
    assert sorted(back) == ["optical", "sar"]
    for k in data:
        np.testing.assert_array_equal(back[k], data[k])


def test_rejects_pickled_object_arrays(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, sar=np.array([{"x": 1}], dtype=object), optical=_data()["optical"])
    with pytest.raises(DataError, match="pickled"):
        load_calibration_set(path, _contract())


def test_rejects_a_plain_pickle(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps(_data()))
    with pytest.raises(DataError):
        load_calibration_set(path, _contract())


def test_rejects_wrong_keys(tmp_path: Path) -> None:
    data = _data()
    path = tmp_path / "k.npz"
    np.savez(path, sar=data["sar"], s2=data["optical"])
    with pytest.raises(DataError, match="contract's inputs"):
        load_calibration_set(path, _contract())


@pytest.mark.parametrize("bad", ["shape", "dtype", "count", "nan"])
def test_rejects_wrong_arrays(tmp_path: Path, bad: str) -> None:
    data = _data()
    if bad == "shape":
        data["optical"] = data["optical"][:, :10]
    elif bad == "dtype":
        data["sar"] = data["sar"].astype(np.float64)
    elif bad == "count":
        data["sar"] = data["sar"][:2]
    else:
        data["sar"][0, 0, 0, 0] = np.nan
    path = tmp_path / "x.npz"
    np.savez(path, **data)
    with pytest.raises(DataError):
        load_calibration_set(path, _contract())
    with pytest.raises(DataError):
        save_calibration_set(tmp_path / "y.npz", data, _contract())
    assert not (tmp_path / "y.npz").exists()


def test_rejects_patch_size_of_another_contract(tmp_path: Path) -> None:
    path = save_calibration_set(tmp_path / "c.npz", _data(), _contract())
    with pytest.raises(DataError, match="shape"):
        load_calibration_set(path, Contract(patch_size=16))
