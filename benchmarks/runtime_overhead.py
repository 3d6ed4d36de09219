"""Benchmark: the daemon's sustained tiles/s over a spool vs the bare runner on the same batches.

    python benchmarks/runtime_overhead.py --tiles 2000 --batch 8 [--model EXPORT_DIR] [--arch resnet18_narrow]

In each of ``--rounds`` rounds (alternating, so drift in a shared machine's load hits both sides alike):

1. Writes ``--tiles / --rounds`` patch-sized synthetic ``.npz`` tiles into a fresh spool's ``incoming/``.
2. Bare runner: every tile read and preprocessed once beforehand with the daemon's own ``pipeline.load_job``,
   batched ``--batch`` at a time, then only ``runner.infer`` timed over all batches (StageClock, the profile's
   measurement path).
3. Daemon: ``Daemon(runner, spool, ServeConfig(batch=..., once=True, settle_s=0))`` on the same tiles; wall
   time of ``run()`` with the runner already active.
4. Prints both rates over all rounds, their ratio daemon/bare (target >= 0.95) and the median per-round ratio
   as a Markdown table, then JSON. Also the process CPU time per tile of each side (all threads, ORT's
   included) and the daemon's per-tile read/preprocess times from its result records: when the bare runner
   already keeps every core busy, the daemon's extra CPU work per tile bounds the ratio, whatever overlaps.

Without ``--model`` a demo export is made: ``build_model(--arch)`` with random weights (timings do not depend
on the weights) exported to ONNX by the export stage, plus a manifest. Needs the ``train`` and ``export``
extras; the runtime itself still never imports torch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def demo_export(out: Path, arch: str, patch: int = 120) -> Path:
    """Export ``build_model(arch)`` (random weights) to ``out/model.onnx`` with a manifest; return ``out``."""
    import torch

    from mosaic_edge.contract import Contract
    from mosaic_edge.export.onnx_export import export_onnx
    from mosaic_edge.manifest import Manifest
    from mosaic_edge.train.models import build_model

    torch.manual_seed(0)
    contract = Contract(patch_size=patch, model_name=arch)
    export_onnx(build_model(arch).eval(), contract, out / "model.onnx")
    Manifest.create(contract, out).with_artefact("model.onnx", "fp32", "any").save()
    return out


def resolve_model(model: str | None, arch: str, scratch: Path) -> Path:
    if model:
        return Path(model)
    return demo_export(scratch / f"demo-{arch}", arch)


def fill_spool(spool_root: Path, patch: int, n: int, seed: int = 0) -> list[Path]:
    """``n`` synthetic tiles in ``spool_root/incoming`` (the profile's tile writer)."""
    from mosaic_edge.edge_runtime.profiling import write_synthetic_tiles

    return write_synthetic_tiles(spool_root / "incoming", patch, n, seed)


def bare_runner_rate(runner, tiles: list[Path], batch: int) -> dict:
    """tiles/s of ``runner.infer`` alone over the tiles' preprocessed patches, ``batch`` at a time."""
    from mosaic_edge.edge_runtime import pipeline
    from mosaic_edge.edge_runtime.profiling import StageClock

    jobs = [pipeline.load_job(p, p.name.removesuffix(".npz"), runner.contract) for p in tiles]
    sar = np.concatenate([j.sar for j in jobs])
    opt = np.concatenate([j.optical for j in jobs])
    clock = StageClock(("inference",))
    cpu0 = time.process_time()
    for i in range(0, len(sar), batch):
        with clock.iteration(), clock.stage("inference"):
            runner.infer({"sar": sar[i:i + batch], "optical": opt[i:i + batch]})
    cpu_s = time.process_time() - cpu0
    total_s = sum(clock.end_to_end) / 1e3
    return {"tiles": len(tiles), "patches": int(len(sar)), "seconds": total_s, "cpu_s": cpu_s,
            "tiles_s": len(tiles) / total_s, "batch_p50_ms": clock.summary()["end_to_end"]["p50_ms"]}


def daemon_rate(runner, spool_root: Path, batch: int, n_tiles: int) -> dict:
    """tiles/s of the daemon draining ``spool_root/incoming`` (``once`` mode, runner already active)."""
    from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig
    from mosaic_edge.edge_runtime.logs import get_logger

    get_logger().disabled = True  # one log line per tile would measure the terminal, not the runtime
    daemon = Daemon(runner, spool_root, ServeConfig(batch=batch, once=True, settle_s=0.0, max_wait_ms=50.0))
    t0, cpu0 = time.perf_counter(), time.process_time()
    code = daemon.run()
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    results = sorted((spool_root / "results").glob("*.jsonl"))
    failed = len(list((spool_root / "failed").glob("*.reason")))
    if code != 0 or len(results) != n_tiles:
        raise SystemExit(f"daemon exit {code}: {len(results)} results, {failed} failed of {n_tiles} tiles")
    timings = [json.loads(p.read_text().splitlines()[0])["timings_ms"] for p in results]
    stages = {k: float(np.median([t[k] for t in timings])) for k in ("read", "preprocess")}
    return {"tiles": len(results), "seconds": seconds, "cpu_s": cpu_s, "tiles_s": len(results) / seconds,
            "tile_p50_ms": stages}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="export directory or .onnx (default: demo export of --arch)")
    ap.add_argument("--arch", default="resnet18_narrow", help="encoder of the demo export")
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4, help="alternate bare/daemon this many times")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)

    from mosaic_edge.edge_runtime.runner import open_runner

    scratch = Path(tempfile.mkdtemp(prefix="mosaic-overhead-"))
    per_round = args.tiles // args.rounds
    rounds = []
    try:
        model = resolve_model(args.model, args.arch, scratch)
        runner = open_runner(model, kind="ort", device="cpu", threads=args.threads)
        with runner:
            # Warm-up so neither side pays ORT's first-run allocations.
            warm = fill_spool(scratch / "warm", runner.contract.patch_size, 2 * args.batch, seed=999)
            bare_runner_rate(runner, warm, args.batch)
            for r in range(args.rounds):
                # Bare and daemon alternate on the same tiles, so drift in a shared machine's load hits
                # both sides alike; the median of the per-round ratios is the headline.
                spool = scratch / f"spool-{r}"
                tiles = fill_spool(spool, runner.contract.patch_size, per_round, seed=r)
                bare = bare_runner_rate(runner, tiles, args.batch)
                runner.activate()  # the daemon deactivates the runner when it exits
                daemon = daemon_rate(runner, spool, args.batch, per_round)
                runner.activate()
                bare_runner_rate(runner, warm, args.batch)  # a fresh ORT session: warm it again
                rounds.append({"bare": bare, "daemon": daemon, "ratio": daemon["tiles_s"] / bare["tiles_s"]})
        bare_total = sum(r["bare"]["tiles"] for r in rounds) / sum(r["bare"]["seconds"] for r in rounds)
        daemon_total = sum(r["daemon"]["tiles"] for r in rounds) / sum(r["daemon"]["seconds"] for r in rounds)
        cpu_ms = {side: 1e3 * sum(r[side]["cpu_s"] for r in rounds) / sum(r[side]["tiles"] for r in rounds)
                  for side in ("bare", "daemon")}
        result = {"model": str(args.model or f"demo {args.arch}"), "artefact_sha256": runner.model_hash,
                  "batch": args.batch, "tiles": per_round * args.rounds, "rounds": rounds,
                  "threads": args.threads, "bare_tiles_s": bare_total, "daemon_tiles_s": daemon_total,
                  "ratio_of_totals": daemon_total / bare_total,
                  "ratio_median": float(np.median([r["ratio"] for r in rounds])),
                  "cpu_ms_per_tile": cpu_ms,
                  "daemon_tile_p50_ms": {k: float(np.median([r["daemon"]["tile_p50_ms"][k] for r in rounds]))
                                         for k in ("read", "preprocess")}}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("| tiles | batch | rounds | bare runner tiles/s | daemon tiles/s | daemon / bare (totals) | "
          "median per-round ratio | per-round ratios |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {result['tiles']} | {args.batch} | {args.rounds} | {bare_total:.1f} | {daemon_total:.1f} | "
          f"{result['ratio_of_totals']:.3f} | {result['ratio_median']:.3f} | "
          + ", ".join(f"{r['ratio']:.3f}" for r in rounds) + " |")
    cpu, st = result["cpu_ms_per_tile"], result["daemon_tile_p50_ms"]
    print(f"\nCPU ms per tile (process, all threads): bare {cpu['bare']:.1f}, daemon {cpu['daemon']:.1f}; "
          f"daemon p50 per tile: read {st['read']:.1f} ms, preprocess {st['preprocess']:.1f} ms\n")
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
