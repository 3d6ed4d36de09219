"""Crash/kill benchmark: SIGKILL `mosaic-edge serve --once` at random points, restart, account for every tile.

    python benchmarks/crash_kill.py --tiles 500 --kills 50 [--model DIR_OR_ONNX] [--spool DIR] [--json OUT]

Each round starts the daemon as a subprocess, waits until a random number of further tiles is done (plus a
random few milliseconds, so kills land anywhere in read / infer / write / move), and SIGKILLs it. After the
kills a last run drains the spool. Then every tile must have exactly one results file holding exactly one
record set for its input (matching SHA-256), be in done/, and nothing may be left in incoming/ or failed/.
``committed_not_moved`` counts, after each kill, tiles whose results were on disk while the input was still in
incoming/ (the crash window the restart must repair without a duplicate). The test suite runs the same harness
with a few kills (tests/edge_runtime/test_crash.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mosaic_edge.tile_format import write_tile

REPO = Path(__file__).resolve().parents[1]


def write_tiles(incoming: Path, n: int, patch: int, seed: int = 0) -> None:
    """``n`` single-patch ``.npz`` tiles (``write_tile`` writes under a dot-name and renames in)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_tile(incoming / f"k{i:05d}.npz", rng.normal(-15, 4, (2, patch, patch)).astype(np.float32),
                   rng.uniform(100, 4000, (12, patch, patch)).astype(np.uint16))


def serve_cmd(model: Path, spool: Path, precision: str | None = None) -> list[str]:
    return [sys.executable, "-m", "mosaic_edge", "serve", "--model", str(model), "--spool", str(spool),
            "--runner", "ort", "--once", "--settle-s", "0", "--poll-s", "0.05", "--threads", "1",
            "--batch", "8", "--max-wait-ms", "5", "--log-level", "warning",
            *(["--precision", precision] if precision else [])]


def _count(folder: Path) -> int:
    return sum(1 for n in os.listdir(folder) if not n.startswith("."))


def kill_rounds(model: Path, spool: Path, kills: int, rng: random.Random, max_step: int,
                round_timeout: float = 60.0, max_delay_s: float = 0.005, precision: str | None = None) -> list[dict]:
    """Start and SIGKILL the daemon ``kills`` times; return one dict per round."""
    rounds = []
    for k in range(kills):
        done0 = _count(spool / "done") if (spool / "done").is_dir() else 0
        target = done0 + rng.randint(1, max_step)
        proc = subprocess.Popen(serve_cmd(model, spool, precision), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        t0 = time.time()
        while proc.poll() is None and time.time() - t0 < round_timeout:
            if (spool / "done").is_dir() and _count(spool / "done") >= target:
                time.sleep(rng.uniform(0, max_delay_s))
                break
            time.sleep(0.005)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        incoming = {n.removesuffix(".npz") for n in os.listdir(spool / "incoming")}
        committed = {p.stem for p in (spool / "results").glob("*.jsonl")}
        rounds.append({"round": k, "killed": killed, "done_before": done0,
                       "done_after": _count(spool / "done"), "committed_not_moved": len(incoming & committed),
                       "seconds": round(time.time() - t0, 2)})
        if not killed:  # the spool drained before the kill point
            break
    return rounds


def audit(spool: Path, n: int) -> dict:
    """Check exactly-once; return counts (``ok`` says whether every check held)."""
    done = sorted(n for n in os.listdir(spool / "done") if not n.startswith("."))
    results = sorted((spool / "results").glob("*.jsonl"))
    leftovers = sorted(os.listdir(spool / "incoming"))
    failed = sorted(os.listdir(spool / "failed"))
    temp = sorted(p.name for p in (spool / "results").iterdir() if p.name.startswith("."))
    bad_records, hash_mismatch = [], []
    for p in results:
        lines = p.read_text().splitlines()
        summary, *recs = [json.loads(line) for line in lines]  # the tile summary, then one record per window
        if (summary.get("type") != "tile" or summary["tile"] != p.stem or summary["windows"] != 1
                or summary["input_sha256"] != (recs[0]["input_sha256"] if recs else None)
                or len(recs) != 1 or recs[0]["tile"] != p.stem or recs[0]["patch"] != 0):
            bad_records.append(p.name)
            continue
        inp = spool / "done" / f"{p.stem}.npz"
        if inp.is_file():
            h = hashlib.sha256(inp.name.encode() + b"\0" + inp.read_bytes()).hexdigest()
            if h != recs[0]["input_sha256"]:
                hash_mismatch.append(p.name)
    ids = {f"k{i:05d}" for i in range(n)}
    lost = sorted(ids - {p.stem for p in results})
    out = {"tiles": n, "results": len(results), "done": len(done), "incoming_left": len(leftovers),
           "failed": len(failed), "temp_files": len(temp), "bad_records": len(bad_records),
           "hash_mismatch": len(hash_mismatch), "lost": len(lost),
           "unexpected": len({p.stem for p in results} - ids)}
    out["ok"] = (out["results"] == out["done"] == n and not leftovers and not failed and not temp
                 and not bad_records and not hash_mismatch and not lost and not out["unexpected"])
    return out


def run(model: Path, spool: Path, tiles: int, kills: int, seed: int = 0, patch: int = 16,
        precision: str | None = None) -> dict:
    rng = random.Random(seed)
    write_tiles(spool / "incoming", tiles, patch, seed)
    t0 = time.time()
    # Kill after 1..max_step further tiles plus up to 5 ms (a few more tiles: results are committed in groups),
    # so the kills are spread over the whole spool and all of them happen before it drains.
    rounds = kill_rounds(model, spool, kills, rng, max_step=max(2, tiles // (2 * kills)), precision=precision)
    final = subprocess.run(serve_cmd(model, spool, precision), capture_output=True, text=True, timeout=600)
    report = audit(spool, tiles)
    report.update({"kills": sum(r["killed"] for r in rounds), "final_exit": final.returncode,
                   "committed_not_moved": sum(r["committed_not_moved"] for r in rounds),
                   "seconds": round(time.time() - t0, 1), "rounds": rounds})
    report["ok"] = report["ok"] and final.returncode == 0
    return report


def _default_model(workdir: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.support.runtime import tiny_contract, write_tiny_onnx  # the test suite's tiny ONNX model

    return write_tiny_onnx(workdir / "tiny.onnx", tiny_contract())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=500)
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--model", type=Path, default=None, help="default: the tests' tiny ONNX model (16 px)")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--spool", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default=None, help="serve this precision (int8: with the fallback)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="crash_kill-"))
    model = args.model or _default_model(work)
    report = run(model, args.spool or work / "spool", args.tiles, args.kills, args.seed, args.patch,
                 args.precision)
    summary = {k: v for k, v in report.items() if k != "rounds"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
