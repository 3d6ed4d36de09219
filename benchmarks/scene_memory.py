"""Benchmark: peak memory and windows/s of the daemon on a Sentinel-2-sized scene vs 120 px tiles.

    python benchmarks/scene_memory.py [--size 10980] [--block 512] [--patch 120] [--tiles 300]
        [--chunk-mb 64] [--json OUT]

Writes a synthetic scene as a tiled GeoTIFF pair (``s1.tif``: 2 bands float32 dB, ``s2.tif``: 12 bands uint16
with ``GDAL_NODATA=0``, both ``--block`` px tiles, Deflate, planar, UTM 33N, written tile by tile so the writer
never holds the scene), then runs the daemon (``once``, :class:`null_runner.NullRunner`: the Runner interface with
constant outputs, so what is measured is the host's work) in a fresh child process per case:

- ``scene``: the one scene (``(size / patch)^2`` windows), read region by region (:mod:`mosaic_edge.scene`);
- ``tiles``: ``--tiles`` 120 px GeoTIFF pairs of the same content (one window each of a 120 px model).

Per case: peak resident memory of the child (``ru_maxrss``), wall and process CPU time, windows/s. Load averages
are printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
GEO = (10.0, 0.0, 199980.0, 0.0, -10.0, 6600000.0)


def _band(which: int, band: int, r0: int, c0: int, h: int, w: int, seed: int) -> np.ndarray:
    """One band of a region: a smooth field plus noise (deterministic per band and region); ``which`` 0: S1 dB
    (float32), 1: S2 reflectance (uint16)."""
    rng = np.random.default_rng([seed, which, band, r0, c0])
    field = np.sin(np.arange(c0, c0 + w, dtype=np.float32) / 700.0)[None] * np.cos(
        np.arange(r0, r0 + h, dtype=np.float32) / 900.0)[:, None]
    if which == 0:
        return (-12.0 - 7.0 * band + 4.0 * field + rng.standard_normal((h, w), np.float32)).astype(np.float32)
    values = 1500.0 + 900.0 * (0.5 + band / 11) * field + 60.0 * rng.standard_normal((h, w), np.float32)
    return np.clip(values, 1, 10000).astype(np.uint16)


def _content(r0: int, c0: int, h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw S1 (dB) and S2 (reflectance) of a region, the scene's content there."""
    return (np.stack([_band(0, b, r0, c0, h, w, seed) for b in range(2)]),
            np.stack([_band(1, b, r0, c0, h, w, seed) for b in range(12)]))


def write_scene(folder: Path, size: int, block: int, seed: int = 0) -> None:
    """The tiled pair, written one block at a time (tifffile takes an iterator of tiles)."""
    import tifffile

    from mosaic_edge.data.tiff import GeoInfo, _geo_tags

    folder.mkdir(parents=True, exist_ok=True)
    geo = GeoInfo(GEO, "EPSG:32633")
    starts = range(0, size, block)

    def tiles(which: int, bands: int):
        for band in range(bands):
            for r0 in starts:
                for c0 in starts:
                    h, w = min(block, size - r0), min(block, size - c0)
                    arr = _band(which, band, r0, c0, h, w, seed)
                    out = np.zeros((block, block), arr.dtype)
                    out[:h, :w] = arr
                    yield out

    for name, which, bands, dtype, nodata in (("s1.tif", 0, 2, np.float32, None), ("s2.tif", 1, 12, np.uint16, 0)):
        tags = _geo_tags(geo)
        if nodata is not None:
            tags.append((42113, "s", 0, str(nodata), False))
        tifffile.imwrite(folder / name, tiles(which, bands), shape=(bands, size, size), dtype=dtype,
                         tile=(block, block), photometric="minisblack", planarconfig="separate",
                         compression="zlib", compressionargs={"level": 1}, extratags=tags, metadata=None)
    (folder.parent / f"{folder.name}.ready").write_bytes(b"")


def write_tiles(incoming: Path, n: int, seed: int = 0) -> None:
    from mosaic_edge.data.tiff import GeoInfo, write_tiff

    for i in range(n):
        r0, c0 = 120 * (i // 91), 120 * (i % 91)
        sar, opt = _content(r0, c0, 120, 120, seed)
        geo = GeoInfo((10.0, 0.0, GEO[2] + 10.0 * c0, 0.0, -10.0, GEO[5] - 10.0 * r0), "EPSG:32633")
        write_tiff(incoming / f"t{i:05d}" / "s1.tif", sar, geo)
        write_tiff(incoming / f"t{i:05d}" / "s2.tif", opt, geo, nodata=0)


def child(spool: str, patch: int, chunk_mb: int) -> None:
    """Run in a fresh process: the daemon over ``spool``; print one JSON line of measurements."""
    from null_runner import NullRunner

    from mosaic_edge.contract import Contract
    from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig
    from mosaic_edge.edge_runtime.logs import get_logger
    from mosaic_edge.tile_format import TileLimits

    get_logger().disabled = True
    contract = Contract(patch_size=patch, input_form="raw")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = ServeConfig(batch=8, once=True, settle_s=0.0, max_wait_ms=5.0,
                      limits=TileLimits(chunk_bytes=chunk_mb << 20))
    daemon = Daemon(NullRunner(contract), spool, cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    code = daemon.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    results = sorted(Path(spool, "results").glob("*.jsonl"))
    windows = sum(sum(1 for _ in p.open()) - 1 for p in results)
    print(json.dumps({"exit": code, "tiles": len(results), "windows": windows, "wall_s": wall, "cpu_s": cpu,
                      "windows_per_s": windows / wall, "peak_rss_mb": resource.getrusage(
                          resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mb": base / 1024,
                      "failed": sorted(os.listdir(Path(spool, "failed")))}))


def run_case(spool: Path, patch: int, chunk_mb: int) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'benchmarks'}"}
    out = subprocess.run([sys.executable, __file__, "--child", str(spool), "--patch", str(patch), "--chunk-mb",
                          str(chunk_mb)], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10980)
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--patch", type=int, default=120)
    ap.add_argument("--tiles", type=int, default=300)
    ap.add_argument("--chunk-mb", type=int, default=64)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.patch, args.chunk_mb)
        return 0
    load0 = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="mosaic-scene-"))
    try:
        t = time.perf_counter()
        write_scene(scratch / "scene" / "incoming" / "scene", args.size, args.block)
        sizes = {p.name: p.stat().st_size for p in (scratch / "scene" / "incoming" / "scene").iterdir()}
        print(f"scene written in {time.perf_counter() - t:.0f} s: {sizes}", flush=True)
        write_tiles(scratch / "tiles" / "incoming", args.tiles)
        cases = {"tiles": run_case(scratch / "tiles", args.patch, args.chunk_mb),
                 "scene": run_case(scratch / "scene", args.patch, args.chunk_mb)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"patch {args.patch}, chunk {args.chunk_mb} MB, scene {args.size} px in {args.block} px tiles; "
          f"load average {load0[0]:.2f} -> {load1[0]:.2f}")
    print("| case | tiles | windows | wall s | CPU s | windows/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, c in cases.items():
        print(f"| {name} | {c['tiles']} | {c['windows']} | {c['wall_s']:.1f} | {c['cpu_s']:.1f} | "
              f"{c['windows_per_s']:.0f} | {c['peak_rss_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "load_average": [load0, load1], "cases": cases},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
