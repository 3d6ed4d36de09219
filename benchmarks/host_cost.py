"""Benchmark: the runtime's host work per tile, stage by stage, with a runner that does no work.

    python benchmarks/host_cost.py [--model EXPORT_DIR [--drift] | --patch 120 [--input-form raw]] [--tiles 100]
        [--iterations 200] [--rounds 4] [--formats npz,geotiff,benv2,scene] [--json OUT]

Tile formats (README "Spool convention"): ``npz`` -- 120 x 120 px ``.npz`` (S1 float32 dB, S2 uint16);
``geotiff`` -- a folder with ``s1.tif`` + ``s2.tif`` (Deflate, as ``write_tiff`` writes them); ``benv2`` --
BigEarthNet per-band folders (the 24 real pairs of ``tests/data/benv2-mini``, cycled); ``scene`` -- a
1200 x 1200 px ``.npz`` (100 windows of a 120 px model).

Two measurements per format, with :class:`null_runner.NullRunner` (the Runner interface, constant outputs)
standing in for the model, so what is left is the host's work:

1. **Stages** -- the profile's latency mode (:func:`mosaic_edge.edge_runtime.profiling.measure_latency` over
   :func:`~mosaic_edge.edge_runtime.profiling.runtime_pipeline`, the daemon's own stage functions), batch 1,
   ``--iterations`` tiles after ``--warmup``, split over ``--rounds`` rounds that interleave the formats, timed
   with the thread's CPU clock (``time.thread_time_ns``: host work, not waits for the disk or for other
   processes on a shared machine). Every stage's p50 in CPU ms per tile, and ``host`` = the per-tile sum of
   all stages but inference (its p50).
2. **Daemon CPU** -- :class:`~mosaic_edge.edge_runtime.daemon.Daemon` draining a spool of ``--tiles`` tiles in
   ``once`` mode (all threads, fsyncs and moves included); process CPU time and wall time per tile.

The contract (patch size, input form) comes from ``--model`` (an export directory) or ``--patch`` /
``--input-form``. ``--drift`` adds the INT8 safety net's drift check of every window against the export's
calibration envelope (a "drift" stage per tile, and in the daemon), and prints its share of the host time.
Load averages are printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from null_runner import NullRunner  # noqa: E402 - sibling script, not a package

REPO = Path(__file__).resolve().parents[1]
FORMATS = ("npz", "geotiff", "benv2", "scene")


def write_format(kind: str, folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` tiles of one format in ``folder`` (see the module docstring)."""
    from mosaic_edge.data.tiff import write_tiff
    from mosaic_edge.tile_format import write_tile

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    if kind == "benv2":
        from mosaic_edge.data.benv2 import BigEarthNetV2

        src = BigEarthNetV2(REPO / "tests" / "data" / "benv2-mini", "train", include_snow_cloud=True)
    for i in range(n):
        size = 1200 if kind == "scene" else 120
        sar = rng.normal(-15.0, 5.0, (2, size, size)).astype(np.float32)
        opt = rng.integers(1, 5000, (12, size, size), dtype=np.uint16)
        if kind in ("npz", "scene"):
            out.append(write_tile(folder / f"{kind}-{i:04d}.npz", sar, opt))
        elif kind == "geotiff":
            write_tiff(folder / f"{kind}-{i:04d}" / "s1.tif", sar)
            write_tiff(folder / f"{kind}-{i:04d}" / "s2.tif", opt)
            out.append(folder / f"{kind}-{i:04d}")
        elif kind == "benv2":
            s1, s2 = src.folders(i % len(src))
            dest = folder / f"{kind}-{i:04d}"
            shutil.copytree(s1, dest / s1.name)
            shutil.copytree(s2, dest / s2.name)
            out.append(dest)
        else:
            raise SystemExit(f"unknown format {kind!r}; choose from {FORMATS}")
    return out


def stage_times(contract, tiles: dict[str, list[Path]], scratch: Path, iterations: int, warmup: int,
                rounds: int, net=None) -> dict[str, dict]:
    """Per format: per-stage p50 ms per tile (latency mode, batch 1), formats interleaved in rounds."""
    from mosaic_edge.edge_runtime.profiling import STAGES, measure_latency, runtime_pipeline

    runner = NullRunner(contract)
    runner.activate()
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in tiles}
    per_round = max(1, iterations // rounds)
    pipes = {k: runtime_pipeline(runner, scratch / f"results-{k}", net=net) for k in tiles}
    for kind, paths in tiles.items():  # warm-up: imports, caches, first allocations
        measure_latency(pipes[kind], runner, paths, 1, 1, warmup)
    for _ in range(rounds):
        for kind, paths in tiles.items():
            n = per_round if kind != "scene" else max(1, per_round // 10)
            lat = measure_latency(pipes[kind], runner, paths, 1, n, 0, timer=time.thread_time_ns)
            for stage, values in lat["samples_ms"].items():
                samples[kind].setdefault(stage, []).extend(values)
    out = {}
    for kind, stages in samples.items():
        host = np.asarray(stages["end_to_end"]) - np.asarray(stages.get("inference", 0.0))
        share = np.asarray(stages["drift"]) / host  # per tile: the drift check's share of that tile's host time
        out[kind] = {"stages_p50_ms": {s: float(np.median(stages[s])) for s in STAGES if s in stages},
                     "host_p50_ms": float(np.median(host)), "host_p10_ms": float(np.percentile(host, 10)),
                     "host_p90_ms": float(np.percentile(host, 90)), "n": len(host),
                     "drift_share_p50": float(np.median(share)),
                     "drift_share_of_medians": float(np.median(stages["drift"]) / np.median(host))}
    return out


def daemon_cost(contract, kind: str, n: int, scratch: Path, net=None) -> dict:
    """Process CPU and wall time per tile of the daemon draining ``n`` tiles of ``kind`` with the null runner."""
    from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig
    from mosaic_edge.edge_runtime.logs import get_logger

    get_logger().disabled = True
    spool = scratch / f"spool-{kind}"
    write_format(kind, spool / "incoming", n, seed=7)
    daemon = Daemon(NullRunner(contract), spool, ServeConfig(batch=8, once=True, settle_s=0.0, max_wait_ms=5.0),
                    safety=net)
    t0, c0 = time.perf_counter(), time.process_time()
    code = daemon.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    done = len(list((spool / "results").glob("*.jsonl")))
    if code != 0 or done != n:
        raise SystemExit(f"daemon exit {code}: {done} of {n} tiles done")
    shutil.rmtree(spool, ignore_errors=True)
    return {"tiles": n, "cpu_ms_per_tile": 1e3 * cpu / n, "wall_ms_per_tile": 1e3 * wall / n}


def _contract(args):
    from mosaic_edge.contract import Contract

    if args.model:
        from mosaic_edge.manifest import Manifest

        return Manifest.load(args.model).contract
    extra = {"input_form": args.input_form} if args.input_form else {}
    return Contract(patch_size=args.patch, **extra)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="export directory whose contract to use (patch size, input form)")
    ap.add_argument("--patch", type=int, default=120, help="model patch without --model")
    ap.add_argument("--input-form", default=None, help="raw or standardised without --model")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--tiles", type=int, default=100, help="tiles per format in the daemon run (scene: /10)")
    ap.add_argument("--iterations", type=int, default=200, help="timed tiles per format (scene: /10)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--drift", action="store_true", help="with the drift check of --model's envelope")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    contract = _contract(args)
    net = None
    if args.drift:
        from mosaic_edge.edge_runtime.safety import SafetyNet
        from mosaic_edge.manifest import Manifest

        if not args.model or Manifest.load(args.model).envelope is None:
            raise SystemExit("--drift needs --model: an export directory with a calibration envelope (--int8)")
        net = SafetyNet(envelope=Manifest.load(args.model).envelope)
    kinds = [k.strip() for k in args.formats.split(",") if k.strip()]
    load0 = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="mosaic-host-cost-"))
    try:
        tiles = {k: write_format(k, scratch / "tiles" / k, 3 if k == "scene" else 24) for k in kinds}
        stages = stage_times(contract, tiles, scratch, args.iterations, args.warmup, args.rounds, net)
        daemon = {k: daemon_cost(contract, k, max(4, args.tiles // 10) if k == "scene" else args.tiles, scratch, net)
                  for k in kinds}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load1 = os.getloadavg()
    skip = ("h2d", "inference", "d2h", "fallback")  # the model's work (a null runner here)
    names = [s for s in next(iter(stages.values()))["stages_p50_ms"] if s not in skip]
    print(f"contract: patch {contract.patch_size}, input form {contract.input_form}; "
          f"load average {load0[0]:.2f} -> {load1[0]:.2f}")
    drift = " drift / host p50 |" if net else ""
    print("| format | " + " | ".join(names) + " | host p50 (p10-p90) |" + drift
          + " daemon CPU ms/tile | daemon wall ms/tile |")
    print("|---|" + "---:|" * (len(names) + 3 + bool(net)))
    for k in kinds:
        st, d = stages[k], daemon[k]
        print(f"| {k} | " + " | ".join(f"{st['stages_p50_ms'][s]:.3f}" for s in names)
              + f" | {st['host_p50_ms']:.2f} ({st['host_p10_ms']:.2f}-{st['host_p90_ms']:.2f}) | "
              + (f"{100 * st['drift_share_p50']:.1f}% |" if net else "")
              + f"{d['cpu_ms_per_tile']:.2f} | {d['wall_ms_per_tile']:.2f} |")
    result = {"contract": {"patch_size": contract.patch_size,
                           "input_form": contract.input_form},
              "load_average": [load0, load1], "stages": stages, "daemon": daemon}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
