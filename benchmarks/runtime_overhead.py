"""Benchmark: the daemon's sustained tiles/s over a spool vs the bare runner on the same windows.

    python benchmarks/runtime_overhead.py [--model EXPORT_DIR | --arch resnet18] --tile-size 120 --tiles 1000
        --batch 8 --threads 2 --max-wait-ms 5 --rounds 4 [--json OUT]

In each of ``--rounds`` rounds (bare and daemon alternate, so drift in a shared machine's load hits both
sides alike):

1. Writes ``--tiles / --rounds`` synthetic ``.npz`` tiles of ``--tile-size`` px (S1 float32 dB, S2 uint16)
   into a fresh spool's ``incoming/`` (``--format geotiff`` / ``benv2``: 120 px folder tiles instead).
2. Records the windows the daemon hands its runner: the same daemon code drains a copy of the spool with
   ``null_runner.NullRunner(record=True)`` (the runner's contract, so the windows are in its input form).
3. Bare runner: those windows, ``--batch`` at a time, through ``runner.infer`` only -- the same runner object
   as the daemon's (ONNX Runtime threads not spinning, the runner's default), and a second session whose
   threads spin between calls (ONNX Runtime's own default); the faster of the two is the baseline.
4. Daemon: ``Daemon(runner, spool, ServeConfig(batch, once=True, settle_s=0, max_wait_ms))`` on the tiles;
   wall time of ``run()`` with the runner already active (start-up is not counted).

Prints tiles/s of each side, the ratio daemon/bare of the totals and the median of the per-round ratios
(target >= 0.75 for the default export on 120 px tiles, >= 0.95 for resnet18), the process CPU ms per tile of
each side, and the load average before and after. Without ``--model`` a demo export is made:
``build_model(--arch)`` with random weights (timings do not depend on the weights) exported to ONNX with the
export stage's raw-input prologue (``--input-form``) and a manifest; this needs the ``train`` and ``export``
extras, the runtime itself never imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from null_runner import NullRunner  # noqa: E402 - sibling script, not a package


def demo_export(out: Path, arch: str, patch: int = 120, input_form: str = "raw") -> Path:
    """Export ``build_model(arch)`` (random weights) to ``out/model.onnx`` with a manifest; return ``out``."""
    import torch

    from mosaic_edge.contract import Contract
    from mosaic_edge.export.onnx_export import export_onnx
    from mosaic_edge.export.raw_inputs import finish_inputs
    from mosaic_edge.manifest import Manifest
    from mosaic_edge.train.models import build_model

    torch.manual_seed(0)
    contract = Contract(patch_size=patch, model_name=arch)
    export_onnx(build_model(arch).eval(), contract, out / "model.onnx")
    manifest = Manifest.create(contract, out).with_artefact("model.onnx", "fp32", "any")
    finish_inputs(manifest, input_form).save()
    return out


def resolve_model(model: str | None, arch: str, scratch: Path, input_form: str = "raw") -> Path:
    if model:
        return Path(model)
    return demo_export(scratch / f"demo-{arch}", arch, input_form=input_form)


def fill_spool(spool_root: Path, size: int, n: int, seed: int = 0, kind: str = "npz") -> list[Path]:
    """``n`` synthetic ``size`` px ``.npz`` tiles in ``spool_root/incoming`` (other formats: ``host_cost``'s
    120 px tiles)."""
    from mosaic_edge.tile_format import write_tile

    if kind != "npz":
        from host_cost import write_format

        return write_format(kind, spool_root / "incoming", n, seed)
    rng = np.random.default_rng(seed)
    incoming = spool_root / "incoming"
    return [write_tile(incoming / f"t{seed:02d}-{i:05d}.npz", rng.normal(-15.0, 5.0, (2, size, size)).astype(
        np.float32), rng.integers(1, 5000, (12, size, size), dtype=np.uint16)) for i in range(n)]


def _quiet_daemon(runner, spool_root: Path, batch: int, max_wait_ms: float, **config):
    from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig
    from mosaic_edge.edge_runtime.logs import get_logger

    get_logger().disabled = True  # one log line per tile would measure the terminal, not the runtime
    return Daemon(runner, spool_root, ServeConfig(batch=batch, once=True, settle_s=0.0, max_wait_ms=max_wait_ms,
                                                  **config))


def recorded_windows(contract, spool_root: Path, scratch: Path, batch: int, max_wait_ms: float
                     ) -> dict[str, np.ndarray]:
    """Every window the daemon would infer for the tiles in ``spool_root``, in the contract's input form."""
    copy = scratch / "recording"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(spool_root / "incoming", copy / "incoming")
    recorder = NullRunner(contract, record=True)
    if _quiet_daemon(recorder, copy, batch, max_wait_ms).run() != 0:
        raise SystemExit("recording run failed")
    shutil.rmtree(copy, ignore_errors=True)
    return {k: np.concatenate([b[k] for b in recorder.batches]) for k in contract.input_names}


def bare_runner_rate(runner, windows: dict[str, np.ndarray], batch: int, tiles: int) -> dict:
    """tiles/s of ``runner.infer`` alone over ``windows``, ``batch`` at a time."""
    n = len(next(iter(windows.values())))
    runner.infer({k: v[:batch] for k, v in windows.items()})  # warm: first-call allocations
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, n, batch):
        runner.infer({k: v[i:i + batch] for k, v in windows.items()})
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    return {"tiles": tiles, "windows": n, "seconds": seconds, "cpu_s": cpu_s, "tiles_s": tiles / seconds}


class ThreadCpu:
    """CPU seconds per thread of this process while it runs, by thread name (Linux ``/proc/self/task``).

    A sampler thread reads every thread's ``utime + stime`` every ``period`` seconds, so threads that end before
    :meth:`stop` are counted up to their last sample; threads without a Python name (ONNX Runtime's pool) are
    "native", numbered pool threads ("result-write_3") are summed under their prefix.
    """

    def __init__(self, period: float = 0.02):
        self.period, self._tick = period, os.sysconf("SC_CLK_TCK")
        self._first: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self._names: dict[str, str] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="thread-cpu-sampler", daemon=True)

    def _read(self) -> dict[str, int]:
        ticks = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            ticks[tid] = int(fields[11]) + int(fields[12])
        return ticks

    def _sample(self) -> None:
        while not self._done.wait(self.period):
            self._names.update({str(t.native_id): t.name for t in threading.enumerate()})
            self._last.update(self._read())

    def start(self) -> ThreadCpu:
        self._names.update({str(t.native_id): t.name for t in threading.enumerate()})
        self._first = self._read()
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        self._last.update(self._read())
        out: dict[str, float] = {}
        for tid, ticks in self._last.items():
            name = self._names.get(tid, "native")
            if name == self._thread.name:
                continue
            label = re.sub(r"_\d+$", "", name)
            out[label] = out.get(label, 0.0) + (ticks - self._first.get(tid, 0)) / self._tick
        return out


def daemon_rate(runner, spool_root: Path, batch: int, n_tiles: int, max_wait_ms: float,
                thread_cpu: bool = False, **config) -> dict:
    """tiles/s of the daemon draining ``spool_root/incoming`` (``once`` mode, runner already active); with
    ``thread_cpu`` also CPU seconds per thread name (:class:`ThreadCpu`)."""
    daemon = _quiet_daemon(runner, spool_root, batch, max_wait_ms, **config)
    sampler = ThreadCpu().start() if thread_cpu else None
    t0, cpu0 = time.perf_counter(), time.process_time()
    code = daemon.run()
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    threads = sampler.stop() if sampler else None
    results = sorted((spool_root / "results").glob("*.jsonl"))
    if code != 0 or len(results) != n_tiles:
        raise SystemExit(f"daemon exit {code}: {len(results)} results of {n_tiles} tiles")
    out = {"tiles": len(results), "seconds": seconds, "cpu_s": cpu_s, "tiles_s": len(results) / seconds}
    if threads is not None:
        out["thread_cpu_s"] = threads
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="export directory or .onnx (default: demo export of --arch)")
    ap.add_argument("--arch", default="resnet18", help="encoder of the demo export")
    ap.add_argument("--input-form", default="raw", help="of the demo export: raw or standardised")
    ap.add_argument("--tile-size", type=int, default=120, help="tile side in pixels (.npz tiles)")
    ap.add_argument("--format", default="npz", help="npz, geotiff or benv2 (host_cost.py's tile formats)")
    ap.add_argument("--tiles", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--serve", action="append", default=[], metavar="KEY=INT",
                    help="ServeConfig field of the daemon, e.g. readers=2 (repeatable)")
    ap.add_argument("--thread-cpu", action="store_true",
                    help="also print the daemon's CPU ms per tile per thread (Linux /proc/self/task)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)

    from mosaic_edge.edge_runtime.runner import open_runner

    serve = {k: int(v) for k, v in (item.split("=", 1) for item in args.serve)}
    load0 = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="mosaic-overhead-"))
    per_round = args.tiles // args.rounds
    rounds = []
    try:
        model = resolve_model(args.model, args.arch, scratch, args.input_form)
        runner = open_runner(model, kind="ort", device="cpu", threads=args.threads)
        spinning = open_runner(model, kind="ort", device="cpu", threads=args.threads, spin=True)
        with spinning:
            for r in range(args.rounds):
                spool = scratch / f"spool-{r}"
                fill_spool(spool, args.tile_size, per_round, seed=r, kind=args.format)
                windows = recorded_windows(runner.contract, spool, scratch, args.batch, args.max_wait_ms)
                runner.activate()  # the daemon deactivates its runner when it exits
                bare = bare_runner_rate(runner, windows, args.batch, per_round)
                bare_spin = bare_runner_rate(spinning, windows, args.batch, per_round)
                daemon = daemon_rate(runner, spool, args.batch, per_round, args.max_wait_ms, args.thread_cpu,
                                     **serve)
                best = max(bare["tiles_s"], bare_spin["tiles_s"])
                rounds.append({"bare": bare, "bare_spin": bare_spin, "daemon": daemon,
                               "ratio": daemon["tiles_s"] / best})
                shutil.rmtree(spool, ignore_errors=True)
        total = {side: sum(r[side]["tiles"] for r in rounds) / sum(r[side]["seconds"] for r in rounds)
                 for side in ("bare", "bare_spin", "daemon")}
        cpu_ms = {side: 1e3 * sum(r[side]["cpu_s"] for r in rounds) / sum(r[side]["tiles"] for r in rounds)
                  for side in ("bare", "bare_spin", "daemon")}
        best = max(total["bare"], total["bare_spin"])
        result = {"model": str(args.model or f"demo {args.arch} ({args.input_form})"),
                  "artefact_sha256": runner.model_hash, "input_form": runner.contract.input_form,
                  "tile_size": args.tile_size, "format": args.format,
                  "windows_per_tile": rounds[0]["bare"]["windows"] / rounds[0]["bare"]["tiles"],
                  "batch": args.batch, "threads": runner.threads, "serve": serve, "tiles": per_round * args.rounds,
                  "rounds": rounds, "tiles_s": total, "ratio_of_totals": total["daemon"] / best,
                  "ratio_median": float(np.median([r["ratio"] for r in rounds])), "cpu_ms_per_tile": cpu_ms,
                  "load_average": [load0, os.getloadavg()]}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"load average {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}; {result['windows_per_tile']:g} windows per "
          f"tile; {runner.contract.input_form} inputs; ORT threads {runner.threads}")
    print("| tiles | batch | bare tiles/s (spinning) | daemon tiles/s | daemon / bare (totals) | "
          "median per-round ratio | per-round ratios | CPU ms/tile bare / daemon |")
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    print(f"| {result['tiles']} | {args.batch} | {total['bare']:.1f} ({total['bare_spin']:.1f}) | "
          f"{total['daemon']:.1f} | {result['ratio_of_totals']:.3f} | {result['ratio_median']:.3f} | "
          + ", ".join(f"{r['ratio']:.3f}" for r in rounds)
          + f" | {cpu_ms['bare']:.2f} / {cpu_ms['daemon']:.2f} |")
    if args.thread_cpu:
        split: dict[str, float] = {}
        for r in rounds:
            for name, sec in r["daemon"]["thread_cpu_s"].items():
                split[name] = split.get(name, 0.0) + sec
        done = sum(r["daemon"]["tiles"] for r in rounds)
        result["daemon_thread_cpu_ms_per_tile"] = {k: 1e3 * v / done for k, v in split.items()}
        print("daemon CPU ms per tile by thread: " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(result["daemon_thread_cpu_ms_per_tile"].items(), key=lambda kv: -kv[1])))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
