"""Cost of the daemon's metrics: the prometheus_client implementation against the hand-written one it replaced.

    git show 9f21a43:edge_runtime/metrics_http.py > /tmp/metrics_legacy.py
    python benchmarks/metrics_overhead.py --legacy /tmp/metrics_legacy.py --rounds 7 [--json OUT]

Per round and implementation (interleaved, so machine load hits both alike): ``inc`` and ``observe`` per call
(what the daemon pays per tile: about 3 increments and 5 observations), ``render`` of a daemon's metrics, and
a full ``GET /metrics`` over HTTP on 127.0.0.1. Medians over rounds and the new/old ratio are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
import urllib.request
from pathlib import Path
from types import ModuleType

from mosaic_edge.edge_runtime import metrics_http


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("metrics_legacy", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def measure(mod: ModuleType, calls: int = 20000, scrapes: int = 100) -> dict[str, float]:
    m = mod.Metrics()
    t0 = time.perf_counter()
    for _ in range(calls):
        m.inc("patches")
    inc_us = (time.perf_counter() - t0) / calls * 1e6
    stages = ("read", "preprocess", "queue", "infer", "write")
    t0 = time.perf_counter()
    for i in range(calls):
        m.observe(stages[i % 5], (i % 100) * 1e-3)
    observe_us = (time.perf_counter() - t0) / calls * 1e6
    t0 = time.perf_counter()
    for _ in range(scrapes):
        text = m.render()
    render_ms = (time.perf_counter() - t0) / scrapes * 1e3
    with mod.MetricsServer(m, 0) as server:
        url = f"http://127.0.0.1:{server.address[1]}/metrics"
        lat = []
        for _ in range(scrapes):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()
            lat.append((time.perf_counter() - t0) * 1e3)
    return {"inc_us": inc_us, "observe_us": observe_us, "render_ms": render_ms,
            "scrape_ms": statistics.median(lat), "exposition_bytes": float(len(text))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--legacy", type=Path, required=True, help="the replaced metrics_http.py")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    impls = {"hand-written": _load(args.legacy), "prometheus_client": metrics_http}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in impls}
    for _ in range(args.rounds):
        for name, mod in impls.items():
            runs[name].append(measure(mod))
    keys = list(runs["prometheus_client"][0])
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    report = {"rounds": args.rounds, "load_average": os.getloadavg(), "median": med,
              "ratio_new_over_old": {k: med["prometheus_client"][k] / med["hand-written"][k] for k in keys}}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**report, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
