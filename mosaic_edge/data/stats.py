"""Per-band normalisation statistics of a patch source (for contracts of datasets without published stats)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from mosaic_edge.contract import S1_BANDS, S2_BANDS
from mosaic_edge.data.base import PatchSource
from mosaic_edge.data.preprocess import resize_bilinear


@dataclass(frozen=True)
class BandStats:
    """Mean / std per band in raw units, in ``S1_BANDS`` and ``S2_BANDS`` order."""

    sar_mean: tuple[float, ...]
    sar_std: tuple[float, ...]
    optical_mean: tuple[float, ...]
    optical_std: tuple[float, ...]
    count: int


def band_stats(source: PatchSource, indices: Iterable[int], patch_size: int) -> BandStats:
    """Per-band mean and std over the given patches of ``source``.

    Optical bands are first resampled to the ``patch_size`` grid exactly as the preprocessing does (bilinear,
    half-pixel centres), so the statistics describe what the model is fed. Non-finite values are ignored. Sums are
    float64.
    """
    acc = {name: np.zeros((3, len(bands))) for name, bands in (("sar", S1_BANDS), ("optical", S2_BANDS))}
    count = 0
    for i in indices:
        raw = source.read(int(i))
        for name, bands, data in (("sar", S1_BANDS, raw.sar), ("optical", S2_BANDS, raw.optical)):
            grid = (patch_size, patch_size)
            x = np.stack([resize_bilinear(np.asarray(data[b]), grid) for b in bands]).astype(np.float64)
            x = x.reshape(len(bands), -1)
            ok = np.isfinite(x)
            x = np.where(ok, x, 0.0)
            acc[name] += np.stack([ok.sum(1), x.sum(1), (x * x).sum(1)])
        count += 1
    if count == 0:
        raise ValueError("band_stats: no patches")
    out = {}
    for name, (n, s, ss) in acc.items():
        mean = s / np.maximum(n, 1)
        std = np.sqrt(np.maximum(ss / np.maximum(n, 1) - mean**2, 0.0))
        out[name] = (tuple(float(v) for v in mean), tuple(float(max(v, 1e-6)) for v in std))
    return BandStats(*out["sar"], *out["optical"], count=count)
