"""Accuracy report of every exported artefact against fp32, and the INT8 accuracy gate.

For each evaluation set (the test split of the export data, the real BigEarthNet v2 sample) and each
artefact: macro and micro mAP, agreement of label decisions with the fp32 ONNX, max |probability difference|
and per-class AP deltas. :func:`check_gate` fails the export when an INT8 artefact's macro mAP on the gate set
is more than ``max_map_drop_pts`` percentage points below fp32's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract, sigmoid
from mosaic_edge.errors import UserError

REPORT_SCHEMA = 1
# The issue's bound: one percentage point of macro mAP. Configurable (--max-map-drop), recorded in the report.
DEFAULT_MAX_MAP_DROP_PTS = 1.0


class AccuracyGateError(UserError):
    """An INT8 artefact lost more macro mAP than the configured bound."""


@dataclass(frozen=True)
class Evaluated:
    """Outputs of one artefact on one evaluation set."""

    artefact: str
    precision: str
    target: str
    logits: np.ndarray


def _per_class_ap(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-class average precision [C] (NaN for classes without positives)."""
    from mosaic_edge.metrics import average_precision

    return np.asarray(average_precision(labels, scores), dtype=np.float64)


def _micro_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    from mosaic_edge.metrics import mean_average_precision

    return mean_average_precision(labels, scores, average="micro")


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def score_set(labels: np.ndarray, runs: list[Evaluated], contract: Contract,
              reference: str) -> dict[str, Any]:
    """Scores of every artefact on one evaluation set; ``reference`` names the fp32 run compared against."""
    by_name = {r.artefact: r for r in runs}
    if reference not in by_name:
        raise UserError(f"reference artefact {reference} was not evaluated")
    ref = by_name[reference]
    ref_prob, ref_dec = sigmoid(ref.logits), contract.decide(ref.logits)
    ref_ap = _per_class_ap(labels, ref_prob)
    out: dict[str, Any] = {}
    for run in runs:
        prob = sigmoid(run.logits)
        ap = _per_class_ap(labels, prob)
        macro = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
        ref_macro = float(np.nanmean(ref_ap)) if np.isfinite(ref_ap).any() else float("nan")
        out[run.artefact] = {
            "precision": run.precision,
            "target": run.target,
            "macro_map": _nan_to_none(macro),
            "micro_map": _nan_to_none(_micro_ap(labels, prob)),
            "macro_map_delta_pts": _nan_to_none(100.0 * (macro - ref_macro)),
            "agreement": float((contract.decide(run.logits) == ref_dec).mean()),
            "max_prob_diff": float(np.max(np.abs(prob - ref_prob))),
            "per_class_ap": {c: _nan_to_none(a) for c, a in zip(contract.classes, ap, strict=True)},
            "per_class_ap_delta": {c: _nan_to_none(a - r)
                                   for c, a, r in zip(contract.classes, ap, ref_ap, strict=True)},
        }
    return out


def build_report(sets: Mapping[str, tuple[np.ndarray, list[Evaluated]]], contract: Contract, reference: str,
                 gate_set: str, max_map_drop_pts: float = DEFAULT_MAX_MAP_DROP_PTS,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report dict (``report.json``), gate verdict included.

    Args:
        sets: Evaluation-set name -> (labels [N, C], one :class:`Evaluated` per artefact).
        contract: Class names and decision thresholds.
        reference: Artefact every other one is compared with (the fp32 ONNX).
        gate_set: Which set the INT8 gate is decided on (the labelled test split, large enough for mAP).
        max_map_drop_pts: Largest accepted INT8 macro-mAP drop in percentage points.
        extra: Primitives recorded under ``"export"`` (calibration method, sizes, parity).
    """
    if gate_set not in sets:
        raise UserError(f"gate set {gate_set!r} not among the evaluation sets {sorted(sets)}")
    datasets: dict[str, dict[str, Any]] = {
        name: {"n": int(len(labels)), "artefacts": score_set(labels, runs, contract, reference)}
        for name, (labels, runs) in sets.items()}
    failures = []
    for name, row in datasets[gate_set]["artefacts"].items():
        drop = row["macro_map_delta_pts"]
        if row["precision"] == "int8" and drop is not None and -drop > max_map_drop_pts:
            failures.append(f"{name}: macro mAP {100 * row['macro_map']:.2f} is {-drop:.2f} pts below fp32")
    gate = {"set": gate_set, "reference": reference, "max_map_drop_pts": max_map_drop_pts,
            "passed": not failures, "failures": failures}
    return {"schema": REPORT_SCHEMA, "model_hash": contract.model_hash, "gate": gate, "datasets": datasets,
            "export": dict(extra or {})}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: one table per evaluation set, the gate verdict, then per-class AP deltas of INT8."""
    gate = report["gate"]
    lines = ["# Export accuracy report", "",
             f"Gate: INT8 macro mAP on `{gate['set']}` within {gate['max_map_drop_pts']:g} pts of "
             f"`{gate['reference']}` — **{'PASSED' if gate['passed'] else 'FAILED'}**", ""]
    lines += [f"- {f}" for f in gate["failures"]]
    lint = report.get("export", {}).get("trt_lint")
    if lint:  # calibration/trt_lint.py: Q/DQ placement TensorRT needs to run the INT8 artefact fused, on fp16
        verdict = "PASSED" if lint["passed"] else "FAILED"
        lines += ["", f"TensorRT placement lint of `{lint['artefact']}`: **{verdict}** "
                  f"({', '.join(f'{k}: {v} checked' for k, v in lint['checked'].items())})"]
        lines += [f"- {f}" for f in lint["failures"]]
    parity = report.get("export", {}).get("parity", [])
    if parity:
        lines += ["", "## Parity vs torch (fp32/fp16 enforced, INT8 informative)", "",
                  "| artefact | set | n | max abs Δlogit | mean abs Δlogit | decisions differing | in tol |",
                  "|---|---|---:|---:|---:|---:|---|"]
        lines += [f"| {p['artefact']} | {p['samples']} | {p['n']} | {p['max_abs_logit_diff']:.2e} | "
                  f"{p['mean_abs_logit_diff']:.2e} | {100 * p['flip_fraction']:.2f}% | "
                  f"{'yes' if p['passed'] else 'NO'} |" for p in parity]
    for name, ds in report["datasets"].items():
        lines += ["", f"## {name} (n={ds['n']})", "",
                  "| artefact | precision | target | macro mAP | micro mAP | Δ macro (pts) | agreement "
                  "| max Δprob |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for art, row in ds["artefacts"].items():
            delta = "n/a" if row["macro_map_delta_pts"] is None else f"{row['macro_map_delta_pts']:+.2f}"
            lines.append(f"| {art} | {row['precision']} | {row['target']} | {_pct(row['macro_map'])} | "
                         f"{_pct(row['micro_map'])} | {delta} | {100 * row['agreement']:.2f}% | "
                         f"{row['max_prob_diff']:.4f} |")
        int8 = {a: r for a, r in ds["artefacts"].items() if r["precision"] == "int8"}
        if int8:
            lines += ["", "Per-class AP delta vs fp32 (pts; n/a = no positives in this set):", "",
                      "| class | " + " | ".join(int8) + " |", "|---|" + "---:|" * len(int8)]
            for cls in next(iter(int8.values()))["per_class_ap_delta"]:
                cells = [r["per_class_ap_delta"][cls] for r in int8.values()]
                text = ("n/a" if c is None else f"{100 * c:+.2f}" for c in cells)
                lines.append(f"| {cls} | " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    js, md = out_dir / "report.json", out_dir / "report.md"
    js.write_text(json.dumps(report, indent=2) + "\n")
    md.write_text(render_markdown(report))
    return js, md


def check_gate(report: Mapping[str, Any]) -> None:
    """Raise :class:`AccuracyGateError` when the report's INT8 gate failed."""
    gate = report["gate"]
    if not gate["passed"]:
        raise AccuracyGateError(
            f"INT8 accuracy gate failed on {gate['set']} (bound {gate['max_map_drop_pts']:g} pts macro mAP): "
            + "; ".join(gate["failures"])
            + ". See report.md; try another --calib-method, a larger --calib-size or raise --max-map-drop.")
