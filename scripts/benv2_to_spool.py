"""Drop BigEarthNet v2 patches (official layout) into a spool's ``incoming/`` as tiles, as a field writer would.

Each pair becomes ``incoming/<patch_id>/{S1,S2}/`` holding its per-band GeoTIFFs, written under a dot-name and
renamed into place, then marked ready with ``incoming/<patch_id>.ready``
(the convention in README.md, "Spool convention").

    python scripts/benv2_to_spool.py tests/data/benv2-mini runs/demo/spool [--split test] [--limit N]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mosaic_edge.data.benv2 import BigEarthNetV2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="BigEarthNet v2 root (metadata.parquet, BigEarthNet-S1/-S2)")
    parser.add_argument("spool", type=Path, help="spool directory of `mosaic-edge serve`")
    parser.add_argument("--split", action="append", help="train / validation / test (repeatable; default all)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many tiles per split (0: all)")
    args = parser.parse_args()
    incoming = args.spool / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    count = 0
    for split in args.split or ["train", "validation", "test"]:
        source = BigEarthNetV2(args.root, split, include_snow_cloud=True)
        n = len(source) if args.limit <= 0 else min(args.limit, len(source))
        for i in range(n):
            s1, s2 = source.folders(i)
            tile_id = source.ids[i]
            staging = incoming / f".{tile_id}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(s1, staging / "S1")
            shutil.copytree(s2, staging / "S2")
            staging.rename(incoming / tile_id)
            (incoming / f"{tile_id}.ready").touch()
            count += 1
    print(f"dropped {count} tiles into {incoming}")


if __name__ == "__main__":
    main()
