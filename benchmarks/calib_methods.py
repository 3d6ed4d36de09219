"""Calibration methods side by side: amax of entropy/percentile vs minmax, time, INT8 agreement with fp32.

``python benchmarks/calib_methods.py [--arch tiny] [--checkpoint runs/x/model.pt] [--calib 128] [--eval 128]``

Synthetic data (training split for calibration, test split for evaluation), both through the runtime's
preprocessing. Without ``--checkpoint`` the model is randomly initialised: its agreement numbers say how much
the quantizer perturbs logits, not accuracy. Prints one JSON object per method and a summary table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--eval", type=int, default=128)
    ap.add_argument("--bins", type=int, default=2048)
    args = ap.parse_args()

    import onnxruntime as ort

    from mosaic_edge.calibration import sample_calibration_set
    from mosaic_edge.calibration.quantize import CalibConfig, calibrate, quantize_qdq
    from mosaic_edge.data.base import PatchDataset
    from mosaic_edge.data.sources import contract_for, open_source
    from mosaic_edge.export.onnx_export import export_onnx

    if args.checkpoint:
        from mosaic_edge.train.checkpoint import load_checkpoint

        model, contract = load_checkpoint(args.checkpoint)
    else:
        import torch

        from mosaic_edge.train.models import build_model

        torch.manual_seed(0)
        contract = contract_for("synthetic")
        model = build_model(args.arch, num_classes=contract.num_classes).eval()
    train, test = open_source("synthetic", "train"), open_source("synthetic", "test")
    calib = sample_calibration_set(train, contract, size=args.calib, seed=0)
    ds = PatchDataset(test, contract)
    ev = [ds[i] for i in range(min(args.eval, len(ds)))]
    batch = {k: np.stack([s[k] for s in ev]).astype(np.float32) for k in contract.input_names}
    thr = np.asarray(contract.thresholds, dtype=np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, contract, Path(tmp) / "model.onnx")
        ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(["logits"], batch)[0]
        p_ref = _sigmoid(ref)
        rows, base = [], None
        for method in ("minmax", "entropy", "percentile"):
            t0 = time.perf_counter()
            cal = calibrate(fp32, calib, CalibConfig(method, num_bins=args.bins), symmetric=True)
            t_cal = time.perf_counter() - t0
            q = quantize_qdq(fp32, Path(tmp) / f"{method}.onnx", calib, method, "tensorrt", calibration=cal)
            out = ort.InferenceSession(str(q.path), providers=["CPUExecutionProvider"]).run(
                ["logits"], batch
            )[0]
            p = _sigmoid(out)
            base = base or cal.amax
            ratio = np.array([cal.amax[k] / base[k] for k in base if base[k] > 0])
            rows.append(
                {
                    "method": method,
                    "calib_s": round(t_cal, 2),
                    "tensors": len(cal.amax),
                    "tensors_differing_from_minmax": int(np.sum(~np.isclose(ratio, 1.0, rtol=1e-3))),
                    "median_amax_ratio_vs_minmax": round(float(np.median(ratio)), 4),
                    "input_amax": {k: round(cal.amax[k], 4) for k in contract.input_names},
                    "decision_agreement": round(float(np.mean((p > thr) == (p_ref > thr))), 5),
                    "max_prob_diff": round(float(np.abs(p - p_ref).max()), 5),
                    "max_logit_diff": round(float(np.abs(out - ref).max()), 5),
                }
            )
            print(json.dumps(rows[-1]))
    print(
        f"\narch={args.arch} checkpoint={args.checkpoint} calib={len(calib['sar'])} eval={len(ev)}"
        f" bins={args.bins}"
    )
    print(f"{'method':<11}{'calib_s':>8}{'differ':>8}{'med_ratio':>10}{'agree':>9}{'max_dp':>9}")
    for r in rows:
        print(
            f"{r['method']:<11}{r['calib_s']:>8}{r['tensors_differing_from_minmax']:>8}"
            f"{r['median_amax_ratio_vs_minmax']:>10}{r['decision_agreement']:>9}{r['max_prob_diff']:>9}"
        )


if __name__ == "__main__":
    main()
