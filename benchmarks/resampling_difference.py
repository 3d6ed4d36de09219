"""How much do half-pixel and corner-aligned bilinear upsampling differ on real BigEarthNet v2 patches?

The shared preprocessing resamples the 20 m and 60 m S2 bands with half-pixel centres (``align_corners=False``,
:func:`mosaic_edge.data.preprocess.resize_bilinear`); ConfigILM's BigEarthNet v2 utilities, whose published
statistics the BigEarthNet contract uses, resample with ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=True)``. For every resampled band of the real sample (``tests/data/benv2-mini``, all 24 pairs) this
prints the difference between the two in reflectance units (x 1e4) and in units of the band's published std
(i.e. in the model's standardised input), and the per-band mean / std of the sample under each resampling.

    python benchmarks/resampling_difference.py --out benchmarks/results/resampling_difference.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mosaic_edge.contract import BENV2_STATS, S2_BANDS, S2_GSD
from mosaic_edge.data.benv2 import SNOW_CLOUD_METADATA
from mosaic_edge.data.preprocess import resize_bilinear
from mosaic_edge.data.sources import open_source

REPO = Path(__file__).resolve().parents[1]


def corner_aligned(band: np.ndarray, size: int) -> np.ndarray:
    """ConfigILM's resampling (``stack_and_interpolate`` in configilm/extra/BENv2_utils.py)."""
    t = torch.from_numpy(band.astype(np.float32))[None, None]
    return F.interpolate(t, (size, size), mode="bilinear", align_corners=True)[0, 0].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO / "tests/data/benv2-mini")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    extra = {"include_snow_cloud": True} if (args.root / SNOW_CLOUD_METADATA).is_file() else {}
    patches = [src.read(i) for split in ("train", "validation", "test")
               for src in [open_source(args.root, split, **extra)] for i in range(len(src))]
    rows = []
    all_std = []
    for band in (b for b in S2_BANDS if S2_GSD[b] > 10):
        std = BENV2_STATS[band][1]
        half = np.stack([resize_bilinear(p.optical[band], (120, 120)) for p in patches]).astype(np.float64)
        corner = np.stack([corner_aligned(p.optical[band], 120) for p in patches]).astype(np.float64)
        d = np.abs(half - corner)
        all_std.append(d / std)
        rows.append({
            "band": band, "gsd_m": S2_GSD[band],
            "mean_abs_diff": round(float(d.mean()), 2), "p99_abs_diff": round(float(np.percentile(d, 99)), 1),
            "max_abs_diff": round(float(d.max()), 1),
            "mean_abs_diff_std_units": round(float(d.mean() / std), 4),
            "p99_abs_diff_std_units": round(float(np.percentile(d, 99) / std), 4),
            "sample_mean_half_pixel": round(float(half.mean()), 2), "sample_mean_align_corners": round(
                float(corner.mean()), 2),
            "sample_std_half_pixel": round(float(half.std()), 2), "sample_std_align_corners": round(
                float(corner.std()), 2),
        })
        print(json.dumps(rows[-1]))
    pooled = np.concatenate([a.ravel() for a in all_std])
    summary = {"patches": len(patches), "bands": len(rows),
               "mean_abs_diff_std_units_all_resampled_bands": round(float(pooled.mean()), 4),
               "p99_abs_diff_std_units_all_resampled_bands": round(float(np.percentile(pooled, 99)), 4),
               "max_abs_diff_std_units": round(float(pooled.max()), 4)}
    print(json.dumps(summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"bands": rows, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
