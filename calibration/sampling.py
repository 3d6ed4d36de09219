"""Stratified calibration-set sampling from a :class:`~mosaic_edge.data.base.PatchSource`.

Calibration ranges are only as good as the activations they see. A uniform sample of a few hundred BigEarthNet
patches can miss rare classes (beaches, coastal wetlands) and the extremes of the input distribution (dark
water in SAR, bright cloud in optical) that produce the largest activations at runtime. So selection is
two-staged:

1. **Label coverage** (greedy): every class present in the candidate pool gets at least ``min_per_class``
   samples, rarest class first, each pick the candidate that covers the most still-missing classes.
2. **Value-range coverage**: for every input band, the candidates at evenly spaced quantiles of that band's
   per-patch mean (including the minimum and maximum) are added, so both modalities' ranges are spanned.

The rest is filled uniformly at random. Patches go through :class:`~mosaic_edge.data.base.PatchDataset`, i.e.
exactly the preprocessing the runtime applies. Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.data.base import PatchDataset, PatchSource
from mosaic_edge.errors import UserError


@dataclass(frozen=True)
class SamplingConfig:
    """Knobs of :func:`select_calibration_indices`.

    Attributes:
        pool_factor: Candidates examined = min(len(source), pool_factor * size). Each is read and preprocessed
            once and kept in memory until the choice is made (~0.8 MB per 120 px patch: 256 x 2 -> ~410 MB);
            reading is the cost (the synthetic generator and GeoTIFF decoding dominate), so the pool is small.
        min_per_class: Samples wanted per class (capped by availability and the budget).
        quantiles: Quantile points per band for value-range coverage.
        label_share / range_share: Most of the set the label and the value-range stage may take; the rest is
            a uniform random draw, so the set stays representative (minmax calibration of a set made mostly
            of extremes would waste int8 resolution on them).
    """

    pool_factor: int = 2
    min_per_class: int = 2
    quantiles: int = 5
    label_share: float = 0.5
    range_share: float = 0.25


def select_calibration_indices(
    labels: np.ndarray, band_means: np.ndarray, size: int, seed: int = 0, config: SamplingConfig | None = None
) -> np.ndarray:
    """Choose ``size`` rows covering every class and each band's range (pure function, see module doc).

    Args:
        labels: [M, C] multi-hot (0/1) of the candidates; an all-zero row means unlabelled.
        band_means: [M, B] per-patch mean of every input band after preprocessing.
        size: How many to pick (all M when M <= size).
        seed: Seed of the tie-breaking and the random fill.

    Returns:
        Sorted int64 indices into the candidates.
    """
    config = config or SamplingConfig()
    m = len(labels)
    if size < 1:
        raise UserError(f"calibration set size must be >= 1, got {size}")
    if m <= size:
        return np.arange(m, dtype=np.int64)
    rng = np.random.default_rng(seed)
    lab = np.asarray(labels) > 0.5
    chosen: list[int] = []
    taken = np.zeros(m, dtype=bool)

    def take(i: int) -> None:
        chosen.append(int(i))
        taken[i] = True

    # 1) label coverage, rarest class first
    available = lab.sum(axis=0)
    want = np.minimum(available, config.min_per_class)
    noise = rng.random(m) * 1e-3  # seeded tie-break
    label_budget = max(1, int(round(config.label_share * size)))
    for c in np.argsort(available, kind="stable"):
        while len(chosen) < label_budget and lab[taken][:, c].sum() < want[c]:
            deficit = np.maximum(want - lab[taken].sum(axis=0), 0) > 0
            gain = (lab[:, deficit]).sum(axis=1) + noise
            gain[~lab[:, c] | taken] = -1.0
            take(int(np.argmax(gain)))
    # 2) value-range coverage: min and max of every band first (band by band), then interior quantiles, so a
    #    small budget still spans the ranges
    range_budget = len(chosen) + int(round(config.range_share * size))
    qs = np.linspace(0.0, 1.0, max(config.quantiles, 2))
    interior = qs[1:-1][np.argsort(np.abs(qs[1:-1] - 0.5), kind="stable")]
    orders = np.argsort(band_means, axis=0, kind="stable")
    bands = range(band_means.shape[1])
    points = [(q, b) for b in bands for q in (0.0, 1.0)] + [(q, b) for q in interior for b in bands]
    for q, b in points:
        i = orders[int(round(q * (m - 1))), b]
        if len(chosen) < min(range_budget, size) and not taken[i]:
            take(i)
    # 3) uniform random fill
    rest = np.flatnonzero(~taken)
    fill = rng.permutation(rest)[: max(size - len(chosen), 0)]
    return np.sort(np.concatenate([np.asarray(chosen, dtype=np.int64), fill.astype(np.int64)]))


def _rare_class_picks(
    labels: np.ndarray, pool: np.ndarray, want: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices (outside ``pool``) adding up to ``want`` patches of every class the pool has fewer of."""
    lab = labels > 0.5
    have = lab[pool].sum(axis=0)
    outside = np.setdiff1d(np.arange(len(lab)), pool)
    picks: list[int] = []
    for c in np.flatnonzero(have < want):
        cands = outside[lab[outside, c]]
        picks.extend(rng.permutation(cands)[: want - have[c]].tolist())
    return np.asarray(sorted(set(picks)), dtype=np.int64)


def sample_calibration_set(
    source: PatchSource,
    contract: Contract,
    size: int = 256,
    seed: int = 0,
    config: SamplingConfig | None = None,
    return_ids: bool = False,
) -> dict[str, np.ndarray]:
    """Draw a stratified calibration set, preprocessed exactly as at runtime.

    Args:
        source: Usually the training split (``mosaic_edge.data.sources.open_source(data, "train")``). When it
            has a ``label_matrix() -> [N, C]`` method (labels without pixels), rare classes are found in the
            whole split, not only in the random candidate pool.
        contract: Band order, statistics and patch size of the model.
        size: Number of patches (default a few hundred).
        seed: Makes the choice reproducible.
        config: Pool size and coverage settings.
        return_ids: Also return ``"id"`` (patch ids, str array) and ``"labels"`` for reports; keep them out of
            what is saved or fed to the quantizer.

    Returns:
        ``{"sar": float32 [n,2,P,P], "optical": float32 [n,12,P,P]}`` with ``n = min(size, len(source))``.
    """
    config = config or SamplingConfig()
    if size < 1:
        raise UserError(f"calibration set size must be >= 1, got {size}")
    if len(source) == 0:
        raise UserError("cannot sample a calibration set from an empty source")
    dataset = PatchDataset(source, contract)
    rng = np.random.default_rng(seed)
    pool_n = min(len(source), max(size * config.pool_factor, size))
    pool = rng.choice(len(source), size=pool_n, replace=False)
    label_matrix = getattr(source, "label_matrix", None)
    if callable(label_matrix):
        # Labels without reading pixels (e.g. BigEarthNet's metadata table): add patches of classes the random
        # pool holds too few of, taken from the whole split.
        pool = np.union1d(
            pool, _rare_class_picks(np.asarray(label_matrix()), pool, config.min_per_class, rng)
        )
    pool = np.sort(pool)
    pool_n = len(pool)
    labels = np.zeros((pool_n, contract.num_classes), dtype=np.float32)
    means = np.zeros((pool_n, len(contract.sar_bands) + len(contract.optical_bands)), dtype=np.float32)
    pooled = []
    for k, i in enumerate(pool):
        sample = dataset[int(i)]
        pooled.append(sample)
        labels[k] = sample["labels"]
        means[k] = np.concatenate([sample["sar"].mean(axis=(1, 2)), sample["optical"].mean(axis=(1, 2))])
    samples = [pooled[k] for k in select_calibration_indices(labels, means, size, seed, config)]
    out = {name: np.stack([s[name] for s in samples]).astype(np.float32) for name in contract.input_names}
    if return_ids:
        out["id"] = np.asarray([s["id"] for s in samples])
        out["labels"] = np.stack([s["labels"] for s in samples])
    return out


@dataclass(frozen=True)
class SourceDraw:
    """How many calibration patches one source gave (for report.md / report.json)."""

    source: str
    available: int
    drawn: int

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "available": self.available, "drawn": self.drawn}


def source_quotas(available: list[int], size: int) -> list[int]:
    """Split ``size`` across sources as evenly as their sizes allow (a small source's surplus goes to the rest)."""
    quotas = [0] * len(available)
    left = size
    for rank, i in enumerate(sorted(range(len(available)), key=lambda j: available[j])):
        quotas[i] = min(available[i], left // (len(available) - rank))
        left -= quotas[i]
    return quotas


def sample_across_sources(
    sources: list[tuple[str, PatchSource]],
    contract: Contract,
    size: int = 256,
    seed: int = 0,
    config: SamplingConfig | None = None,
) -> tuple[dict[str, np.ndarray], list[SourceDraw]]:
    """A calibration set drawn across several sources: even quotas (:func:`source_quotas`), each source's share
    drawn by :func:`sample_calibration_set` (stratified by class and band range) with its own seed.

    Args:
        sources: (name for the report, source) pairs.

    Returns:
        The set (``sar``, ``optical``, plus ``id`` and ``labels``, as with ``return_ids=True``) and one
        :class:`SourceDraw` per source.
    """
    if size < 1:
        raise UserError(f"calibration set size must be >= 1, got {size}")
    if not sources or not any(len(src) for _, src in sources):
        raise UserError("cannot sample a calibration set from empty sources")
    quotas = source_quotas([len(src) for _, src in sources], size)
    parts, draws = [], []
    for k, ((name, src), quota) in enumerate(zip(sources, quotas, strict=True)):
        if quota > 0:
            parts.append(sample_calibration_set(src, contract, quota, seed + 1000 * k, config, return_ids=True))
        draws.append(SourceDraw(name, len(src), quota))
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return out, draws
