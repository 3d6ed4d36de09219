"""Small SEN12MS trees in the real file format, for tests (no download).

Each patch is a few rectangular IGBP land-cover blocks; S1 and S2 follow the land cover loosely (water dark,
vegetation bright in NIR) so the files look like the archive's: float32 dB S1 (2 bands), uint16 S2 (13 bands),
uint8 land cover (4 bands), GeoTIFF tags in UTM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mosaic_edge.data.sen12ms import PATCH_SIZE, SEN12MS_S2_BANDS
from mosaic_edge.data.tiff import GeoInfo, write_tiff

# IGBP codes drawn for the fixture blocks (forest, shrubland, grassland, croplands, urban, barren, water).
_CODES = (1, 4, 7, 10, 12, 13, 16, 17)


def write_sen12ms_fixture(
    root: str | Path,
    rois: tuple[tuple[str, str], ...] = (("ROIs1158", "spring"), ("ROIs1868", "summer")),
    scenes: int = 2,
    patches: int = 2,
    size: int = PATCH_SIZE,
    seed: int = 0,
) -> Path:
    """Write ``len(rois) * scenes * patches`` SEN12MS patches under ``root``; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for roi, season in rois:
        for scene in range(1, scenes + 1):
            for p in range(patches):
                prefix = f"{roi}_{season}"
                half = size // 2
                lc = np.empty((4, size, size), np.uint8)
                codes = rng.choice(_CODES, size=4)
                igbp = np.block(
                    [
                        [np.full((half, half), codes[0]), np.full((half, size - half), codes[1])],
                        [
                            np.full((size - half, half), codes[2]),
                            np.full((size - half, size - half), codes[3]),
                        ],
                    ]
                )
                lc[0] = igbp
                lc[1:] = rng.integers(1, 40, size=(3, 1, 1))  # LCCS codes: unused by the labels
                water = igbp == 17
                s1 = np.stack([np.where(water, -20.0, -10.0), np.where(water, -27.0, -17.0)]).astype(
                    np.float32
                )
                s1 += rng.normal(0, 1.5, s1.shape).astype(np.float32)
                nir = np.where(water, 150, 2800)
                s2 = np.stack(
                    [
                        np.full((size, size), 300 + 100 * i) if b not in ("B08", "B8A", "B07") else nir
                        for i, b in enumerate(SEN12MS_S2_BANDS)
                    ]
                )
                s2 = (s2 + rng.integers(0, 50, s2.shape)).astype(np.uint16)
                geo = GeoInfo(
                    (10.0, 0.0, 400000.0 + 2560.0 * p, 0.0, -10.0, 5000000.0 - 2560.0 * scene), "EPSG:32632"
                )
                for kind, arr in (("s1", s1), ("s2", s2), ("lc", lc)):
                    path = root / prefix / f"{kind}_{scene}" / f"{prefix}_{kind}_{scene}_p{p}.tif"
                    write_tiff(path, arr, geo, compress=False)
    return root
