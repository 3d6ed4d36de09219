"""The calibration envelope of an INT8 model and the drift check of input windows against it (numpy only).

The envelope records, per input band, quantiles of the calibration set in RAW physical units (S1 backscatter in
dB, S2 L2A reflectance x 1e4): the host holds raw values (normalisation moves into the exported graph), so the
check needs no preprocessing. L2A no-data pixels (0 in every optical band) are left out of the quantiles and of
the check.

The drift check of a window (:meth:`Envelope.check`) looks at a fixed strided subsample of its pixels (every
:data:`DRIFT_STRIDE`-th row and column: 1/16 of the pixels) in two ways:

1. **Values beyond the quantiles**: the fraction of values outside the envelope's ``[low, high]`` quantiles,
   per band and combined (all bands' sampled values pooled). It catches values the calibration never saw
   (saturated clouds, another sensor's scale). Flag: combined fraction above ``threshold``.
2. **Band statistics unlike any calibration window**: the Mahalanobis distance of the window's per-band mean
   and standard deviation (28 numbers) from those of the calibration windows (:class:`WindowStats`). It catches
   windows whose every value lies in range but whose spectra and textures do not -- a model calibrated on the
   synthetic benchmark meeting real BigEarthNet scenes (measured: RESULTS.md) -- which a per-band range test
   cannot see. Flag: distance above the statistics' threshold.

A window is *drifted* when either flags. Both thresholds come from the calibration windows themselves and flag
about :data:`CALIB_FLAG_RATE` of them: the quantile one directly (never below :data:`MIN_DRIFT_THRESHOLD`), the
distance one from cross-validated distances (held-out folds), because a covariance fitted on a few hundred
windows makes its own windows look closer than new ones. Cost and rates: ``benchmarks/RESULTS.md``, "Drift
check".
"""

from __future__ import annotations

import dataclasses
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
# Folds of the cross-validated distance threshold.
STATS_FOLDS = 5
# A window whose optical subsample is more than half no-data is judged on its SAR statistics alone.
MIN_VALID_OPTICAL = 0.5
# Correlations of the 28 band statistics are estimated from at least 2 windows per statistic, else only variances.
MIN_WINDOWS_PER_FEATURE = 2


@dataclass(frozen=True)
class DriftCheck:
    """Result of :meth:`Envelope.check` for ``n`` windows.

    Attributes:
        per_band: float64 [n, B] fraction of sampled values beyond the envelope, bands in :attr:`Envelope.bands`.
        combined: float64 [n] fraction of all sampled values (every band) beyond the envelope.
        distance: float64 [n] Mahalanobis distance of the window's band statistics (NaN without a stats model).
        drifted: bool [n], ``combined > threshold`` or ``distance`` above the statistics' threshold.
    """

    per_band: np.ndarray
    combined: np.ndarray
    distance: np.ndarray
    drifted: np.ndarray


def _inverse(cov: np.ndarray) -> np.ndarray:
    return np.asarray(np.linalg.pinv(cov, hermitian=True))


@dataclass(frozen=True)
class WindowStats:
    """Where the calibration windows' band statistics lie: per band mean and standard deviation (raw units,
    SAR bands then optical), their mean and covariance, and the distance thresholds.

    Attributes:
        mean: [2B] mean feature vector.
        cov: [2B, 2B] covariance (see :func:`_covariance`).
        threshold / threshold_sar: Distance flagging ~:data:`CALIB_FLAG_RATE` of held-out calibration windows,
            on all features / on the SAR features alone (windows without usable optical).
    """

    mean: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]
    threshold: float
    threshold_sar: float
    n_sar: int = 2
    _inv: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def _precision(self, sar_only: bool) -> tuple[np.ndarray, np.ndarray]:
        key = "sar" if sar_only else "all"
        if key not in self._inv:
            cov = np.asarray(self.cov, np.float64)
            idx = self.sar_features() if sar_only else np.arange(len(self.mean))
            self._inv[key] = _inverse(cov[np.ix_(idx, idx)])
            self._inv[key + ":idx"] = idx
        return self._inv[key], self._inv[key + ":idx"]

    @property
    def _mean(self) -> np.ndarray:
        if "mean" not in self._inv:
            self._inv["mean"] = np.asarray(self.mean, np.float64)
        return self._inv["mean"]

    def sar_features(self) -> np.ndarray:
        b = len(self.mean) // 2
        return np.r_[np.arange(self.n_sar), b + np.arange(self.n_sar)]

    def distance(self, feats: np.ndarray, has_optical: np.ndarray) -> np.ndarray:
        """float64 [n] distances of [n, 2B] features; rows without optical use the SAR features only."""
        if has_optical.all():  # the common case: one product
            prec, _ = self._precision(False)
            d = feats - self._mean
            return np.sqrt(np.maximum(((d @ prec) * d).sum(axis=1), 0.0))
        out = np.empty(len(feats))
        for sar_only, rows in ((False, has_optical), (True, ~has_optical)):
            if rows.any():
                prec, idx = self._precision(sar_only)
                d = feats[rows][:, idx] - self._mean[idx]
                out[rows] = np.sqrt(np.maximum(((d @ prec) * d).sum(axis=1), 0.0))
        return out

    def flags(self, distance: np.ndarray, has_optical: np.ndarray) -> np.ndarray:
        if has_optical.all():
            return np.asarray(distance > self.threshold)
        return np.where(has_optical, distance > self.threshold, distance > self.threshold_sar)

    def to_dict(self) -> dict[str, Any]:
        return {"features": "per band mean and std of the raw subsample", "mean": list(self.mean),
                "cov": [list(r) for r in self.cov], "threshold": self.threshold, "threshold_sar": self.threshold_sar,
                "n_sar_bands": self.n_sar}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowStats:
        return cls(tuple(float(x) for x in data["mean"]), tuple(tuple(float(x) for x in r) for r in data["cov"]),
                   float(data["threshold"]), float(data["threshold_sar"]), int(data.get("n_sar_bands", 2)))


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
        stats: Band statistics of the calibration windows (None: only the quantile test).
    """

    bands: tuple[str, ...]
    levels: tuple[float, ...]
    quantiles: tuple[tuple[float, ...], ...]
    n_sar: int = 2
    check_levels: tuple[float, float] = CHECK_LEVELS
    stride: int = DRIFT_STRIDE
    threshold: float = MIN_DRIFT_THRESHOLD
    n_windows: int = 0
    stats: WindowStats | None = None
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

    def _bounds32(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 [B, 1] low and high bounds (cached)."""
        if "f32" not in self._bounds:
            lo, hi = self.bounds()
            self._bounds["f32"] = (lo.astype(np.float32)[:, None], hi.astype(np.float32)[:, None])
        return self._bounds["f32"]

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
        if sar.ndim != 4 or sar.shape[1] != self.n_sar:
            raise UserError(f"drift check: sar must be [n, {self.n_sar}, P, P], got {sar.shape}")
        n, n_opt = len(sar), len(self.bands) - self.n_sar
        if optical is not None and (optical.ndim != 4 or optical.shape[:2] != (n, n_opt)):
            raise UserError(f"drift check: optical must be [{n}, {n_opt}, P, P], got {optical.shape}")
        x, valid = subsample(sar, optical, self.stride)  # float32 [n, B', m], bool [n, m] or None
        return self.check_sample(x, valid if valid is None or not valid.all() else None)

    def check_sample(self, x: np.ndarray, valid: np.ndarray | None = None) -> DriftCheck:
        """:meth:`check` of windows already subsampled (the runtime takes the sample straight from a tile).

        Args:
            x: float32 [n, B, m]: ``m`` sampled values of every band (SAR then optical), or [n, n_sar, m] for
                windows judged on SAR alone.
            valid: bool [n, m], which sampled pixels hold optical data; None: all of them.
        """
        n, b, m = x.shape
        n_bands, n_opt = len(self.bands), len(self.bands) - self.n_sar
        lo, hi = self._bounds32()
        out = (x < lo[:b]) | (x > hi[:b])
        if b == n_bands and valid is None:  # the common case: every pixel holds data; fewest operations
            counts_all = out.view(np.uint8).sum(axis=2, dtype=np.int32)  # 2x count_nonzero's speed
            per_band = counts_all / float(m)
            combined = counts_all.sum(axis=1) / float(n_bands * m)
            drifted = combined > self.threshold
            distance = np.full(n, np.nan)
            if self.stats is not None:
                distance = self.stats.distance(_moments(x, m), np.ones(n, bool))
                drifted |= distance > self.stats.threshold
            return DriftCheck(per_band, combined, distance, drifted)
        if b == n_bands:
            assert valid is not None
        else:
            valid = None  # SAR alone
        denom = np.full((n, n_bands), float(m))
        if valid is not None:
            out[:, self.n_sar:] &= valid[:, None]
            n_valid = valid.sum(axis=1)
            denom[:, self.n_sar:] = np.where(n_valid > 0, n_valid, np.inf)[:, None]
        counts = np.zeros((n, n_bands))
        counts[:, :b] = out.view(np.uint8).sum(axis=2, dtype=np.int32)
        if valid is None:
            denom[:, self.n_sar:] = np.inf  # no optical values judged (SAR-only, or all no-data above)
        per_band = counts / denom
        combined = counts.sum(axis=1) / np.where(np.isinf(denom), 0.0, denom).sum(axis=1)
        drifted = combined > self.threshold
        distance = np.full(n, np.nan)
        if self.stats is not None:
            feats, has_optical = window_features(x, valid, self.n_sar, n_opt)
            distance = self.stats.distance(feats, has_optical)
            drifted |= self.stats.flags(distance, has_optical)
        return DriftCheck(per_band, combined, distance, drifted)

    def drifted(self, sar: np.ndarray, optical: np.ndarray | None) -> np.ndarray:
        """bool [n]: which windows lie outside the envelope (:meth:`check`'s ``drifted``)."""
        return np.asarray(self.check(sar, optical).drifted, dtype=bool)

    def replace(self, **changes: Any) -> Envelope:
        """A copy with ``changes`` (e.g. ``threshold``, ``stats``)."""
        return dataclasses.replace(self, **changes)

    # ---- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"units": "raw: S1 dB, S2 L2A reflectance x 1e4", "levels": list(self.levels),
                "bands": {b: list(q) for b, q in zip(self.bands, self.quantiles, strict=True)},
                "n_sar_bands": self.n_sar, "check_levels": list(self.check_levels), "stride": self.stride,
                "threshold": self.threshold, "n_windows": self.n_windows,
                "stats": self.stats.to_dict() if self.stats else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        bands = dict(data["bands"])
        return cls(bands=tuple(bands), levels=tuple(float(x) for x in data["levels"]),
                   quantiles=tuple(tuple(float(x) for x in q) for q in bands.values()),
                   n_sar=int(data["n_sar_bands"]),
                   check_levels=tuple(float(x) for x in data["check_levels"]),  # type: ignore[arg-type]
                   stride=int(data["stride"]), threshold=float(data["threshold"]),
                   n_windows=int(data.get("n_windows", 0)),
                   stats=WindowStats.from_dict(data["stats"]) if data.get("stats") else None)


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


def sample(sar: np.ndarray, optical: np.ndarray | None, stride: int) -> np.ndarray:
    """Every ``stride``-th row and column of the raw bands as one float32 [n, B, m] array (SAR then optical;
    SAR alone without optical)."""
    n = len(sar)
    sv = sar[:, :, ::stride, ::stride]
    if optical is None:
        return sv.astype(np.float32).reshape(n, sv.shape[1], -1)
    x = np.concatenate([sv, optical[:, :, ::stride, ::stride]], axis=1, dtype=np.float32, casting="unsafe")
    return x.reshape(n, x.shape[1], -1)


def subsample(sar: np.ndarray, optical: np.ndarray | None, stride: int) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`sample`, and which sampled pixels hold optical data (bool [n, m]; None without optical)."""
    x = sample(sar, optical, stride)
    if optical is None:
        return x, None
    return x, np.asarray(x[:, sar.shape[1]:].any(axis=1))  # L2A no-data: 0 in every band


def window_features(x: np.ndarray, valid: np.ndarray | None, n_sar: int, n_opt: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per window, per band mean then standard deviation of a :func:`subsample` (optical bands over the pixels
    holding data); and whether the window has usable optical (else its optical features are 0 and unused).

    Returns:
        float64 [n, 2B] features (means of the B bands, then their standard deviations), bool [n] has_optical.
    """
    n, b, m = x.shape
    if valid is None or valid.all():
        feats = _moments(x, m)
        mean, std = feats[:, :b], feats[:, b:]
    else:
        cnt = np.concatenate([np.full((n, n_sar), float(m)),
                              np.repeat(np.maximum(valid.sum(axis=1), 1)[:, None], b - n_sar, axis=1)], axis=1)
        wts = np.concatenate([np.ones((n, n_sar, m), np.float32),
                              np.repeat(valid[:, None].astype(np.float32), b - n_sar, axis=1)], axis=1)
        mean = (x * wts).sum(axis=2) / cnt
        dev = (x - mean[:, :, None].astype(np.float32)) * wts
        std = np.sqrt((dev * dev).sum(axis=2) / cnt)
    if valid is None:
        pad = np.zeros((n, n_opt))
        feats = np.concatenate([mean, pad, std, pad], axis=1)
        return feats.astype(np.float64), np.zeros(n, bool)
    has_optical = valid.mean(axis=1) >= MIN_VALID_OPTICAL
    return np.concatenate([mean, std], axis=1).astype(np.float64), has_optical


def _moments(x: np.ndarray, m: int) -> np.ndarray:
    """float64 [n, 2B]: per window the mean of each band's ``m`` values, then their standard deviation (einsum:
    one pass without temporaries, ~2x ``.mean()`` / ``.std()`` here)."""
    mean = np.einsum("ijk->ij", x) / np.float32(m)
    dev = x - mean[:, :, None]
    std = np.sqrt(np.einsum("ijk,ijk->ij", dev, dev) / np.float32(m))
    return np.concatenate([mean, std], axis=1, dtype=np.float64)


def _covariance(feats: np.ndarray, full: bool) -> np.ndarray:
    """Covariance of the features (``full``), or only their variances (when the calibration set has fewer than
    :data:`MIN_WINDOWS_PER_FEATURE` windows per feature to estimate correlations from).

    Not shrunk towards the diagonal otherwise: the directions in which calibration windows hardly vary (a
    synthetic scene's spread tied to its brightness) are the ones a foreign window leaves first -- mixing 1 %
    of the diagonal in halved the share of real BigEarthNet windows flagged against a synthetic calibration set
    (RESULTS.md, "Drift check"). The cross-validated threshold keeps in-distribution windows from being flagged
    for their own small deviations there.
    """
    n, d = feats.shape
    cov = np.atleast_2d(np.cov(feats, rowvar=False)) if n > 1 else np.zeros((d, d))
    if not full:
        cov = np.diag(np.diag(cov))
    return cov + np.diag(1e-6 * np.diag(cov) + 1e-12)  # constant features stay invertible


def fit_stats(feats: np.ndarray, has_optical: np.ndarray, n_sar: int, seed: int = 0) -> WindowStats:
    """:class:`WindowStats` of calibration windows, with cross-validated thresholds (see the module doc)."""
    n = len(feats)
    full = n >= MIN_WINDOWS_PER_FEATURE * feats.shape[1]  # one choice for the folds and the final model

    def fit(rows: np.ndarray) -> WindowStats:
        use = feats[rows & has_optical] if (rows & has_optical).sum() >= 2 else feats[rows]
        cov = _covariance(use, full)
        return WindowStats(tuple(use.mean(axis=0)), tuple(map(tuple, cov)), np.inf, np.inf, n_sar)

    whole = fit(np.ones(n, bool))
    fold = np.random.default_rng(seed).permutation(n) % STATS_FOLDS
    both, sar_only = [], []
    for k in range(STATS_FOLDS):
        test = fold == k
        if not test.any() or n - int(test.sum()) < 2:
            continue
        model = fit(~test)
        rows = test & has_optical
        both.append(model.distance(feats[rows], np.ones(int(rows.sum()), bool)))
        sar_only.append(model.distance(feats[test], np.zeros(int(test.sum()), bool)))
    if not both:  # too few windows to hold any out: in-sample distances
        both = [whole.distance(feats, np.ones(n, bool))]
        sar_only = [whole.distance(feats, np.zeros(n, bool))]
    return WindowStats(whole.mean, whole.cov, _upper(np.concatenate(both)), _upper(np.concatenate(sar_only)), n_sar)


def _upper(distances: np.ndarray) -> float:
    d = distances[np.isfinite(distances)]
    return float(np.quantile(d, 1.0 - CALIB_FLAG_RATE)) if d.size else float("inf")


def build_envelope(sar: np.ndarray, optical: np.ndarray, contract: Contract,
                   levels: tuple[float, ...] = ENVELOPE_LEVELS) -> Envelope:
    """Envelope of raw calibration windows (NaN = no value), its thresholds set from the same windows.

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
    # as the runtime holds them: no-data optical is 0, a non-finite SAR value (never in range) its band median
    sar = np.where(np.isfinite(sar), sar, np.nanmedian(sar, axis=(0, 2, 3), keepdims=True)).astype(np.float32)
    optical = np.nan_to_num(optical, nan=0.0)
    x, valid = subsample(sar, optical, env.stride)
    feats, has_optical = window_features(x, valid, env.n_sar, optical.shape[1])
    env = env.replace(stats=fit_stats(feats, has_optical, env.n_sar))
    combined = env.check_sample(x, None if valid is None or valid.all() else valid).combined  # = env.check()
    return env.replace(threshold=drift_threshold(combined))


def drift_threshold(combined: np.ndarray) -> float:
    """Threshold flagging ~:data:`CALIB_FLAG_RATE` of calibration windows, at least :data:`MIN_DRIFT_THRESHOLD`."""
    if len(combined) == 0:
        return MIN_DRIFT_THRESHOLD
    return float(max(MIN_DRIFT_THRESHOLD, np.quantile(combined, 1.0 - CALIB_FLAG_RATE)))
