"""How far the outputs of INT8 Q/DQ artefacts are from the fp32 model, per head (ONNX Runtime, CPU).

    python benchmarks/trt_int8_heads.py runs/default/export/model.onnx runs/default/export-old/model.int8.onnx \
        runs/default/export/model.int8.onnx --calib runs/default/export/calib.npz

For each artefact: max |logit - fp32 logit| of the three classifier heads, and the mean cosine of each embedding to
the fp32 one, on the calibration patches (the preprocessing the runtime uses). Used to decide whether the TensorRT
artefact's heads may run in fp16 (benchmarks/RESULTS.md, "INT8 for TensorRT").
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32")
    parser.add_argument("artefacts", nargs="+")
    parser.add_argument("--calib", required=True)
    args = parser.parse_args()
    with np.load(args.calib, allow_pickle=False) as data:
        x = {k: data[k] for k in ("sar", "optical")}

    def run(path: str) -> dict[str, np.ndarray]:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, x), strict=True))

    ref = run(args.fp32)
    for path in args.artefacts:
        out = run(path)
        diffs = {k: round(float(np.abs(out[k] - ref[k]).max()), 3) for k in ("logits", "logits_sar", "logits_optical")}
        cos = {k: round(float(np.mean(np.sum(out[k] * ref[k], 1)
                                      / (np.linalg.norm(out[k], axis=1) * np.linalg.norm(ref[k], axis=1)))), 5)
               for k in ("emb_sar", "emb_optical")}
        print(path, "max |dlogit|", diffs, "mean cosine", cos, f"n={len(x['sar'])}")


if __name__ == "__main__":
    main()
