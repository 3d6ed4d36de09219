"""ONNX Runtime CPU latency (batch 1) and throughput (batch 32) of fp32, TensorRT-style INT8 and CPU INT8.

One run measures the three artefacts of one export side by side, interleaved round-robin so a shared,
noisy machine slows all three alike (compare ratios, not absolute numbers), and puts the accuracy of the
export report next to them::

    python benchmarks/export_int8_cpu.py CHECKPOINT [--out DIR] [--calib-method minmax] [--threads 2] \
        [--results benchmarks/RESULTS.md]

Without ``--reuse`` it first runs the export (``mosaic-edge export --int8``) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path

import numpy as np

SECTION = "Export: ORT CPU latency and accuracy per precision"
MODELS = ("model.onnx", "model.int8.onnx", "model.int8-cpu.onnx")


def _inputs(contract, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)  # normalised inputs are ~N(0, 1) per band; values do not change timing
    shapes = contract.input_shapes()
    return {k: rng.normal(size=(batch, *s[1:])).astype(np.float32) for k, s in shapes.items()}


def measure(out: Path, threads: int, rounds: int, lat_iters: int,
            thr_iters: int) -> dict[str, dict[str, float]]:
    """Median batch-1 latency (ms) and batch-32 throughput (patches/s) of each model, interleaved."""
    from mosaic_edge.export.onnx_export import read_contract
    from mosaic_edge.export.parity import ort_session

    contract = read_contract(out / "model.onnx")
    sessions = {m: ort_session(out / m, threads=threads) for m in MODELS}
    x1, x32 = _inputs(contract, 1), _inputs(contract, 32)
    lat: dict[str, list[float]] = {m: [] for m in MODELS}
    thr: dict[str, list[float]] = {m: [] for m in MODELS}
    for sess in sessions.values():  # warm-up: first runs allocate and pick kernels
        for _ in range(5):
            sess.run(None, x1)
        sess.run(None, x32)
    for _ in range(rounds):
        for m, sess in sessions.items():
            for _ in range(lat_iters):
                t = time.perf_counter()
                sess.run(None, x1)
                lat[m].append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            for _ in range(thr_iters):
                sess.run(None, x32)
            thr[m].append(32 * thr_iters / (time.perf_counter() - t))
    return {m: {"lat_ms_p50": statistics.median(lat[m]), "lat_ms_p90": float(np.percentile(lat[m], 90)),
                "thr_per_s": statistics.median(thr[m])} for m in MODELS}


def table(out: Path, timing: dict[str, dict[str, float]], command: str, threads: int, note: str = "") -> str:
    report = json.loads((out / "report.json").read_text())
    gate = report["gate"]["set"]
    sets = list(report["datasets"])
    base = timing["model.onnx"]
    also = "".join(f" and `{s}` (n={report['datasets'][s]['n']})" for s in sets[1:])
    cpu = platform.processor() or platform.machine()
    lines = [f"Command: `{command}`", "", *([note, ""] if note else []),
             f"Machine: {cpu}, ORT intra-op threads {threads}, shared with other jobs (noisy: compare "
             "ratios). Latency = median of batch-1 runs; throughput = median of batch-32 rounds. Accuracy "
             f"from the export's report.json on `{gate}` (n={report['datasets'][gate]['n']}){also}.", "",
             "| " + " | ".join(["artefact", "target", "bs1 p50 ms", "bs1 p90 ms", "bs1 speed-up",
                                "bs32 patches/s", "bs32 speed-up", f"macro mAP {gate}", "Δ pts", "agreement",
                                *(f"macro mAP {s}" for s in sets[1:])]) + " |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(sets[1:])]
    for m in MODELS:
        row, t = report["datasets"][gate]["artefacts"][m], timing[m]
        extra = [report["datasets"][s]["artefacts"][m]["macro_map"] for s in sets[1:]]
        lines.append(
            f"| {m} | {row['target']} | {t['lat_ms_p50']:.2f} | {t['lat_ms_p90']:.2f} | "
            f"{base['lat_ms_p50'] / t['lat_ms_p50']:.2f}x | {t['thr_per_s']:.0f} | "
            f"{t['thr_per_s'] / base['thr_per_s']:.2f}x | {100 * row['macro_map']:.2f} | "
            f"{row['macro_map_delta_pts']:+.2f} | {100 * row['agreement']:.2f}% |"
            + "".join(" n/a |" if v is None else f" {100 * v:.2f} |" for v in extra))
    return "\n".join(lines) + "\n"


def write_section(results: Path, text: str, append: bool = False) -> None:
    """Replace this benchmark's section of RESULTS.md with ``text`` (``append``: add it to the section's end),
    leaving other sections alone."""
    old = results.read_text() if results.is_file() else "# Benchmark results\n"
    pattern = re.compile(rf"^## {re.escape(SECTION)}\n(.*?)(?=^## |\Z)", re.S | re.M)
    found = pattern.search(old)
    body = (found.group(1).rstrip("\n") + "\n\n" if found and append else "") + text
    section = f"## {SECTION}\n\n{body.lstrip()}\n"
    new = pattern.sub(lambda _: section, old) if found else old.rstrip("\n") + "\n\n" + section
    results.write_text(new)


def main() -> None:
    from mosaic_edge.export.pipeline import ExportConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, default=Path("runs/export-bench"))
    ap.add_argument("--reuse", action="store_true", help="Benchmark the artefacts already in --out.")
    ap.add_argument("--calib-method", default=ExportConfig.calib_method)
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--eval-data", action="append", default=[])
    ap.add_argument("--max-map-drop", type=float, default=1.0)
    ap.add_argument("--eval-limit", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--lat-iters", type=int, default=30)
    ap.add_argument("--thr-iters", type=int, default=4)
    ap.add_argument("--results", type=Path, default=None, help="Write the table into this RESULTS.md.")
    ap.add_argument("--note", default="", help="Line printed above the table.")
    ap.add_argument("--append", action="store_true", help="Add to the RESULTS.md section, do not replace it.")
    args = ap.parse_args()
    if not args.reuse:
        from mosaic_edge.errors import UserError
        from mosaic_edge.export.pipeline import ExportConfig, run_export

        cfg = ExportConfig(int8=True, calib_method=args.calib_method, calib_size=args.calib_size,
                           eval_data=tuple(args.eval_data), max_map_drop_pts=args.max_map_drop,
                           eval_limit=args.eval_limit)
        try:
            run_export(args.checkpoint, args.out, cfg)
        except UserError as exc:  # a failed gate still leaves the models and report.json to benchmark
            print(f"export: {exc}")
    timing = measure(args.out, args.threads, args.rounds, args.lat_iters, args.thr_iters)
    command = "python benchmarks/export_int8_cpu.py " + " ".join(
        [str(args.checkpoint), "--out", str(args.out), "--calib-method", args.calib_method, "--calib-size",
         str(args.calib_size), "--eval-limit", str(args.eval_limit),
         *sum((["--eval-data", e] for e in args.eval_data), []), "--threads",
         str(args.threads), *(["--reuse"] if args.reuse else [])])
    text = table(args.out, timing, command, args.threads, args.note)
    print(text)
    if args.results:
        write_section(args.results, text, append=args.append)


if __name__ == "__main__":
    main()
