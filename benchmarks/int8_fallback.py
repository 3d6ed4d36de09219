"""INT8 with the safety net, measured on windows as the runtime sees them: agreement with fp32 and share re-run.

For one export directory and one set of windows (the synthetic test split, a data root cut into the model's
windows, or a folder of spool tiles), this does per window what the runtime will do per batch with the core
API: the drift check of the raw window against the manifest's envelope, the INT8 artefact, then
:func:`mosaic_edge.fallback.needs_fallback` with the manifest's policy and the fp32 artefact for the windows it
flags. It reports decision agreement with fp32 (INT8 alone and with the fallback), the share drifted and re-run,
the least share any rule would have to re-run for 99.5 / 99.9 % (an oracle that knows which windows disagree),
and the ONNX Runtime CPU time of INT8 alone vs INT8 + drift check + fp32 re-runs (1 thread, batch 32,
interleaved rounds, medians)::

    python benchmarks/int8_fallback.py runs/default/export --windows synthetic-test \\
        --windows tests/data/benv2-mini [--windows path/to/tiles] [--timing]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.manifest import Manifest


def _source(spec: str, contract: Contract) -> Any:
    from mosaic_edge.data.sources import DataSpec
    from mosaic_edge.export.calib_data import open_calibration_source

    if spec.startswith("synthetic-"):  # one split of the synthetic benchmark at the model's patch size
        from mosaic_edge.data.windows import WindowedSource

        return WindowedSource(DataSpec("synthetic", {"patch_size": contract.patch_size}).open(spec[10:]),
                              contract)
    return open_calibration_source(spec, contract)[1]


def windows(spec: str, contract: Contract, limit: int | None) -> dict[str, np.ndarray]:
    """Raw (grid) and model-ready arrays of every window of ``spec`` (first ``limit``)."""
    from mosaic_edge.data.preprocess import preprocess, stack_bands

    src = _source(spec, contract)
    n = len(src) if limit is None else min(limit, len(src))
    raw_sar, raw_opt, sar, opt = [], [], [], []
    for i in range(n):
        patch = src.read(i)
        s = stack_bands(patch.sar, contract.sar_bands, None, patch.id)
        o = stack_bands(patch.optical, contract.optical_bands, s.shape[-2:], patch.id)
        pre = preprocess(s, o, contract)
        raw_sar.append(s)
        raw_opt.append(o)
        sar.append(pre.sar)
        opt.append(pre.optical)
    return {"raw_sar": np.stack(raw_sar), "raw_optical": np.stack(raw_opt),
            "sar": np.stack(sar), "optical": np.stack(opt)}


def model_inputs(data: dict[str, np.ndarray], contract: Contract) -> dict[str, np.ndarray]:
    """The windows in the artefacts' input form: raw units (non-finite values as the band mean, as the runtime
    fills them) for a raw-input export, else standardised."""
    if contract.input_form != "raw":
        return {"sar": data["sar"], "optical": data["optical"]}
    out = {}
    for name, mean in (("sar", contract.sar_mean), ("optical", contract.optical_mean)):
        x = np.asarray(data[f"raw_{name}"], dtype=np.float32)
        fill = np.broadcast_to(np.asarray(mean, np.float32)[None, :, None, None], x.shape)
        out[name] = np.where(np.isfinite(x), x, fill)
    return out


def evaluate(export: Path, data: dict[str, np.ndarray], timing: bool) -> dict[str, Any]:
    from mosaic_edge.export.parity import run_onnx
    from mosaic_edge.fallback import needs_fallback

    manifest = Manifest.load(export)
    contract, env = manifest.contract, manifest.envelope
    inputs = model_inputs(data, contract)
    z32 = run_onnx(export / "model.onnx", inputs)["logits"]
    d32 = contract.decide(z32)
    check = env.check(data["raw_sar"], data["raw_optical"]) if env else None
    out: dict[str, Any] = {"n": len(z32), "drifted": float(check.drifted.mean()) if check else 0.0}
    for name, art in manifest.artefacts.items():
        if art.precision != "int8" or art.fallback is None:
            continue
        z8 = run_onnx(export / name, inputs)["logits"]
        rerun = needs_fallback(z8, check.drifted if check else None, contract, art.fallback)
        final = np.where(rerun[:, None], d32, contract.decide(z8))
        wrong = (contract.decide(z8) != d32).sum(axis=1)
        row = {"margin_logit": art.fallback.margin_logit, "int8_agreement": float((contract.decide(z8) == d32).mean()),
               "agreement": float((final == d32).mean()), "rerun": float(rerun.mean()),
               "oracle_rerun_995": _oracle(wrong, d32.size, 0.995), "oracle_rerun_999": _oracle(wrong, d32.size, 0.999)}
        if timing:
            row.update(_timing(export, name, data, inputs, rerun, env))
        out[name] = row
    return out


def _oracle(wrong: np.ndarray, decisions: int, target: float) -> float:
    """Least share of windows any selection rule must re-run to reach ``target``: knowing which windows
    disagree, re-run those with the most disagreeing classes first."""
    allowed = (1.0 - target) * decisions
    left = wrong.sum() - np.r_[0, np.cumsum(np.sort(wrong)[::-1])]
    return float(np.argmax(left <= allowed + 1e-9) / len(wrong))


def _timing(export: Path, name: str, data: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
            rerun: np.ndarray, env: Any,
            batch: int = 32, rounds: int = 15) -> dict[str, float]:
    """Median seconds per window: INT8 alone, and INT8 + drift check + fp32 on the re-run share (interleaved)."""
    from mosaic_edge.export.parity import ort_session

    s8, s32 = ort_session(export / name, threads=1), ort_session(export / "model.onnx", threads=1)
    n = min(batch, len(rerun))
    x = {key: v[:n] for key, v in inputs.items()}
    k = max(int(round(rerun.mean() * n)), 0)
    xr = {key: v[:k] for key, v in x.items()}
    for sess in (s8, s32):
        sess.run(None, x)
    plain, safe = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        s8.run(None, x)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        s8.run(None, x)
        if env is not None:
            env.check(data["raw_sar"][:n], data["raw_optical"][:n])
        if k:
            s32.run(None, xr)
        safe.append(time.perf_counter() - t)
    p, s = statistics.median(plain) / n, statistics.median(safe) / n
    return {"int8_ms_per_window": 1e3 * p, "safe_ms_per_window": 1e3 * s, "throughput_ratio": p / s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--windows", action="append", required=True,
                        help="synthetic-test | synthetic-validation | data root | folder of tiles (repeatable)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--timing", action="store_true")
    args = parser.parse_args()
    contract = Manifest.load(args.export).contract
    results = {spec: evaluate(args.export, windows(spec, contract, args.limit), args.timing) for spec in args.windows}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
