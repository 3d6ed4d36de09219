"""Array helpers of the synthetic benchmark generator (:mod:`mosaic_edge.data.synthetic`).

Noise banks, smooth random fields, footprint pooling, region layout and clouds. Pure numpy without large BLAS
calls: BLAS threads oversubscribe a busy CPU inside data-loader workers.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mosaic_edge.data.preprocess import resize_bilinear

_BANK_SIZE = 1 << 20


@lru_cache(maxsize=4)
def noise_bank(looks: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed banks of standard-normal samples and of unit-mean Gamma(looks) speckle in dB (10*log10(G)).

    Drawing ~100k fresh variates per patch costs more than everything else together; a random window of a
    fixed 1M-sample bank (random start, random flips) is statistically indistinguishable within a patch and
    ~10x cheaper.
    """
    rng = np.random.default_rng(20240917)
    normal = rng.standard_normal(_BANK_SIZE, dtype=np.float32)
    gamma = (10.0 * np.log10(rng.gamma(looks, 1.0 / looks, size=_BANK_SIZE))).astype(np.float32)
    normal.setflags(write=False)
    gamma.setflags(write=False)
    return normal, gamma


def bank_slice(rng: np.random.Generator, bank: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    start = int(rng.integers(0, bank.size - n))
    out = bank[start : start + n].reshape(shape)
    return out[..., ::-1, :] if rng.random() < 0.5 else out


def smooth_fields(rng: np.random.Generator, n: int, grid: int, size: int) -> np.ndarray:
    """``n`` smooth unit-variance random fields [n, size, size]: white noise on a coarse grid, bilinearly
    upsampled."""
    coarse = rng.standard_normal((n, grid, grid), dtype=np.float32)
    fields = np.stack([resize_bilinear(c, (size, size)) for c in coarse])
    return fields / fields.std(axis=(1, 2), keepdims=True)


@lru_cache(maxsize=16)
def _block_ids(n: int, f: int) -> np.ndarray:
    """Index of the f x f block of every pixel of an n x n grid, flattened (for bincount pooling)."""
    r = np.arange(n) // f
    ids = (r[:, None] * (n // f) + r[None, :]).ravel()
    ids.setflags(write=False)
    return ids


def block_mean(x: np.ndarray, f: int) -> np.ndarray:
    """Average a 2-D field over f x f blocks (the footprint of a coarser band); bincount is the fastest
    way."""
    if f == 1:
        return x
    n = x.shape[-1] // f
    return (
        (np.bincount(_block_ids(x.shape[-1], f), weights=x.ravel(), minlength=n * n) / (f * f))
        .reshape(n, n)
        .astype(np.float32)
    )


def block_fractions(region: np.ndarray, k: int, f: int) -> np.ndarray:
    """Area fraction [k, n, n] of each region inside every f x f block."""
    n = region.shape[-1] // f
    counts = np.bincount(_block_ids(region.shape[-1], f) * k + region.ravel(), minlength=n * n * k)
    return (counts.reshape(n, n, k).transpose(2, 0, 1) / (f * f)).astype(np.float32)


def layout(rng: np.random.Generator, k: int, p: int, warp: np.ndarray) -> np.ndarray:
    """Region index [p, p] of a warped power diagram with ``k`` seeds."""
    if k == 1:
        return np.zeros((p, p), dtype=np.intp)
    seeds = rng.uniform(0, p, size=(k, 2)).astype(np.float32)
    weights = rng.uniform(0, (0.3 * p) ** 2, size=k).astype(np.float32)
    yy = np.arange(p, dtype=np.float32)[:, None] + 0.15 * p * warp[0]
    xx = np.arange(p, dtype=np.float32)[None, :] + 0.15 * p * warp[1]
    d = (
        (yy[None] - seeds[:, 0, None, None]) ** 2
        + (xx[None] - seeds[:, 1, None, None]) ** 2
        - weights[:, None, None]
    )
    return np.argmin(d, axis=0)


def clouds(rng: np.random.Generator, field: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Cloud opacity and cloud-shadow maps [p, p] in [0, 1]."""
    cover = rng.uniform(0.2, 0.9)
    thr = np.quantile(field[::4, ::4], 1.0 - cover)  # a subsample is plenty for the coverage target
    alpha = np.clip((field - thr) / 0.35, 0.0, 1.0) * rng.uniform(0.75, 1.0)
    dy, dx = (int(v) for v in rng.integers(-p // 8, p // 8 + 1, size=2))
    shadow = np.zeros_like(alpha)
    src = alpha[max(0, -dy) : p - max(0, dy), max(0, -dx) : p - max(0, dx)]
    shadow[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return alpha.astype(np.float32), (shadow * (1.0 - alpha)).astype(np.float32)
