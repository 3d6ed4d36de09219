"""Why the band-statistics test uses the plain covariance: shrinking it towards its diagonal hides foreign windows.

Refits the statistics model of an export's calibration set (``calib.npz``, back in raw units) with the
covariance mixed ``(1 - a) * cov + a * diag(cov)`` for each ``a``, sets the threshold as export does (99th
percentile of 5-fold held-out distances) and prints the share of windows flagged per set (SPEC as in
``benchmarks/int8_fallback.py``)::

    python benchmarks/drift_shrinkage.py runs/default/exp-entropy-synth --windows synthetic-test \\
        --windows tests/data/benv2-mini --alpha 0 --alpha 0.01 --alpha 0.1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mosaic_edge.calibration import load_calibration_set
from mosaic_edge.envelope import CALIB_FLAG_RATE, STATS_FOLDS, raw_from_normalised, subsample, window_features
from mosaic_edge.manifest import Manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_fallback import windows  # noqa: E402


def _features(sar: np.ndarray, optical: np.ndarray) -> np.ndarray:
    x, valid = subsample(sar, optical, 4)
    return window_features(x, valid, 2, 12)[0]


def _fit(f: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    cov = np.cov(f, rowvar=False)
    cov = (1 - alpha) * cov + alpha * np.diag(np.diag(cov)) + np.diag(1e-6 * np.diag(cov) + 1e-12)
    return f.mean(axis=0), np.linalg.pinv(cov, hermitian=True)


def _dist(f: np.ndarray, mean: np.ndarray, prec: np.ndarray) -> np.ndarray:
    d = f - mean
    return np.sqrt(np.maximum(((d @ prec) * d).sum(axis=1), 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--windows", action="append", required=True)
    parser.add_argument("--alpha", action="append", type=float, required=True)
    args = parser.parse_args()
    contract = Manifest.load(args.export).contract
    sar, opt = raw_from_normalised(load_calibration_set(args.export / "calib.npz", contract), contract)
    calib = _features(np.nan_to_num(sar, nan=float(np.nanmedian(sar))), np.nan_to_num(opt, nan=0.0))
    sets = {s: _features(*(windows(s, contract, None)[k] for k in ("raw_sar", "raw_optical"))) for s in args.windows}
    print("| shrinkage a | threshold | " + " | ".join(f"flagged: {s}" for s in sets) + " |")
    print("|---:|---:|" + "---:|" * len(sets))
    fold = np.random.default_rng(0).permutation(len(calib)) % STATS_FOLDS
    for alpha in args.alpha:
        held = np.concatenate([_dist(calib[fold == k], *_fit(calib[fold != k], alpha)) for k in range(STATS_FOLDS)])
        thr = float(np.quantile(held, 1 - CALIB_FLAG_RATE))
        model = _fit(calib, alpha)
        rates = [f"{100 * float((_dist(f, *model) > thr).mean()):.1f}%" for f in sets.values()]
        print(f"| {alpha:g} | {thr:.2f} | " + " | ".join(rates) + " |")


if __name__ == "__main__":
    main()
