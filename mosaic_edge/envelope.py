"""The calibration envelope of an INT8 model and the drift check of input windows against it (numpy only).

The envelope records, per input band, quantiles of the calibration set in RAW physical units (S1 backscatter in
dB, S2 L2A reflectance x 1e4): the host holds raw values (normalisation moves into the exported graph), so the
check needs no preprocessing. L2A no-data pixels (0 in every optical band) are left out of the quantiles and of
the check.

The drift check of a window (:meth:`Envelope.check`): on a fixed strided subsample of its pixels (every
:data:`DRIFT_STRIDE`-th row and column: 1/16 of the pixels), the fraction of values outside the envelope's
``[low, high]`` quantiles, per band and combined (all bands' sampled values pooled). A window is *drifted* when
the combined fraction exceeds the envelope's ``threshold``, which export sets from the calibration windows
themselves (:func:`drift_threshold`): about :data:`CALIB_FLAG_RATE` of the calibration windows would be
flagged, never less than :data:`MIN_DRIFT_THRESHOLD`. Cost and rates: ``benchmarks/RESULTS.md``, "Drift check".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.errors import UserError

# Quantile levels recorded per band (the outer ones show the range the calibration set spanned).
ENVELOPE_LEVELS: tuple[float, ...] = (0.0, 0.001, 0.005, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.995, 0.999, 1.0)
# The levels the drift check compares with: a value below the 0.5 % or above the 99.5 % quantile of the
# calibration set is "beyond"; in-distribution windows hold ~1 % such values on average.
CHECK_LEVELS: tuple[float, float] = (0.005, 0.995)
# Pixel subsample of the check: every 4th row and column (1/16 of the pixels) keeps a 120 x 120 px, 14-band
# window at ~60 us (benchmarks/drift_check.py) while a drifted window still shows in hundreds of values.
DRIFT_STRIDE = 4
# The threshold flags about this share of the calibration windows themselves...
CALIB_FLAG_RATE = 0.01
# ... and never sits below this fraction of beyond-quantile values.
MIN_DRIFT_THRESHOLD = 0.05


@dataclass(frozen=True)
class DriftCheck:
    """Result of :meth:`Envelope.check` for ``n`` windows.

    Attributes:
        per_band: float64 [n, B] fraction of sampled values beyond the envelope, bands in :attr:`Envelope.bands`.
        combined: float64 [n] fraction of all sampled values (every band) beyond the envelope.
        drifted: bool [n], ``combined > threshold``.
    """

    per_band: np.ndarray
    combined: np.ndarray
    drifted: np.ndarray


@dataclass(frozen=True)
class Envelope:
    """Per-band quantiles of the calibration set (raw units) and the drift rule.

    Attributes:
        bands: Band names, SAR bands then optical bands (the contract's order).
        levels: Quantile levels of :attr:`quantiles`.
        quantiles: Per band, the value at each level (raw units).
        check_levels: (low, high) levels the drift check compares with (must be among ``levels``).
        stride: Pixel subsample of the check (every ``stride``-th row and column).
        threshold: A window is drifted when more than this fraction of its sampled values lies beyond.
        n_windows: Calibration windows the envelope was computed from.
    """

    bands: tuple[str, ...]
    levels: tuple[float, ...]
    quantiles: tuple[tuple[float, ...], ...]
    n_sar: int = 2
    check_levels: tuple[float, float] = CHECK_LEVELS
    stride: int = DRIFT_STRIDE
    threshold: float = MIN_DRIFT_THRESHOLD
    n_windows: int = 0
    _bounds: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.quantiles) != len(self.bands) or any(len(q) != len(self.levels) for q in self.quantiles):
            raise ValueError(f"envelope: {len(self.quantiles)} quantile rows for {len(self.bands)} bands and "
                             f"{len(self.levels)} levels")
        if not all(level in self.levels for level in self.check_levels):
            raise ValueError(f"envelope: check levels {self.check_levels} not among the levels {self.levels}")
        if self.stride < 1 or not 0.0 <= self.threshold <= 1.0 or not 0 < self.n_sar < len(self.bands):
            raise ValueError(f"envelope: bad stride {self.stride}, threshold {self.threshold} or n_sar {self.n_sar}")

    # ---- bounds --------------------------------------------------------------------------------------------
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 [B] low and high check bounds in raw units."""
        lo, hi = (self.levels.index(level) for level in self.check_levels)
        q = np.asarray(self.quantiles, dtype=np.float64)
        return q[:, lo], q[:, hi]

    def _typed_bounds(self, part: str, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of the SAR or optical bands as [C, 1, 1] arrays of ``dtype`` (cached per dtype).

        Comparing an integer array with float bounds would cast every pixel to float64; for integers
        ``x < lo`` is ``x < ceil(lo)`` and ``x > hi`` is ``x > floor(hi)``, so the bounds are cast instead.
        """
        key = f"{part}:{dtype.str}"
        if key not in self._bounds:
            lo, hi = self.bounds()
            sl = slice(0, self.n_sar) if part == "sar" else slice(self.n_sar, None)
            lo, hi = lo[sl], hi[sl]
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                lo = np.clip(np.ceil(lo), info.min, info.max)
                hi = np.clip(np.floor(hi), info.min, info.max)
            self._bounds[key] = (lo.astype(dtype)[:, None, None], hi.astype(dtype)[:, None, None])
        return self._bounds[key]

    # ---- the check -----------------------------------------------------------------------------------------
    def check(self, sar: np.ndarray, optical: np.ndarray | None) -> DriftCheck:
        """Drift check of raw windows (see the module doc).

        Args:
            sar: [n, 2, P, P] backscatter in dB (any real dtype).
            optical: [n, 12, P, P] L2A reflectance x 1e4 (uint16 or float), or None for SAR-only windows (then
                only the SAR bands are judged).

        Returns:
            :class:`DriftCheck`; the optical columns of ``per_band`` are 0 for windows without valid optical.
        """
        s = self.stride
        if sar.ndim != 4 or sar.shape[1] != self.n_sar:
            raise UserError(f"drift check: sar must be [n, {self.n_sar}, P, P], got {sar.shape}")
        sv = sar[:, :, ::s, ::s]
        lo, hi = self._typed_bounds("sar", sv.dtype)
        n, _, h, w = sv.shape
        sar_out = np.count_nonzero((sv < lo) | (sv > hi), axis=(2, 3))  # [n, 2]
        per_band = np.zeros((n, len(self.bands)), dtype=np.float64)
        per_band[:, : self.n_sar] = sar_out / float(h * w)
        beyond = sar_out.sum(axis=1).astype(np.float64)
        total = np.full(n, float(self.n_sar * h * w))
        if optical is not None:
            n_opt = len(self.bands) - self.n_sar
            if optical.ndim != 4 or optical.shape[1] != n_opt or optical.shape[0] != n:
                raise UserError(f"drift check: optical must be [{n}, {n_opt}, P, P], got {optical.shape}")
            ov = optical[:, :, ::s, ::s]
            lo, hi = self._typed_bounds("optical", ov.dtype)
            valid = np.asarray(ov.any(axis=1))  # L2A no-data: 0 in every band
            opt_out = np.count_nonzero(((ov < lo) | (ov > hi)) & valid[:, None], axis=(2, 3))  # [n, 12]
            n_valid = np.count_nonzero(valid, axis=(1, 2)).astype(np.float64)
            per_band[:, self.n_sar:] = opt_out / np.maximum(n_valid, 1.0)[:, None]
            beyond += opt_out.sum(axis=1)
            total += n_opt * n_valid
        combined = beyond / total
        return DriftCheck(per_band, combined, combined > self.threshold)

    def drifted(self, sar: np.ndarray, optical: np.ndarray | None) -> np.ndarray:
        """bool [n]: which windows lie outside the envelope (:meth:`check`'s ``drifted``)."""
        return np.asarray(self.check(sar, optical).drifted, dtype=bool)

    def with_threshold(self, threshold: float) -> Envelope:
        return Envelope(self.bands, self.levels, self.quantiles, self.n_sar, self.check_levels, self.stride,
                        float(threshold), self.n_windows)

    # ---- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"units": "raw: S1 dB, S2 L2A reflectance x 1e4", "levels": list(self.levels),
                "bands": {b: list(q) for b, q in zip(self.bands, self.quantiles, strict=True)},
                "n_sar_bands": self.n_sar, "check_levels": list(self.check_levels), "stride": self.stride,
                "threshold": self.threshold, "n_windows": self.n_windows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        bands = dict(data["bands"])
        return cls(bands=tuple(bands), levels=tuple(float(x) for x in data["levels"]),
                   quantiles=tuple(tuple(float(x) for x in q) for q in bands.values()),
                   n_sar=int(data["n_sar_bands"]),
                   check_levels=tuple(float(x) for x in data["check_levels"]),  # type: ignore[arg-type]
                   stride=int(data["stride"]), threshold=float(data["threshold"]),
                   n_windows=int(data.get("n_windows", 0)))


def raw_from_normalised(calib: Mapping[str, np.ndarray], contract: Contract) -> tuple[np.ndarray, np.ndarray]:
    """Undo the standardisation of model inputs: float32 raw ``sar`` [n,2,P,P] and ``optical`` [n,12,P,P].

    Preprocessing replaced no-data and non-finite values by the band mean (0 after standardisation); those
    come back as NaN here (optical: pixels 0 in every band), so they stay out of quantiles. Values beyond the
    contract's clip ranges come back clipped.
    """
    out = []
    for name, mean, std in (("sar", contract.sar_mean, contract.sar_std),
                            ("optical", contract.optical_mean, contract.optical_std)):
        x = np.asarray(calib[name], dtype=np.float32)
        raw = x * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
        hole = np.all(x == 0.0, axis=1, keepdims=True) if name == "optical" else (x == 0.0)
        out.append(np.where(hole, np.float32(np.nan), raw))
    return out[0], out[1]


def build_envelope(sar: np.ndarray, optical: np.ndarray, contract: Contract,
                   levels: tuple[float, ...] = ENVELOPE_LEVELS) -> Envelope:
    """Envelope of raw calibration windows (NaN = no value), with its drift threshold set by
    :func:`drift_threshold` from the same windows.

    Args:
        sar: float [n, 2, P, P] dB; optical: float [n, 12, P, P] reflectance x 1e4 (NaN or all-zero pixels:
            no data).
    """
    optical = np.where(np.all(optical == 0, axis=1, keepdims=True), np.nan, optical).astype(np.float32)
    bands = (*contract.sar_bands, *contract.optical_bands)
    rows: list[tuple[float, ...]] = []
    for arr in (sar, optical):
        for b in range(arr.shape[1]):
            v = arr[:, b].ravel()
            v = v[np.isfinite(v)]
            if v.size == 0:
                raise UserError(f"calibration envelope: band {bands[len(rows)]} has no valid pixel")
            rows.append(tuple(float(q) for q in np.quantile(v, levels)))
    env = Envelope(bands, tuple(levels), tuple(rows), n_sar=len(contract.sar_bands), n_windows=len(sar))
    # NaN compares False, so held-out pixels never count as beyond; all-NaN optical windows judge SAR only
    combined = env.check(sar, np.nan_to_num(optical, nan=0.0)).combined
    return env.with_threshold(drift_threshold(combined))


def drift_threshold(combined: np.ndarray) -> float:
    """Threshold flagging ~:data:`CALIB_FLAG_RATE` of calibration windows, at least :data:`MIN_DRIFT_THRESHOLD`."""
    if len(combined) == 0:
        return MIN_DRIFT_THRESHOLD
    return float(max(MIN_DRIFT_THRESHOLD, np.quantile(combined, 1.0 - CALIB_FLAG_RATE)))
