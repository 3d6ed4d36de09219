"""The one GPU check script: every check that needs a CUDA GPU, one result format, one short table.

    python scripts/gpu_check.py [--export runs/m1/export] [--only tensorrt ...]

The checks live in :mod:`scripts.gpu_checks` (outside the library): training steps with AMP, the training paths
(packed-store loader, bf16, channels_last, torch.compile, fine-tune, probe), both CUDA
adapters, the torch CUDA-graph device-time reference of the profile, and TensorRT fp16 vs INT8 engines built from
an export. Each returns rows ``{"check", "status": ok|fail|skip, <numbers>}``; this script times the checks,
prints the rows as a table (and as JSON on stderr) and exits 1 when a row failed. Without a GPU every check
reports ``skip`` and the script exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

CHECKS = ("train", "train_paths", "cuda_adapters", "profile", "tensorrt")
ROOT = Path(__file__).resolve().parents[1]


def run_checks(names: tuple[str, ...] = CHECKS, export: Path | None = None) -> list[dict[str, Any]]:
    """Run the named checks; a check that raises becomes one ``fail`` row."""
    if str(ROOT) not in sys.path:  # run as a file: make `scripts.gpu_checks` importable
        sys.path.insert(0, str(ROOT))
    checks = importlib.import_module("scripts.gpu_checks")
    rows: list[dict[str, Any]] = []
    for name in names:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"scripts.gpu_checks.{name}")
            result = module.run(export=export) if name == "tensorrt" else module.run()
        except Exception as exc:  # noqa: BLE001 - report every check, then fail at the end
            traceback.print_exc()
            result = [checks.fail(name, exc)]
        for r in result:
            rows.append({**r, "wall_s": round(time.perf_counter() - t0, 1)})
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    """check | status | the row's other fields as ``key=value``."""
    width = max([len("check")] + [len(r["check"]) for r in rows])
    lines = [f"{'check'.ljust(width)} | status | details", f"{'-' * width}-+--------+--------"]
    for r in rows:
        rest = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("check", "status"))
        lines.append(f"{r['check'].ljust(width)} | {r['status']:<6} | {rest}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="export directory for the TensorRT check (default: made)")
    parser.add_argument("--only", nargs="+", choices=CHECKS, help="run only these checks")
    args = parser.parse_args(argv)
    rows = run_checks(tuple(args.only or CHECKS), args.export)
    print(render(rows))
    print(json.dumps(rows, default=str), file=sys.stderr)
    return 1 if any(r["status"] == "fail" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
