"""Benchmark: INT8 through ``mosaic-edge serve`` against fp32, with and without the borderline fallback.

For each export directory and each tile set, the same tiles are served by the daemon (``mosaic-edge serve --once``,
a subprocess, as a user runs it) at ``--precision fp32``, at ``--precision int8 --no-fallback`` and at
``--precision int8`` (the fallback on, as by default), and the records are compared:

* agreement -- the share of (window, class) decisions (a class is decided when it is among the record's
  ``labels``) equal to the fp32 run's;
* drifted / re-run -- the share of windows whose record says ``drift.drifted`` / ``answered_by`` != int8;
* throughput cost -- the daemon's wall time from its "serving" to its "stopped" log line (so not the process
  start or the model load), INT8 with the fallback over INT8 without it, on ``--repeat`` copies of the tiles
  (so a run lasts long enough to time), in ``--rounds`` interleaved rounds; medians.

Tile sets: ``benv2:ROOT`` -- every pair of a BigEarthNet v2 root as a per-band tile folder (what
``scripts/benv2_to_spool.py`` drops); ``synthetic-test`` -- the synthetic benchmark's test split at the model's
patch size, one ``.npz`` tile per patch (:func:`mosaic_edge.tile_format.write_tile`); or a folder of tiles.

    python benchmarks/int8_serve_agreement.py runs/default/exp-minmax-synth runs/default/exp-minmax-benv2 \\
        --tiles benv2:tests/data/benv2-mini --tiles synthetic-test [--artefact model.int8.onnx] \\
        [--repeat 8 --rounds 5] [--threads 1] [--json OUT]

``--artefact model.int8.onnx`` serves the TensorRT Q/DQ artefact (by its file, listed in the manifest) instead of
the CPU one; ONNX Runtime runs it on the CPU, which says how its answers agree, not how fast TensorRT is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "mosaic_edge.cli"]


def write_tiles(spec: str, folder: Path, patch: int) -> list[Path]:
    """The tiles of one tile set in ``folder`` (see the module doc)."""
    folder.mkdir(parents=True, exist_ok=True)
    if spec.startswith("benv2:"):
        from mosaic_edge.data.benv2 import BigEarthNetV2

        root, out = Path(spec[6:]), []
        for split in ("train", "validation", "test"):
            src = BigEarthNetV2(root, split, include_snow_cloud=True)
            for i in range(len(src)):
                s1, s2 = src.folders(i)
                dest = folder / src.ids[i]
                shutil.copytree(s1, dest / "S1")
                shutil.copytree(s2, dest / "S2")
                out.append(dest)
        return out
    if spec.startswith("synthetic-"):
        from mosaic_edge.contract import Contract
        from mosaic_edge.data.preprocess import stack_bands
        from mosaic_edge.data.sources import DataSpec
        from mosaic_edge.tile_format import write_tile

        c = Contract(patch_size=patch)
        src = DataSpec("synthetic", {"patch_size": patch}).open(spec[10:])
        out = []
        for i in range(len(src)):
            p = src.read(i)
            sar = stack_bands(p.sar, c.sar_bands, None, p.id)
            opt = stack_bands(p.optical, c.optical_bands, sar.shape[-2:], p.id)
            out.append(write_tile(folder / f"{p.id}.npz", sar, opt))
        return out
    tiles = sorted(p for p in Path(spec).iterdir() if not p.name.startswith(".") and not p.name.endswith(".ready"))
    for t in tiles:
        (shutil.copytree if t.is_dir() else shutil.copy2)(t, folder / t.name)
    return [folder / t.name for t in tiles]


def fill_spool(spool: Path, tiles: list[Path], repeat: int = 1) -> None:
    shutil.rmtree(spool, ignore_errors=True)
    incoming = spool / "incoming"
    incoming.mkdir(parents=True)
    for k in range(repeat):
        for t in tiles:
            name = t.name if repeat == 1 else (f"r{k}-{t.name}")
            (shutil.copytree if t.is_dir() else shutil.copy2)(t, incoming / name)


def serve(model: Path, spool: Path, precision: str, fallback: bool, threads: int | None) -> dict[str, Any]:
    """One ``serve --once`` run; returns its stop-line fields and the serving->stopped wall time."""
    cmd = [*CLI, "serve", "--model", str(model), "--spool", str(spool), "--runner", "ort", "--precision", precision,
           "--once", "--settle-s", "0", "--log-level", "info"]
    if not fallback:
        cmd.append("--no-fallback")
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.startswith("{")]
    start = next((ln for ln in lines if ln.get("msg") == "serving"), None)
    stop = next((ln for ln in lines if ln.get("msg") == "stopped"), None)
    if proc.returncode != 0 or start is None or stop is None:
        raise SystemExit(f"serve failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return {"stop": stop, "wall_s": stop["ts"] - start["ts"], "safety_net": start.get("safety_net")}


def read_records(spool: Path) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for path in sorted((spool / "results").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("type") != "tile":  # the tile summary
                out[(r["tile"], r["patch"])] = r
    return out


def decisions(records: dict[tuple[str, int], dict[str, Any]], keys: list[tuple[str, int]],
              classes: list[str]) -> np.ndarray:
    col = {c: i for i, c in enumerate(classes)}
    d = np.zeros((len(keys), len(classes)), bool)
    for i, k in enumerate(keys):
        for lab in records[k]["labels"]:
            d[i, col[lab["name"]]] = True
    return d


def compare(ref: dict, run: dict, classes: list[str], precision: str) -> dict[str, Any]:
    keys = sorted(ref)
    if sorted(run) != keys:
        raise SystemExit(f"the runs answered different windows: {len(ref)} vs {len(run)}")
    recs = [run[k] for k in keys]
    return {"windows": len(keys),
            "agreement": float((decisions(ref, keys, classes) == decisions(run, keys, classes)).mean()),
            "drifted": float(np.mean([bool(r["drift"] and r["drift"]["drifted"]) for r in recs])),
            "rerun": float(np.mean([r["answered_by"] != precision for r in recs])),
            "borderline": float(np.mean([bool(r["rerun"] and "borderline" in r["rerun"]) for r in recs]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("exports", nargs="+", type=Path)
    ap.add_argument("--tiles", action="append", required=True, help="benv2:ROOT | synthetic-test | folder")
    ap.add_argument("--artefact", default=None, help="serve this INT8 file of each export (default: the CPU one)")
    ap.add_argument("--repeat", type=int, default=0, help="copies of the tiles in the timing runs (0: no timing)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (0: the daemon's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from mosaic_edge.manifest import Manifest

    load0 = os.getloadavg()
    results = []
    scratch = Path(tempfile.mkdtemp(prefix="mosaic-int8-serve-"))
    try:
        for export in args.exports:
            manifest = Manifest.load(export)
            classes = list(manifest.contract.classes)
            int8 = export / args.artefact if args.artefact else export
            for spec in args.tiles:
                tiles = write_tiles(spec, scratch / "tiles" / f"{export.name}-{spec.replace('/', '_')}",
                                    manifest.contract.patch_size)
                runs = {}
                for mode, model, precision, fb in (("fp32", export, "fp32", False), ("int8", int8, "int8", False),
                                                   ("int8+fallback", int8, "int8", True)):
                    spool = scratch / "spool"
                    fill_spool(spool, tiles)
                    runs[mode] = (serve(model, spool, precision, fb, args.threads), read_records(spool))
                ref = runs["fp32"][1]
                row = {"export": str(export), "tiles": spec, "artefact": args.artefact or "cpu int8",
                       "safety_net": runs["int8+fallback"][0]["safety_net"],
                       "int8": compare(ref, runs["int8"][1], classes, "int8"),
                       "int8+fallback": compare(ref, runs["int8+fallback"][1], classes, "int8")}
                if args.repeat:
                    walls: dict[str, list[float]] = {"int8": [], "int8+fallback": []}
                    for r in range(args.rounds):
                        order = ["int8", "int8+fallback"] if r % 2 == 0 else ["int8+fallback", "int8"]
                        for mode in order:
                            fill_spool(scratch / "spool", tiles, args.repeat)
                            walls[mode].append(serve(int8, scratch / "spool", "int8", mode != "int8",
                                                     args.threads)["wall_s"])
                    n = len(tiles) * args.repeat
                    row["timing"] = {"tiles": n, "rounds": args.rounds, "wall_s": walls,
                                     "tiles_s": {m: n / statistics.median(w) for m, w in walls.items()},
                                     "throughput_ratio": statistics.median(
                                         a / b for a, b in zip(walls["int8"], walls["int8+fallback"], strict=True))}
                results.append(row)
                a, b = row["int8"], row["int8+fallback"]
                timing = row.get("timing")
                print(f"{export.name} | {spec} | {a['windows']} windows | drifted {100 * b['drifted']:.1f}% | "
                      f"INT8 alone {100 * a['agreement']:.2f}% | with fallback {100 * b['agreement']:.2f}% | "
                      f"re-run {100 * b['rerun']:.1f}% (borderline {100 * b['borderline']:.1f}%)"
                      + (f" | throughput {timing['throughput_ratio']:.2f}x of INT8 alone "
                         f"({timing['tiles_s']['int8+fallback']:.0f} vs {timing['tiles_s']['int8']:.0f} tiles/s)"
                         if timing else ""), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"load average {load0[0]:.2f} -> {load1[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"load_average": [load0, load1], "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
