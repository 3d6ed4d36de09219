"""Accuracy report of every exported artefact against fp32, the INT8 gate, and the fallback trade-off.

For each evaluation set (the gate set: validation + test of the export data; extra labelled roots such as the
real BigEarthNet v2 sample) and each artefact: macro and micro mAP, agreement of label decisions with the fp32
ONNX, max |probability difference| and per-class AP deltas. The INT8 gate (:mod:`mosaic_edge.export.gate`)
decides on the gate set with a bootstrap interval; :func:`check_gate` fails the export when an INT8 artefact's
verdict is "failed". The report also carries what the calibration set came from and, per INT8 artefact, the
borderline-fallback trade-off (:mod:`mosaic_edge.fallback`), as a table in ``report.md`` and ``fallback.png``.
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
from mosaic_edge.export import gate as gt

REPORT_SCHEMA = 2
# The issue's bound: one percentage point of macro mAP. Configurable (--max-map-drop), recorded in the report.
DEFAULT_MAX_MAP_DROP_PTS = 1.0
FALLBACK_PNG = "fallback.png"


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
    ref_ap = _per_class_ap(labels, ref.logits)  # logits rank like probabilities without saturating to ties
    out: dict[str, Any] = {}
    for run in runs:
        prob = sigmoid(run.logits)
        ap = _per_class_ap(labels, run.logits)
        macro = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
        ref_macro = float(np.nanmean(ref_ap)) if np.isfinite(ref_ap).any() else float("nan")
        out[run.artefact] = {
            "precision": run.precision,
            "target": run.target,
            "macro_map": _nan_to_none(macro),
            "micro_map": _nan_to_none(_micro_ap(labels, run.logits)),
            "macro_map_delta_pts": _nan_to_none(100.0 * (macro - ref_macro)),
            "agreement": float((contract.decide(run.logits) == ref_dec).mean()),
            "max_prob_diff": float(np.max(np.abs(prob - ref_prob))),
            "per_class_ap": {c: _nan_to_none(a) for c, a in zip(contract.classes, ap, strict=True)},
            "per_class_ap_delta": {c: _nan_to_none(a - r)
                                   for c, a, r in zip(contract.classes, ap, ref_ap, strict=True)},
        }
    return out


def build_gate(labels: np.ndarray, runs: list[Evaluated], reference: str, gate_set: str,
               max_map_drop_pts: float, composition: Mapping[str, int] | None = None,
               seed: int = 0) -> dict[str, Any]:
    """The gate entry of the report: one :func:`~mosaic_edge.export.gate.judge` verdict per INT8 artefact."""
    by_name = {r.artefact: r for r in runs}
    gs = gt.gate_set(labels, seed)
    ref = gt.resampled_macro(gs, by_name[reference].logits) if len(gs.classes) else np.zeros(0)
    verdicts = {r.artefact: gt.judge(gs, ref, r.logits, max_map_drop_pts) for r in runs if r.precision == "int8"}
    failures = [f"{name}: {v['reason']}" for name, v in verdicts.items() if v["verdict"] == "failed"]
    states = {v["verdict"] for v in verdicts.values()}
    verdict = "failed" if failures else "inconclusive" if "inconclusive" in states else "passed"
    return {"set": gate_set, "reference": reference, "max_map_drop_pts": max_map_drop_pts, "n": gs.n,
            "composition": dict(composition or {}), "judgeable": gs.judgeable,
            "min_patches": gt.GATE_MIN_PATCHES, "min_positives": gt.GATE_MIN_POSITIVES,
            "min_classes": gt.GATE_MIN_CLASSES, "gate_classes": [int(c) for c in gs.classes],
            "artefacts": verdicts, "verdict": verdict, "passed": not failures, "failures": failures}


def build_report(sets: Mapping[str, tuple[np.ndarray, list[Evaluated]]], contract: Contract, reference: str,
                 gate_set: str, max_map_drop_pts: float = DEFAULT_MAX_MAP_DROP_PTS,
                 extra: Mapping[str, Any] | None = None, composition: Mapping[str, int] | None = None,
                 sections: Mapping[str, Any] | None = None, warnings: list[str] | None = None) -> dict[str, Any]:
    """The report dict (``report.json``), gate verdict included.

    Args:
        sets: Evaluation-set name -> (labels [N, C], one :class:`Evaluated` per artefact).
        contract: Class names and decision thresholds.
        reference: Artefact every other one is compared with (the fp32 ONNX).
        gate_set: Which set the INT8 gate is decided on.
        max_map_drop_pts: Largest accepted INT8 macro-mAP drop in percentage points.
        extra: Primitives recorded under ``"export"`` (configuration, data, parity).
        composition: Source -> patches of the gate set.
        sections: Further top-level entries (``"calibration"``, ``"fallback"``).
        warnings: Lines the export printed as warnings; the gate's inconclusive verdicts are added.
    """
    if gate_set not in sets:
        raise UserError(f"gate set {gate_set!r} not among the evaluation sets {sorted(sets)}")
    datasets: dict[str, dict[str, Any]] = {
        name: {"n": int(len(labels)), "artefacts": score_set(labels, runs, contract, reference)}
        for name, (labels, runs) in sets.items()}
    gate = build_gate(sets[gate_set][0], sets[gate_set][1], reference, gate_set, max_map_drop_pts, composition)
    notes = list(warnings or [])
    notes += [f"INT8 gate inconclusive for {name}: {v['reason']}"
              for name, v in gate["artefacts"].items() if v["verdict"] == "inconclusive"]
    return {"schema": REPORT_SCHEMA, "model_hash": contract.model_hash, "gate": gate, "warnings": notes,
            **dict(sections or {}), "datasets": datasets, "export": dict(extra or {})}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _ci(v: Mapping[str, Any]) -> str:
    if v.get("drop_pts") is None:
        return "n/a | n/a"
    lo, hi = v["ci95_pts"]
    return f"{v['drop_pts']:+.2f} | {lo:+.2f}..{hi:+.2f}"


def _gate_lines(gate: Mapping[str, Any]) -> list[str]:
    comp = ", ".join(f"{n} from {src}" for src, n in gate.get("composition", {}).items())
    lines = [f"Gate: INT8 macro mAP on `{gate['set']}` (n={gate['n']}: {comp}) within "
             f"{gate['max_map_drop_pts']:g} pts of `{gate['reference']}` — **{gate['verdict'].upper()}**", "",
             f"Rule: paired bootstrap 95% interval of the drop; failed when its low end exceeds the bound, or the "
             f"estimate does on a judgeable set; passed when its high end is within the bound on a judgeable set "
             f"(>= {gate['min_patches']} patches, >= {gate['min_classes']} classes with >= {gate['min_positives']}"
             f" positives; the gate's macro mAP averages those classes); otherwise inconclusive.", ""]
    if gate["artefacts"]:
        lines += ["| artefact | drop of macro mAP (pts; + = INT8 worse) | 95% CI (pts) | classes | verdict | why |",
                  "|---|---:|---:|---:|---|---|"]
        lines += [f"| {name} | {_ci(v)} | {v['gate_classes']} | {v['verdict']} | {v['reason']} |"
                  for name, v in gate["artefacts"].items()]
    return lines


def _calibration_lines(cal: Mapping[str, Any]) -> list[str]:
    lines = ["", "## Calibration set", "",
             f"{cal['n']} patches ({cal['method']}), drawn across its sources (stratified, seed {cal['seed']}):", "",
             "| source | available | drawn |", "|---|---:|---:|"]
    lines += [f"| {d['source']} | {d['available']} | {d['drawn']} |" for d in cal["sources"]]
    env = cal.get("envelope")
    if env:
        lines += ["", f"Envelope (raw units): a window is drifted when more than {100 * env['threshold']:.1f}% of "
                  f"its values (every {env['stride']}th row and column) lie outside the "
                  f"{env['check_levels'][0]:g}..{env['check_levels'][1]:g} quantiles of the calibration set."]
    return lines


def _fallback_lines(fb: Mapping[str, Any]) -> list[str]:
    tuning = ", ".join(f"`{t}`" for t in fb["tuning_sets"])
    lines = ["", "## Borderline fallback (INT8 -> higher precision)", "",
             "A window is re-run when drifted or when an INT8 logit lies within the margin of its class's threshold "
             "logit (`|z - logit(t)| <= margin`); re-run windows take fp32's decisions. The margin is the smallest "
             f"reaching >= {100 * fb['target_agreement']:.1f}% agreement with fp32 on each of {tuning}.", ""]
    for name, art in fb["artefacts"].items():
        pol = art["policy"]
        lines += [f"### {name}: margin {pol['margin_logit']:.4g} (logit), set by `{art['set_by']}`", "",
                  "| set | n | drifted | INT8 alone | with fallback | re-run |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {s} | {r['n']} | {_pct(r['drifted_fraction'])}% | {_pct(r['int8_agreement'])}% | "
                  f"{_pct(r['agreement'])}% | {_pct(r['rerun_fraction'])}% |" for s, r in art["sets"].items()]
        for set_name, rows in art["tables"].items():
            lines += ["", f"Trade-off on `{set_name}`:", "", "| margin (logit) | re-run | agreement |",
                      "|---:|---:|---:|"]
            lines += [f"| {r['margin_logit']:.4g}{' (chosen)' if r['margin_logit'] == pol['margin_logit'] else ''} | "
                      f"{_pct(r['rerun_fraction'])}% | {_pct(r['agreement'])}% |" for r in rows]
        lines.append("")
    if fb.get("png_note"):
        lines.append(fb["png_note"])
    elif fb.get("png"):
        lines.append(f"![agreement vs re-run]({fb['png']})")
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: gate, warnings, calibration, fallback, parity, one table per evaluation set."""
    lines = ["# Export accuracy report", ""] + _gate_lines(report["gate"])
    lines += [f"- failed: {f}" for f in report["gate"]["failures"]]
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    if report.get("calibration"):
        lines += _calibration_lines(report["calibration"])
    if report.get("fallback"):
        lines += _fallback_lines(report["fallback"])
    lint = report.get("export", {}).get("trt_lint")
    if lint:  # calibration/trt_lint.py: Q/DQ placement TensorRT needs to run the INT8 artefact fused, on fp16
        verdict = "PASSED" if lint["passed"] else "FAILED"
        lines += ["", f"TensorRT placement lint of `{lint['artefact']}`: **{verdict}** "
                  f"({', '.join(f'{k}: {v} checked' for k, v in lint['checked'].items())})"]
        lines += [f"- {f}" for f in lint["failures"]]
    parity = report.get("export", {}).get("parity", [])
    if parity:
        lines += ["", "## Parity vs torch (fp32/fp16 enforced, INT8 informative)", "",
                  "| artefact | set | n | max abs Δlogit | × tolerance | worst (patch, class) | max Δprob "
                  "| decisions differing | in tol |",
                  "|---|---|---:|---:|---:|---|---:|---:|---|"]
        lines += [f"| {p['artefact']} | {p['samples']} | {p['n']} | {p['max_abs_logit_diff']:.2e} | "
                  f"{p['logit_excess']:.2f} | {p['worst_logit']['patch']}, {p['worst_logit']['cls']} | "
                  f"{p['max_prob_diff']:.2e} | {100 * p['flip_fraction']:.2f}% | "
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


def plot_fallback(curves: Mapping[str, tuple[np.ndarray, np.ndarray, Mapping[str, float]]], target: float,
                  path: str | Path) -> str | None:
    """``fallback.png``: agreement with fp32 vs fraction re-run, one curve per (INT8 artefact, tuning set), the
    points at the chosen margin marked.

    Returns:
        None when written, else a note saying why not (matplotlib is the optional extra ``plot``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"matplotlib is not installed (pip install 'mosaic-edge[plot]'): {Path(path).name} skipped"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (rerun, agree, chosen) in curves.items():
        ax.step(100 * rerun, 100 * agree, where="post", label=name)
        ax.plot([100 * chosen["rerun_fraction"]], [100 * chosen["agreement"]], "o")
    ax.axhline(100 * target, color="grey", linestyle="--", linewidth=0.8, label=f"target {100 * target:.1f}%")
    ax.set_xlabel("windows re-run at higher precision (%)")
    ax.set_ylabel("decisions agreeing with fp32 (%)")
    ax.set_title("INT8 borderline fallback: agreement vs re-run")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def check_gate(report: Mapping[str, Any]) -> None:
    """Raise :class:`AccuracyGateError` when an INT8 artefact's gate verdict is "failed"."""
    gate = report["gate"]
    if not gate["passed"]:
        raise AccuracyGateError(
            f"INT8 accuracy gate failed on {gate['set']} (n={gate['n']}, bound {gate['max_map_drop_pts']:g} pts "
            "macro mAP): " + "; ".join(gate["failures"])
            + ". See report.md; try another --calib-method, a larger --calib-size or raise --max-map-drop.")
