"""Soak benchmark: stream 10,000 tiles through `mosaic-edge serve` on CPU and watch for leaks.

    python benchmarks/soak.py --tiles 10000 [--model DIR_OR_ONNX] [--out benchmarks/results/soak]

A producer writes small tiles into ``incoming/`` (dot-name + rename, keeping at most ``--backlog`` waiting)
and, acting as the downstream consumer, deletes inputs from ``done/`` and their results once they are
complete. Every ``--sample-s`` seconds it records the daemon's RSS (VmRSS), open file descriptors
(/proc/PID/fd) and thread count (/proc/PID/status) against the number of tiles done. Growth is measured after
warm-up (the first ``--warmup`` fraction of tiles): mean of the last 10% of samples vs the mean of the first
10% after warm-up; the pass criterion is < 5% for each. Writes ``soak.json`` (samples + summary) and
``soak.png`` (the curves).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mosaic_edge.tile_format import write_tile

REPO = Path(__file__).resolve().parents[1]


def proc_stats(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def growth(samples: list[dict], key: str, warm_tiles: int) -> dict[str, float]:
    after = [s for s in samples if s["done"] >= warm_tiles]
    k = max(1, len(after) // 10)
    base = float(np.mean([s[key] for s in after[:k]]))
    end = float(np.mean([s[key] for s in after[-k:]]))
    return {"after_warmup": round(base, 2), "end": round(end, 2),
            "growth_pct": round(100.0 * (end - base) / base, 2) if base else 0.0}


def plot(samples: list[dict], warm_tiles: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    x = [s["done"] for s in samples]
    for ax, key, label in zip(axes, ("rss_mb", "fds", "threads"),
                              ("RSS (MiB)", "open file descriptors", "threads"), strict=True):
        ax.plot(x, [s[key] for s in samples], lw=1)
        ax.axvline(warm_tiles, color="grey", ls="--", lw=0.8)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    axes[-1].set_xlabel("tiles done (dashed: end of warm-up)")
    fig.suptitle("mosaic-edge serve soak (CPU, ONNX Runtime)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def soak(model: Path, spool: Path, tiles: int, backlog: int, sample_s: float, warmup: float,
         patch: int, port: int) -> dict:
    inc, done, results = (spool / d for d in ("incoming", "done", "results"))
    cmd = [sys.executable, "-m", "mosaic_edge", "serve", "--model", str(model), "--spool", str(spool),
           "--runner", "ort", "--settle-s", "0", "--threads", "1", "--batch", "8", "--max-wait-ms", "10",
           "--metrics-port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rng = np.random.default_rng(0)
    written = finished = 0
    samples: list[dict] = []
    t0 = last = time.time()
    try:
        while not inc.is_dir():
            time.sleep(0.05)
        while finished < tiles:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode}")
            waiting = sum(1 for n in os.listdir(inc) if not n.startswith("."))
            while written < tiles and waiting < backlog:
                write_tile(inc / f"s{written:06d}.npz", rng.normal(-15, 4, (2, patch, patch)).astype(np.float32),
                           rng.uniform(100, 4000, (12, patch, patch)).astype(np.uint16))
                written += 1
                waiting += 1
            for name in os.listdir(done):  # the downstream consumer takes finished tiles away
                tid = name.removesuffix(".npz")
                (results / f"{tid}.jsonl").unlink()
                (done / name).unlink()
                finished += 1
            if time.time() - last >= sample_s:
                last = time.time()
                samples.append({"t": round(last - t0, 2), "done": finished, **proc_stats(proc.pid)})
            time.sleep(0.01)
        samples.append({"t": round(time.time() - t0, 2), "done": finished, **proc_stats(proc.pid)})
    finally:
        proc.terminate()
        code = proc.wait(60)
    failed = len(os.listdir(spool / "failed"))
    warm = int(warmup * tiles)
    summary = {"tiles": tiles, "failed": failed, "seconds": round(time.time() - t0, 1),
               "tiles_per_s": round(tiles / (time.time() - t0), 1), "exit_code_after_sigterm": code,
               "warmup_tiles": warm, "samples": len(samples),
               **{k: growth(samples, k, warm) for k in ("rss_mb", "fds", "threads")}}
    summary["ok"] = (failed == 0 and code == 0
                     and all(summary[k]["growth_pct"] < 5.0 for k in ("rss_mb", "fds", "threads")))
    return {"summary": summary, "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=10_000)
    ap.add_argument("--model", type=Path, default=None, help="default: the tests' tiny ONNX model (16 px)")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--backlog", type=int, default=32)
    ap.add_argument("--sample-s", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of tiles treated as warm-up")
    ap.add_argument("--port", type=int, default=9108)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    model = args.model
    if model is None:
        sys.path.insert(0, str(REPO))
        from tests.support.runtime import tiny_contract, write_tiny_onnx

        model = write_tiny_onnx(work / "tiny.onnx", tiny_contract(args.patch))
    report = soak(model, work / "spool", args.tiles, args.backlog, args.sample_s, args.warmup, args.patch,
                  args.port)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=1))
    plot(report["samples"], report["summary"]["warmup_tiles"], args.out / "soak.png")
    print(json.dumps(report["summary"], indent=2))
    sys.exit(0 if report["summary"]["ok"] else 1)


if __name__ == "__main__":
    main()
