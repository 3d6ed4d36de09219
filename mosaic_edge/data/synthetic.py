"""The synthetic MoSAiC benchmark: the built-in default data, deterministic by seed, in BigEarthNet v2 shapes.

``mosaic-edge train`` must run on a fresh machine without a download, and the data it runs on must reward what
MoSAiC claims to do (S1 + S2 fusion, multi-label contrastive learning), so this is a small generative model of
land cover observed by two sensors, not random noise.

Generative model of patch ``i`` of split ``s``. All randomness comes from ``default_rng([seed, s, i])``, so
any patch is reproducible from ``(seed, split, index)`` alone, in any order, in any data-loader worker:

1. **Landscape.** Draw a context (agricultural, forest, urban, coastal, mountain, mediterranean) and from its
   class weights 1-5 distinct classes of the 19-class BigEarthNet nomenclature (realistic co-occurrence).
2. **Layout.** Partition the 10 m grid into one region per class: a power (weighted Voronoi) diagram of random
   seeds whose coordinates are warped by smooth noise, giving irregular parcels of unequal size.
3. **Labels.** A class is a label when its region covers more than ``min_label_area`` of the patch; smaller
   slivers stay in the pixels unlabelled (like real annotation noise).
4. **S2 (optical).** Each class is a mixture of endmember spectra (broad-leaved and coniferous vegetation,
   grass, soil, urban, water, sand; :mod:`~mosaic_edge.data.synthetic_signatures`). Per region the mixture
   weights, brightness and greenness are jittered (within-class variation: phenology, moisture, illumination);
   per pixel a class-dependent multiplicative texture (smooth + fine) is applied. A fraction
   ``cloud_fraction`` of patches gets a cloud layer covering 20-90 % with soft edges plus its displaced
   shadow; land cover under thick cloud is invisible in S2 but still labelled. The 20 m and 60 m bands
   integrate the scene over their footprint (area-weighted mixtures), sensor noise is added, and values are
   rounded to uint16 L2A reflectance x 1e4.
5. **S1 (SAR).** Each class has a VV/VH backscatter level in dB and a texture strength; regions get a random
   offset (moisture, incidence), the patch a global incidence offset, pixels a correlated log-normal texture.
   Fully developed speckle is multiplicative Gamma(L, 1/L) noise with ``L = speckle_looks`` applied to the
   linear power, then converted to dB: ``10*log10(sigma0 * G) = sigma0_dB + 10*log10(G)``.
6. **Inter-class similarity.** Some class pairs are near-identical in S2 and separable only in S1 (urban
   fabric / industrial units, pastures / natural grassland, moors / transitional woodland, inland / marine
   water), others near-identical in S1 and separable only in S2 (the three forest types, arable / permanent
   crops / complex cultivation, inland / coastal wetlands, beaches / calm water). With clouds on top, fusion
   beats either modality alone (``benchmarks/synthetic_baselines.py`` measures it).

Outputs have exactly the BigEarthNet v2 raw format: ``sar`` {"VV","VH"} float32 dB at 120 x 120, ``optical``
12 bands uint16 at 120 / 60 / 20 px, labels multi-hot in ``BENV2_CLASSES`` order. Generation is vectorised
numpy without BLAS calls (a few ms per patch on one core), so training can regenerate patches every epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from mosaic_edge.contract import BENV2_CLASSES, S2_BANDS, S2_GSD, Contract
from mosaic_edge.data.base import RawPatch
from mosaic_edge.data.benv2 import normalise_split
from mosaic_edge.data.stats import band_stats
from mosaic_edge.data.synthetic_fields import (
    bank_slice,
    block_fractions,
    block_mean,
    clouds,
    layout,
    noise_bank,
    smooth_fields,
)
from mosaic_edge.data.synthetic_signatures import SHADOW_DARKENING, class_arrays
from mosaic_edge.data.tiff import GeoInfo
from mosaic_edge.errors import UserError

SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
CONTEXT_NAMES = ("agricultural", "forest", "urban", "coastal", "mountain", "mediterranean")
_TABLE = class_arrays(len(BENV2_CLASSES))
_BANDS_BY_GSD = {g: [i for i, b in enumerate(S2_BANDS) if S2_GSD[b] == g] for g in (10, 20, 60)}


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and knobs of the synthetic benchmark (defaults: a CPU demo trains in minutes).

    Attributes:
        seed: Master seed; with (split, index) it fixes every pixel.
        n_train / n_val / n_test: Patches per split.
        patch_size: Size of the 10 m grid (BigEarthNet: 120; must be divisible by 6).
        cloud_fraction: Fraction of patches with a cloud layer over S2.
        max_regions: Most land-cover regions (= classes) per patch.
        min_label_area: Area fraction above which a class present in the patch is a label.
        speckle_looks: Equivalent number of looks of the gamma speckle (S1 GRD IW ~ 4.4).
        stats_samples: Train patches (the first ones) used for the contract's normalisation statistics.
    """

    seed: int = 0
    n_train: int = 2000
    n_val: int = 500
    n_test: int = 500
    patch_size: int = 120
    cloud_fraction: float = 0.4
    max_regions: int = 5
    min_label_area: float = 0.03
    speckle_looks: float = 4.4
    stats_samples: int = 256

    def __post_init__(self) -> None:
        if self.patch_size <= 0 or self.patch_size % 6:
            raise UserError(
                f"patch_size must be a positive multiple of 6 (60 m bands), got {self.patch_size}"
            )
        if min(self.n_train, self.n_val, self.n_test) < 0:
            raise UserError("split sizes must be >= 0")
        if not 0.0 <= self.cloud_fraction <= 1.0:
            raise UserError("cloud_fraction must be in [0, 1]")
        if not 1 <= self.max_regions <= 5:
            raise UserError("max_regions must be in 1..5")
        if not 0.0 <= self.min_label_area < 1.0 or self.speckle_looks <= 0:
            raise UserError("min_label_area must be in [0, 1) and speckle_looks > 0")

    def size(self, split: str) -> int:
        return {"train": self.n_train, "validation": self.n_val, "test": self.n_test}[normalise_split(split)]


def generate_patch(config: SyntheticConfig, split: str, index: int) -> RawPatch:
    """Generate patch ``index`` of ``split`` (the generative model of the module docstring)."""
    split = normalise_split(split)
    rng = np.random.default_rng([config.seed, SPLIT_CODES[split], index])
    p, t = config.patch_size, _TABLE
    k = int(rng.integers(1, config.max_regions + 1))
    context = int(rng.choice(len(CONTEXT_NAMES), p=t["context_p"]))
    classes = rng.choice(len(BENV2_CLASSES), size=k, replace=False, p=t["context"][context])
    # Coarse: warp y / x, S2 brightness, S2 greenness, S1 texture, cloud. Fine: S2, S1 VV, S1 VH texture.
    coarse = smooth_fields(rng, 6, max(4, p // 12), p)
    fine = smooth_fields(rng, 3, max(4, p // 4), p)
    region = layout(rng, k, p, coarse[:2])
    cls_map = classes[region]
    area = np.bincount(region.ravel(), minlength=k) / float(p * p)
    labels = np.zeros(len(BENV2_CLASSES), np.float32)
    labels[classes[area > config.min_label_area]] = 1.0

    # S2: jittered mixture spectrum per region, then per-pixel texture and greenness.
    mix = t["mix"][classes] * np.exp(0.25 * rng.standard_normal((k, t["mix"].shape[1])))
    spectra = (mix / mix.sum(1, keepdims=True)) @ t["endmembers"]
    spectra *= np.exp(0.08 * rng.standard_normal((k, 1)) + 0.04 * rng.standard_normal())  # region, scene
    # Greenness: per-region jitter plus a per-scene season (senescent / leaf-off vegetation looks like soil in
    # S2 while its SAR structure stays).
    season = rng.uniform(0.0, 0.4)
    spectra += (0.08 * rng.standard_normal((k, 1)) - season) * t["veg"][classes, None] * t["green_dir"]
    tex = np.exp(t["s2_tex"][cls_map] * (0.6 * coarse[2] + 0.8 * fine[0])).astype(np.float32)
    green = (0.04 * t["veg"][cls_map] * coarse[3]).astype(np.float32)
    alpha = shadow = None
    if rng.random() < config.cloud_fraction:
        alpha, shadow = clouds(rng, coarse[5], p)
    optical: dict[str, np.ndarray] = {}
    normal, log_gamma = noise_bank(config.speckle_looks)
    cloud = t["cloud"].astype(np.float32)
    for gsd, idx in _BANDS_BY_GSD.items():
        f = gsd // 10
        # Sensors integrate over their footprint: coarse bands see area-weighted mixtures of the 10 m scene.
        if f == 1:
            x = spectra.T.astype(np.float32)[idx][:, region] * tex
        else:
            frac = block_fractions(region, k, f)
            x = np.einsum("kb,khw->bhw", spectra[:, idx].astype(np.float32), frac) * block_mean(tex, f)
        x += block_mean(green, f) * t["green_dir"].astype(np.float32)[idx, None, None]
        if alpha is not None and shadow is not None:
            a = block_mean(alpha, f)
            x *= 1.0 - SHADOW_DARKENING * block_mean(shadow, f)
            x += a * (cloud[idx, None, None] - x)
        x += bank_slice(rng, normal, x.shape) * (15.0 + 0.01 * x)  # sensor noise
        x = np.clip(np.rint(x), 1, 65535).astype(np.uint16)
        for j, b in enumerate(idx):
            optical[S2_BANDS[b]] = x[j]
    optical = {b: optical[b] for b in S2_BANDS}
    cloud_cover = float((alpha > 0.5).mean()) if alpha is not None else 0.0

    # S1: class level + region and scene offsets + correlated texture, gamma speckle in linear power.
    offsets = 0.6 * rng.standard_normal((k, 2)) + 0.7 * rng.standard_normal()
    level = (t["s1"][classes] + offsets).astype(np.float32)  # [k, 2] dB
    s1_tex = t["s1_tex"][cls_map].astype(np.float32)
    # Speckle multiplies linear power: 10*log10(sigma0 * G) = sigma0_dB + 10*log10(G); the bank holds
    # 10*log10(G).
    speckle_db = bank_slice(rng, log_gamma, (2, p, p))
    sar = {}
    for j, band in enumerate(("VV", "VH")):
        sigma0_db = level[:, j][region] + s1_tex * (0.6 * coarse[4] + 0.8 * fine[1 + j])
        sar[band] = (sigma0_db + speckle_db[j]).astype(np.float32)

    code = SPLIT_CODES[split]
    # Patches tile a synthetic UTM 33N grid, row-major, one block of rows per split.
    x0, y0 = 300000.0 + (index % 1000) * 10.0 * p, 5600000.0 - (code * 1000 + index // 1000) * 10.0 * p
    geo = GeoInfo((10.0, 0.0, x0, 0.0, -10.0, y0), "EPSG:32633")
    meta = {
        "split": split,
        "index": index,
        "context": CONTEXT_NAMES[context],
        "geo": geo,
        "class_area": {BENV2_CLASSES[c]: float(a) for c, a in zip(classes, area, strict=False)},
        "cloud_cover": cloud_cover,
        "contains_cloud_or_shadow": alpha is not None,
        "contains_seasonal_snow": False,
    }
    return RawPatch(id=f"synthetic-{split}-{index}", sar=sar, optical=optical, labels=labels, meta=meta)


class SyntheticMosaic:
    """One split of the synthetic benchmark (a :class:`~mosaic_edge.data.base.PatchSource`); patches are
    generated on read, so the dataset costs no disk and no memory."""

    classes: tuple[str, ...] = BENV2_CLASSES

    def __init__(self, config: SyntheticConfig | None = None, split: str = "train"):
        self.config = config or SyntheticConfig()
        self.split = normalise_split(split)
        self._n = self.config.size(self.split)

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> list[str]:
        return [f"synthetic-{self.split}-{i}" for i in range(self._n)]

    def read(self, index: int) -> RawPatch:
        if not 0 <= index < self._n:
            raise IndexError(f"index {index} out of range for {self._n} synthetic {self.split} patches")
        return generate_patch(self.config, self.split, index)


@lru_cache(maxsize=8)
def synthetic_contract(config: SyntheticConfig | None = None) -> Contract:
    """Contract of the synthetic benchmark: 19 BENV2 classes, statistics from its train split.

    Statistics are computed (after the same bilinear upsampling the preprocessing does) over the first
    ``stats_samples`` train patches, so they are deterministic and do not depend on ``n_train``.
    """
    config = config or SyntheticConfig()
    source = SyntheticMosaic(config, "train")
    n = min(config.stats_samples, len(source))
    if n == 0:
        raise UserError("synthetic_contract needs n_train > 0")
    # The first n patches: patches are i.i.d., and this keeps the statistics independent of n_train.
    stats = band_stats(source, range(n), config.patch_size)
    knobs = ", ".join(f"{k}={v}" for k, v in asdict(config).items() if not k.startswith("n_"))
    return Contract(
        patch_size=config.patch_size,
        sar_mean=stats.sar_mean,
        sar_std=stats.sar_std,
        optical_mean=stats.optical_mean,
        optical_std=stats.optical_std,
        stats_source=f"synthetic train split, first {n} patches ({knobs})",
        dataset="synthetic",
    )


def write_benv2_layout(
    config: SyntheticConfig,
    root: str | Path,
    splits: tuple[str, ...] = ("train", "validation", "test"),
    compress: bool = True,
) -> Path:
    """Write the synthetic benchmark in the official BigEarthNet v2 layout (tiffs + ``metadata.parquet``).

    :class:`~mosaic_edge.data.benv2.BigEarthNetV2` reads it back bit-identically (labels, S1 float32, S2
    uint16, georeferencing). Returns ``root``.
    """
    from mosaic_edge.data.benv2_writer import write_source_layout  # the writer needs pyarrow; import on use

    return write_source_layout([SyntheticMosaic(config, s) for s in splits], root, compress)
