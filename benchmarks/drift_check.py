"""Cost of the drift check (:meth:`mosaic_edge.envelope.Envelope.check`) per tile, against the tile's host budget.

A 120 x 120 px, 14-band tile has a host budget of ~1 ms on the device (read, verify, prepare, write); the drift
check may take <= 5 % of it, ~50 us. Measured here on the windows of one tile as the runtime would hold them:
one 120 px window (a BigEarthNet-size model) and the 9 windows of 48 px (the default model), uint16 optical as
delivered and float32 optical (bands resampled from 20/60 m), with and without the band-statistics test.
Median of interleaved timed calls after warm-up::

    python benchmarks/drift_check.py [--calls 3000]

With ``--export DIR --windows SPEC ...`` it instead reports how many windows the envelope of an export flags,
by the quantile test alone and with the band-statistics test (SPEC as in ``benchmarks/int8_fallback.py``)::

    python benchmarks/drift_check.py --export runs/default/exp-entropy-synth --windows synthetic-test \
        --windows tests/data/benv2-mini
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.envelope import DRIFT_STRIDE, build_envelope


def flag_rates(export: str, specs: list[str]) -> None:
    """Share of windows flagged by the quantile test alone and by the whole check, per set of windows."""
    import sys
    from pathlib import Path

    from mosaic_edge.manifest import Manifest

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from int8_fallback import windows

    manifest = Manifest.load(export)
    env = manifest.envelope
    if env is None:
        raise SystemExit(f"{export}: no calibration envelope in its manifest")
    print(f"envelope of {export}: {env.n_windows} windows, quantile threshold {env.threshold:.3f}, "
          f"distance threshold {env.stats.threshold if env.stats else float('nan'):.2f}")
    print("| windows | n | flagged by quantiles | flagged by band statistics | drifted |")
    print("|---|---:|---:|---:|---:|")
    for spec in specs:
        d = windows(spec, manifest.contract, None)
        res = env.check(d["raw_sar"], d["raw_optical"])
        quant = res.combined > env.threshold
        by_stats = res.drifted & ~quant  # flagged by the band statistics only
        print(f"| {spec} | {len(quant)} | {100 * quant.mean():.1f}% | +{100 * by_stats.mean():.1f}% | "
              f"{100 * res.drifted.mean():.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--export", help="report flag rates of this export's envelope instead of timing")
    parser.add_argument("--windows", action="append", default=[])
    args = parser.parse_args()
    if args.export:
        flag_rates(args.export, args.windows)
        return
    rng = np.random.default_rng(0)
    contract = Contract()
    env = build_envelope(rng.normal(-15, 4, (128, 2, 48, 48)).astype(np.float32),
                         rng.uniform(100, 4000, (128, 12, 48, 48)).astype(np.float32), contract)
    cases = {}
    for patch, n in ((120, 1), (48, 9)):
        sar = rng.normal(-15, 4, (n, 2, patch, patch)).astype(np.float32)
        opt = rng.uniform(100, 4000, (n, 12, patch, patch)).astype(np.uint16)
        for dtype in ("uint16", "float32"):
            for stats in (True, False):
                e = env if stats else env.replace(stats=None)
                cases[(patch, n, dtype, stats)] = (e, sar, opt.astype(dtype))
    times: dict[tuple, list[float]] = {k: [] for k in cases}
    for e, sar, opt in cases.values():
        for _ in range(50):
            e.check(sar, opt)
    for _ in range(args.calls):
        for key, (e, sar, opt) in cases.items():
            t = time.perf_counter()
            e.check(sar, opt)
            times[key].append(time.perf_counter() - t)
    print(f"numpy {np.__version__}, {platform.processor() or platform.machine()}, stride {DRIFT_STRIDE}")
    print("| windows per tile | optical dtype | test | median us per tile | % of a 1 ms tile budget |")
    print("|---|---|---|---:|---:|")
    for (patch, n, dtype, stats), ts in times.items():
        med = 1e6 * statistics.median(ts)
        what = "quantiles + band statistics" if stats else "quantiles only"
        print(f"| {n} x {patch} px | {dtype} | {what} | {med:.0f} | {med / 10:.1f} |")


if __name__ == "__main__":
    main()
