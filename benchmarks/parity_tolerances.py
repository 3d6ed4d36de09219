"""The measurements behind the parity tolerances of :mod:`mosaic_edge.export.parity`.

For each checkpoint: export fp32 and fp16 ONNX, run them and torch on the checkpoint's own validation + test
data (up to ``--limit`` patches) and on the real BigEarthNet sample, and print per precision: the largest
absolute logit difference, the largest difference relative to the sample's largest |logit| (what ``logit_rtol``
bounds), the excess over the tolerance in force (<= 1 passes), the largest probability difference and the share
of decisions that differ::

    python benchmarks/parity_tolerances.py runs/default/model.pt runs/real/model.pt [--limit 256]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from mosaic_edge.contract import sigmoid
from mosaic_edge.data.sources import DataSpec


def _samples(checkpoint: Path, limit: int) -> dict:
    from mosaic_edge.export.eval_sets import EVAL_SPLITS, open_splits
    from mosaic_edge.export.parity import collect_samples
    from mosaic_edge.export.pipeline import export_data
    from mosaic_edge.train.checkpoint import load_checkpoint, read_checkpoint

    model, contract = load_checkpoint(checkpoint)
    data = export_data(read_checkpoint(checkpoint).get("extra") or {}, contract, None)
    sets = {f"{data.name} val+test": collect_samples(
        "own", open_splits(data, ("validation", "test"), contract), contract, limit)}
    real = DataSpec(str(Path(__file__).resolve().parents[1] / "tests" / "data" / "benv2-mini"))
    sets["benv2-mini"] = collect_samples("benv2", open_splits(real, EVAL_SPLITS, contract, everything=True), contract)
    return {"model": model, "contract": contract, "sets": sets}


def main() -> None:
    from mosaic_edge.export.fp16 import convert_fp16
    from mosaic_edge.export.onnx_export import export_onnx
    from mosaic_edge.export.parity import LOGIT_OUTPUTS, TOLERANCES, compare, run_onnx, run_torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--limit", type=int, default=256)
    args = parser.parse_args()
    print("| checkpoint | set | n | precision | max abs Δlogit | max Δ / sample max abs logit | "
          "excess (<= 1 passes) | max Δprob | decisions differing | max abs logit |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for ckpt in args.checkpoints:
        s = _samples(ckpt, args.limit)
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(s["model"], s["contract"], Path(tmp) / "model.onnx")
            paths = {"fp32": fp32, "fp16": convert_fp16(fp32, Path(tmp) / "model.fp16.onnx")}
            for set_name, samples in s["sets"].items():
                ref = run_torch(s["model"], samples.inputs)
                for precision, path in paths.items():
                    out = run_onnx(path, samples.inputs)
                    res = compare(ref, out, s["contract"], precision, ids=samples.ids)
                    rel = max(float((np.abs(out[k] - ref[k]) / np.abs(ref[k]).max(axis=1, keepdims=True)).max())
                              for k in LOGIT_OUTPUTS)
                    dprob = float(np.abs(sigmoid(out["logits"]) - sigmoid(ref["logits"])).max())
                    print(f"| {ckpt} | {set_name} | {res.n} | {precision} | {res.max_abs_logit_diff:.2e} | "
                          f"{rel:.2e} | {res.logit_excess:.3f} | {dprob:.2e} | {100 * res.flip_fraction:.2f}% | "
                          f"{max(float(np.abs(ref[k]).max()) for k in LOGIT_OUTPUTS):.1f} |")
    print("\nTolerances in force: " + "; ".join(
        f"{p}: atol {t.logit_atol:g} + rtol {t.logit_rtol:g} x |logit|, prob {t.max_prob_diff:g}, "
        f"flips {100 * t.max_flip_fraction:g}%" for p, t in TOLERANCES.items()))


if __name__ == "__main__":
    main()
