import numpy as np
import pytest

from mosaic_edge.contract import Contract
from mosaic_edge.data.preprocess import preprocess, resize_bilinear, stack_bands
from mosaic_edge.errors import DataError


def test_bilinear_matches_hand_computed_half_pixel_values():
    # 2 -> 4 upsampling with half-pixel centres: output i samples input at (i + 0.5) / 2 - 0.5, clamped.
    band = np.array([[0.0, 10.0], [20.0, 30.0]])
    out = resize_bilinear(band, (4, 4))
    row = [0.0, 2.5, 7.5, 10.0]
    np.testing.assert_allclose(out[0], row)
    np.testing.assert_allclose(out[:, 0], [0.0, 5.0, 15.0, 20.0])
    np.testing.assert_allclose(out[1, 1], 0.75 * 0.75 * 0 + 0.75 * 0.25 * 10 + 0.25 * 0.75 * 20 + 0.25 * 0.25 * 30)
    assert out.dtype == np.float32


def test_bilinear_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for n_in in (20, 60):
        band = rng.uniform(0, 5000, (n_in, n_in))
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(band)[None, None], size=(120, 120), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        np.testing.assert_allclose(resize_bilinear(band, (120, 120)), ref, rtol=1e-5, atol=1e-2)


def test_standardisation_is_exact():
    c = Contract(patch_size=2)
    sar = np.full((2, 2, 2), -10.0, np.float32)
    sar[1] = -20.0
    opt = np.arange(12 * 4, dtype=np.uint16).reshape(12, 2, 2) * 100 + 1
    out = preprocess(sar, opt, c)
    np.testing.assert_allclose(out.sar[0], (-10.0 - c.sar_mean[0]) / c.sar_std[0], rtol=1e-6)
    np.testing.assert_allclose(out.sar[1], (-20.0 - c.sar_mean[1]) / c.sar_std[1], rtol=1e-6)
    want = (opt.astype(np.float64) - np.array(c.optical_mean)[:, None, None]) / np.array(c.optical_std)[:, None, None]
    np.testing.assert_allclose(out.optical, want, rtol=1e-5)
    assert out.sar.dtype == out.optical.dtype == np.float32
    assert out.sar_invalid_fraction == out.optical_invalid_fraction == 0.0


def test_clipping_and_non_finite_handling():
    c = Contract(patch_size=2)
    sar = np.array([[[np.nan, 100.0], [-np.inf, -60.0]], [[-15.0, -15.0], [-15.0, -15.0]]], np.float32)
    opt = np.full((12, 2, 2), 500, np.float32)
    opt[:, 0, 0] = 0  # L2A no-data pixel
    opt[3, 1, 1] = 60000  # saturated
    out = preprocess(sar, opt, c)
    assert out.sar[0, 0, 0] == 0.0 and out.sar[0, 1, 0] == 0.0  # NaN / -inf -> band mean
    np.testing.assert_allclose(out.sar[0, 0, 1], (10.0 - c.sar_mean[0]) / c.sar_std[0], rtol=1e-6)
    np.testing.assert_allclose(out.sar[0, 1, 1], (-50.0 - c.sar_mean[0]) / c.sar_std[0], rtol=1e-6)
    assert out.sar_invalid_fraction == 0.5
    assert np.all(out.optical[:, 0, 0] == 0.0) and out.optical_invalid_fraction == 0.25
    np.testing.assert_allclose(out.optical[3, 1, 1], (15000 - c.optical_mean[3]) / c.optical_std[3], rtol=1e-6)


def test_band_mapping_is_resampled_to_sar_grid():
    c = Contract(patch_size=120)
    sar = {"VV": np.full((120, 120), -10.0), "VH": np.full((120, 120), -18.0)}
    sizes = {"B01": 20, "B09": 20, "B05": 60, "B06": 60, "B07": 60, "B8A": 60, "B11": 60, "B12": 60}
    opt = {b: np.full((sizes.get(b, 120),) * 2, 1000, np.uint16) for b in c.optical_bands}
    out = preprocess(sar, opt, c)
    assert out.optical.shape == (12, 120, 120) and out.sar.shape == (2, 120, 120)
    np.testing.assert_allclose(out.optical[0], (1000 - c.optical_mean[0]) / c.optical_std[0], rtol=1e-5)


@pytest.mark.parametrize(
    "sar, opt, msg",
    [
        (np.zeros((3, 4, 4)), np.zeros((12, 4, 4)), r"sar: expected \[2, H, W\]"),
        (np.zeros((2, 4, 4)), np.zeros((11, 4, 4)), r"optical: expected \[12, H, W\]"),
        (np.zeros((2, 4, 4)), np.zeros((12, 5, 4)), "grid"),
        (np.zeros((2, 4, 4), dtype=complex), np.zeros((12, 4, 4)), "not a real number type"),
    ],
)
def test_shape_and_dtype_errors(sar, opt, msg):
    with pytest.raises(DataError, match=msg):
        preprocess(sar, opt, Contract(patch_size=4))


def test_missing_band_is_named():
    with pytest.raises(DataError, match=r"missing bands \['VH'\]"):
        stack_bands({"VV": np.zeros((4, 4))}, ("VV", "VH"))


def test_in_place_standardisation_and_stacking_give_the_textbook_values():
    """Performance rewrites keep the values: the formulas evaluated naively give identical bits."""
    from mosaic_edge.contract import S2_GSD, Contract
    from mosaic_edge.data.preprocess import _taps, preprocess, stack_bands

    c = Contract(patch_size=30)
    rng = np.random.default_rng(3)
    sar = rng.normal(-15, 8, (2, 30, 30)).astype(np.float32)
    sar[0, 1, 1], sar[1, 2, 2] = np.nan, np.inf
    bands = {b: rng.integers(0, 16000, (30 * 10 // S2_GSD[b],) * 2).astype(np.uint16) for b in c.optical_bands}
    bands["B02"][3, 4] = 0

    def naive_resize(x, size):
        x = x.astype(np.float32)
        lo, hi, w = _taps(x.shape[0], size[0])
        x = x[lo] * (1.0 - w)[:, None] + x[hi] * w[:, None]
        lo, hi, w = _taps(x.shape[1], size[1])
        return x[:, lo] * (1.0 - w) + x[:, hi] * w

    opt = np.stack([naive_resize(bands[b], (30, 30)) for b in c.optical_bands])
    np.testing.assert_array_equal(stack_bands(bands, c.optical_bands, (30, 30)), opt)
    opt[:, 5, 6] = 0.0  # a no-data pixel

    def naive(x, mean, std, lo, hi, nodata):
        x = x.astype(np.float32)
        invalid = ~np.isfinite(x)
        if nodata:
            invalid |= np.all(x == 0, axis=0, keepdims=True)
        out = (np.clip(x, lo, hi) - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[
            :, None, None]
        out[invalid] = 0.0
        return out, float(invalid.any(axis=0).mean())

    pre = preprocess(sar, opt, c)
    want_sar, sar_bad = naive(sar, c.sar_mean, c.sar_std, *c.sar_db_range, False)
    want_opt, opt_bad = naive(opt, c.optical_mean, c.optical_std, *c.optical_range, True)
    np.testing.assert_array_equal(pre.sar, want_sar)
    np.testing.assert_array_equal(pre.optical, want_opt)
    assert (pre.sar_invalid_fraction, pre.optical_invalid_fraction) == (sar_bad, opt_bad) == (2 / 900, 1 / 900)
