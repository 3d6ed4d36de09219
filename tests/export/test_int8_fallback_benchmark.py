"""benchmarks/int8_fallback.py feeds each export the input form its artefacts take."""

from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks.int8_fallback import model_inputs
from tests.support.runtime import TINY_PATCH, tiny_contract


def _windows(n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    raw_sar = rng.normal(-15.0, 4.0, (n, 2, TINY_PATCH, TINY_PATCH)).astype(np.float32)
    raw_opt = rng.uniform(1.0, 4000.0, (n, 12, TINY_PATCH, TINY_PATCH)).astype(np.float32)
    raw_sar[1, 0, 2, 3] = np.nan
    raw_opt[2, 5, 0, 0] = np.inf
    return {"raw_sar": raw_sar, "raw_optical": raw_opt,
            "sar": np.zeros_like(raw_sar), "optical": np.zeros_like(raw_opt)}


def test_a_raw_input_export_gets_raw_windows_with_non_finite_values_as_the_band_mean() -> None:
    contract = dataclasses.replace(tiny_contract(), input_form="raw")
    data = _windows()
    got = model_inputs(data, contract)
    assert got["sar"][1, 0, 2, 3] == np.float32(contract.sar_mean[0])
    assert got["optical"][2, 5, 0, 0] == np.float32(contract.optical_mean[5])
    ok = np.isfinite(data["raw_sar"])
    assert np.array_equal(got["sar"][ok], data["raw_sar"][ok])
    assert np.isfinite(got["optical"]).all() and got["optical"].dtype == np.float32


def test_a_standardised_export_gets_the_standardised_windows() -> None:
    data = _windows()
    got = model_inputs(data, tiny_contract())
    assert got["sar"] is data["sar"] and got["optical"] is data["optical"]
