"""Calibration envelope: raw-unit quantiles (no-data left out), the strided drift check, the flag threshold."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic_edge.contract import Contract
from mosaic_edge.data.preprocess import preprocess
from mosaic_edge.envelope import (
    CALIB_FLAG_RATE,
    DRIFT_STRIDE,
    MIN_DRIFT_THRESHOLD,
    Envelope,
    build_envelope,
    drift_threshold,
    raw_from_normalised,
)
from mosaic_edge.errors import UserError

CONTRACT = Contract(patch_size=32)


def _raw(n: int, seed: int = 0, shift_db: float = 0.0, gain: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Raw windows: SAR in dB around the BigEarthNet means, optical uint16 reflectance."""
    rng = np.random.default_rng(seed)
    sar = (rng.normal(-15.0, 3.0, (n, 2, 32, 32)) + shift_db).astype(np.float32)
    opt = np.clip(rng.normal(1500.0, 400.0, (n, 12, 32, 32)) * gain, 1, 65535).astype(np.uint16)
    return sar, opt


def test_quantiles_are_raw_units_and_skip_no_data() -> None:
    sar, opt = _raw(40)
    opt_holes = opt.copy()
    opt_holes[:, :, :8, :] = 0  # L2A no-data rows: 0 in every band
    env = build_envelope(sar, opt_holes.astype(np.float32), CONTRACT)
    q = np.asarray(env.quantiles)
    np.testing.assert_allclose(q[0], np.quantile(sar[:, 0], env.levels), rtol=1e-6)
    np.testing.assert_allclose(q[2 + 5], np.quantile(opt[:, 5, 8:, :], env.levels), rtol=1e-6)
    assert env.bands == (*CONTRACT.sar_bands, *CONTRACT.optical_bands) and env.n_windows == 40


def test_envelope_of_a_normalised_calibration_set_is_the_raw_one() -> None:
    # what export does: the saved calibration set is standardised; the envelope comes back in raw units
    sar, opt = _raw(20, seed=1)
    opt[:, :, :4, :4] = 0
    pre = [preprocess(s, o, CONTRACT) for s, o in zip(sar, opt, strict=True)]
    calib = {"sar": np.stack([p.sar for p in pre]), "optical": np.stack([p.optical for p in pre])}
    raw_sar, raw_opt = raw_from_normalised(calib, CONTRACT)
    assert np.isnan(raw_opt[:, :, :4, :4]).all()  # no-data came back as "no value"
    np.testing.assert_allclose(raw_sar, sar, atol=2e-3)
    np.testing.assert_allclose(raw_opt[:, :, 4:, :], opt[:, :, 4:, :], rtol=1e-4, atol=0.2)
    direct = build_envelope(sar, opt.astype(np.float32), CONTRACT)
    via = build_envelope(raw_sar, raw_opt, CONTRACT)
    np.testing.assert_allclose(np.asarray(via.quantiles), np.asarray(direct.quantiles), rtol=1e-3, atol=0.2)


def test_in_distribution_windows_pass_and_shifted_ones_drift() -> None:
    env = build_envelope(*(a.astype(np.float32) for a in _raw(64)), CONTRACT)
    same = env.check(*_raw(16, seed=2))
    assert same.combined.max() < env.threshold and not same.drifted.any()
    assert 0.0 < same.combined.mean() < 0.03  # ~1 % of values lie beyond the 0.5 / 99.5 % quantiles
    brighter = env.check(*_raw(16, seed=3, gain=4.0))  # every optical band far brighter: a new sensor/season
    assert brighter.drifted.all()
    assert (brighter.per_band[:, 2:] > 0.9).all() and (brighter.per_band[:, :2] < 0.05).all()
    wetter = env.check(*_raw(16, seed=4, shift_db=20.0))  # SAR only
    assert (wetter.per_band[:, :2] > 0.9).all() and (wetter.per_band[:, 2:] < 0.05).all()


def test_one_band_out_of_range_shows_in_its_column() -> None:
    env = build_envelope(*(a.astype(np.float32) for a in _raw(64)), CONTRACT)
    sar, opt = _raw(4, seed=5)
    opt[:, 3] = 9000  # B04 saturated
    res = env.check(sar, opt)
    col = 2 + CONTRACT.optical_bands.index("B04")
    assert (res.per_band[:, col] == 1.0).all()
    assert np.delete(res.per_band, col, axis=1).max() < 0.1
    np.testing.assert_allclose(res.combined, res.per_band.mean(axis=1), atol=1e-9)  # every band equally sampled


def test_uint16_and_float_inputs_agree_and_no_data_is_ignored() -> None:
    env = build_envelope(*(a.astype(np.float32) for a in _raw(64)), CONTRACT)
    sar, opt = _raw(8, seed=6, gain=1.3)
    a, b = env.check(sar, opt), env.check(sar.astype(np.float64), opt.astype(np.float32))
    np.testing.assert_array_equal(a.per_band, b.per_band)
    holes = opt.copy()
    holes[:, :, :16] = 0  # half the window is L2A no-data: neither beyond nor counted
    h = env.check(sar, holes)
    np.testing.assert_allclose(h.per_band[:, 2:], env.check(sar[:, :, 16:], opt[:, :, 16:]).per_band[:, 2:])
    sar_only = env.check(sar, None)
    np.testing.assert_array_equal(sar_only.per_band[:, :2], a.per_band[:, :2])
    assert (sar_only.per_band[:, 2:] == 0).all()
    np.testing.assert_allclose(sar_only.combined, a.per_band[:, :2].mean(axis=1))
    # a tile without optical handed over as zeros (L2A no-data everywhere) is judged like a SAR-only one
    blank = env.check(sar, np.zeros_like(opt))
    np.testing.assert_allclose(blank.combined, sar_only.combined)
    np.testing.assert_allclose(blank.distance, sar_only.distance, rtol=1e-5)


def test_check_samples_every_stride_th_pixel() -> None:
    env = build_envelope(*(a.astype(np.float32) for a in _raw(16)), CONTRACT)
    sar, opt = _raw(1, seed=7)
    sar[:, :, 1::DRIFT_STRIDE, :] = 40.0  # rows the subsample skips: invisible to the check
    assert env.check(sar, opt).per_band[0, :2].max() < 0.05
    sar[:, :, ::DRIFT_STRIDE, :] = 40.0
    assert (env.check(sar, opt).per_band[0, :2] == 1.0).all()


def test_threshold_flags_about_the_calibration_rate() -> None:
    combined = np.linspace(0.0, 0.5, 1001)
    assert drift_threshold(combined) == pytest.approx(np.quantile(combined, 1 - CALIB_FLAG_RATE))
    assert (combined > drift_threshold(combined)).mean() <= CALIB_FLAG_RATE + 1e-3
    assert drift_threshold(np.full(100, 0.001)) == MIN_DRIFT_THRESHOLD


def test_roundtrip_and_bad_shapes() -> None:
    env = build_envelope(*(a.astype(np.float32) for a in _raw(8)), CONTRACT)
    assert Envelope.from_dict(env.to_dict()) == env
    with pytest.raises(UserError, match="sar must be"):
        env.check(np.zeros((2, 3, 8, 8), np.float32), None)
    with pytest.raises(UserError, match="optical must be"):
        env.check(np.zeros((2, 2, 8, 8), np.float32), np.zeros((2, 11, 8, 8), np.uint16))
    with pytest.raises(ValueError, match="check levels"):
        Envelope(env.bands, env.levels, env.quantiles, check_levels=(0.2, 0.8))


def _scenes(n: int, seed: int, coupled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Windows of varied brightness whose bands follow one spectral signature and whose backscatter rises with
    the optical brightness (as scenes of one place and sensor pair do); ``coupled=False`` breaks that tie."""
    rng = np.random.default_rng(seed)
    sig = np.linspace(0.5, 1.5, 12)
    level = rng.uniform(800, 2500, (n, 1, 1, 1))
    opt = level * sig[None, :, None, None] * rng.uniform(0.95, 1.05, (n, 12, 32, 32))
    sar_level = level if coupled else rng.uniform(800, 2500, (n, 1, 1, 1))
    sar = -25 + sar_level / 100 + rng.normal(0, 1.0, (n, 2, 32, 32))
    return sar.astype(np.float32), opt.astype(np.float32)


def test_band_statistics_catch_windows_whose_values_are_all_in_range() -> None:
    env = build_envelope(*_scenes(300, seed=0), CONTRACT)
    assert env.stats is not None
    same = env.check(*_scenes(200, seed=1))
    assert same.drifted.mean() < 0.05  # cross-validated threshold: new in-distribution windows pass
    # elsewhere: the same ranges of backscatter and brightness, but no longer tied -> every value is in range
    sar, opt = _scenes(50, seed=2, coupled=False)
    foreign = env.check(sar, opt)
    assert (foreign.combined < env.threshold).all()  # the quantile test alone passes them
    far = np.abs(sar.mean(axis=(1, 2, 3)) + 25 - opt[:, 0].mean(axis=(1, 2)) / 50) > 4  # tie broken by > 4 dB
    assert far.sum() > 10 and foreign.drifted[far].all()
    # SAR-only windows are judged on the SAR statistics
    shifted = env.check(sar + 30.0, None)
    assert shifted.drifted.all() and env.check(_scenes(50, seed=3)[0], None).drifted.mean() < 0.1


def test_few_calibration_windows_use_variances_only() -> None:
    from mosaic_edge.envelope import MIN_WINDOWS_PER_FEATURE

    small = build_envelope(*_scenes(MIN_WINDOWS_PER_FEATURE * 28 - 1, seed=4), CONTRACT)
    cov = np.asarray(small.stats.cov)
    assert np.count_nonzero(cov - np.diag(np.diag(cov))) == 0
    big = build_envelope(*_scenes(MIN_WINDOWS_PER_FEATURE * 28, seed=4), CONTRACT)
    assert np.count_nonzero(np.asarray(big.stats.cov) - np.diag(np.diag(big.stats.cov))) > 0
    assert Envelope.from_dict(big.to_dict()) == big


def test_the_thresholds_of_few_windows_are_cross_validated_on_variances_only_too(monkeypatch) -> None:
    """The held-out distances that set the thresholds come from models of the same kind as the final one."""
    from mosaic_edge import envelope as env_mod

    kinds = []
    real = env_mod._covariance

    def spy(feats, full):
        kinds.append(full)
        return real(feats, full)

    monkeypatch.setattr(env_mod, "_covariance", spy)
    build_envelope(*_scenes(env_mod.MIN_WINDOWS_PER_FEATURE * 28 - 1, seed=4), CONTRACT)
    assert len(kinds) == 1 + env_mod.STATS_FOLDS and all(k is False for k in kinds)
