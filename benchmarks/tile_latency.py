"""Benchmark: end-to-end latency of one tile through the daemon, from file-ready to result-written.

    python benchmarks/tile_latency.py --tiles 200 --batch 8 --max-wait-ms 50 [--model EXPORT_DIR] [--arch ...]

The daemon (:class:`~mosaic_edge.edge_runtime.daemon.Daemon`, the code behind ``mosaic-edge serve``) runs in
the main thread on a fresh spool; a second thread drops one patch-sized ``.npz`` tile at a time into
``incoming/``, then its ``<name>.ready`` marker — that instant is "file ready" — and waits until
``results/<tile>.jsonl`` exists (it appears by atomic rename, so existing means written and fsynced). One tile
in flight at a time, so this is latency, not queueing. ``--warmup`` tiles are dropped first and not counted.
The daemon batches up to ``--batch`` patches or ``--max-wait-ms``, whichever first, so a lone tile waits up to
``--max-wait-ms``: run with ``--batch 1`` to see latency without the batching window.

Percentiles come from :func:`mosaic_edge.edge_runtime.profiling.summarize` (the profile's measurement path).
The medians of the per-tile stage times the daemon records in every result (read, verify, prepare, cut,
queue, infer) are printed beside them; the rest of a tile's latency is noticing the marker and writing the
result (temp file, fsync, rename). The demo export takes raw inputs unless ``--input-form standardised``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from mosaic_edge.tile_format import write_tile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_overhead import resolve_model  # noqa: E402 - sibling script, not a package


def drop_tiles(incoming: Path, results: Path, patch: int, n: int, warmup: int, latencies: list[float],
               stop, timings: list[dict], timeout_s: float = 60.0) -> None:
    """Drop tiles one by one, appending each one's file-ready -> result-written time (ms) to ``latencies``."""
    rng = np.random.default_rng(0)
    try:
        for i in range(warmup + n):
            name = f"lat-{i:05d}"
            sar = rng.normal(-15.0, 5.0, size=(2, patch, patch)).astype(np.float32)
            optical = rng.integers(1, 5000, size=(12, patch, patch), dtype=np.uint16)
            write_tile(incoming / f"{name}.npz", sar, optical)
            (incoming / f"{name}.npz.ready").touch()
            t0 = time.perf_counter()
            result = results / f"{name}.jsonl"
            while not result.exists():
                if time.perf_counter() - t0 > timeout_s:
                    raise TimeoutError(f"no result for {name} after {timeout_s} s")
                time.sleep(0.0002)
            if i >= warmup:
                latencies.append((time.perf_counter() - t0) * 1e3)
                timings.append(json.loads(result.read_text().splitlines()[0])["timings_ms"])
    finally:
        stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="export directory or .onnx (default: demo export of --arch)")
    ap.add_argument("--arch", default="resnet18_narrow", help="encoder of the demo export")
    ap.add_argument("--tiles", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=50.0)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--input-form", default="raw", help="of the demo export: raw or standardised")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)

    from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig
    from mosaic_edge.edge_runtime.logs import get_logger
    from mosaic_edge.edge_runtime.profiling import summarize
    from mosaic_edge.edge_runtime.runner import open_runner

    get_logger().disabled = True
    scratch = Path(tempfile.mkdtemp(prefix="mosaic-latency-"))
    latencies: list[float] = []
    timings: list[dict] = []
    load0 = os.getloadavg()
    try:
        model = resolve_model(args.model, args.arch, scratch, args.input_form)
        runner = open_runner(model, kind="ort", device="cpu", threads=args.threads)
        daemon = Daemon(runner, scratch / "spool", ServeConfig(batch=args.batch, max_wait_ms=args.max_wait_ms,
                                                               settle_s=5.0, poll_s=0.5))
        spool = daemon.spool
        dropper = threading.Thread(target=drop_tiles, daemon=True, args=(
            spool.incoming, spool.results, runner.contract.patch_size, args.tiles, args.warmup, latencies,
            daemon.stop, timings))
        dropper.start()
        code = daemon.run()
        dropper.join()
        inotify = "inotify" if _inotify() else "polling every 0.5 s"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if code != 0 or len(latencies) != args.tiles:
        raise SystemExit(f"daemon exit {code}; {len(latencies)} of {args.tiles} tiles measured")
    stats = summarize(latencies)
    stages = {k: float(np.median([t.get(k, 0.0) for t in timings])) for k in timings[0]}
    result = {"model": str(args.model or f"demo {args.arch} ({args.input_form})"),
              "artefact_sha256": runner.model_hash, "input_form": runner.contract.input_form,
              "batch": args.batch, "max_wait_ms": args.max_wait_ms, "tiles": args.tiles, "watch": inotify,
              "latency_ms": stats, "stage_p50_ms": stages, "load_average": [load0, os.getloadavg()]}
    print(f"load average {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}; {runner.contract.input_form} inputs")
    print("| tiles | batch | max wait ms | watch | p50 ms | p90 ms | p99 ms | mean ms | stage p50 ms |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---|")
    print(f"| {args.tiles} | {args.batch} | {args.max_wait_ms:g} | {inotify} | {stats['p50_ms']:.1f} | "
          f"{stats['p90_ms']:.1f} | {stats['p99_ms']:.1f} | {stats['mean_ms']:.1f} | "
          + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()) + " |")
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _inotify() -> bool:
    from mosaic_edge.optional import available

    return available("inotify_simple")


if __name__ == "__main__":
    sys.exit(main())
