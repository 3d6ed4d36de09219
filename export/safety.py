"""The INT8 safety net at export: choose each INT8 artefact's fallback margin and report the trade-off.

The margin (:func:`mosaic_edge.fallback.choose_margin`) must reach the target agreement with fp32 on every
tuning set: the validation part of the gate set and, with ``--calib-data``, windows of each calibration source
(deployment-like data; held out from the calibration set when the source is large enough). The largest of those
margins is kept: it satisfies each set. The report then shows, at that margin, agreement and re-run share on the
validation and test parts, the tuning windows and every extra evaluation set; the trade-off (agreement vs
fraction re-run per margin) on each tuning set as a table, and all of them in ``fallback.png``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.export.eval_sets import EvalSets
from mosaic_edge.export.parity import Samples
from mosaic_edge.export.report import FALLBACK_PNG, plot_fallback
from mosaic_edge.fallback import FallbackPolicy, choose_margin, simulate

# Above this share of validation windows re-run, INT8 buys little and the export warns.
RERUN_WARN = 0.5


def _set_row(z32: np.ndarray, z8: np.ndarray, flags: np.ndarray | None, contract: Contract,
             margin: float) -> dict[str, Any]:
    row = simulate(z32, z8, flags, contract, margin)
    return {"n": int(len(z32)), "drifted_fraction": float(np.mean(flags)) if flags is not None else 0.0,
            "int8_agreement": float(np.mean(contract.decide(z8) == contract.decide(z32))), **row.to_dict()}


def fallback_section(out: Path, sets: EvalSets, tuning: list[Samples],
                     logits: Mapping[str, Mapping[str, np.ndarray]], int8: list[str], reference: str,
                     contract: Contract, target: float,
                     warnings: list[str]) -> tuple[dict[str, Any], dict[str, FallbackPolicy]]:
    """The report's ``"fallback"`` section and the policy of each INT8 artefact (``fallback.png`` written).

    Args:
        logits: Set name -> artefact -> fused logits [n, C], for the validation and test parts, the tuning
            windows and the extra sets.
        int8: Names of the INT8 artefacts. reference: The fp32 artefact.
    """
    tune_sets = [sets.validation, *tuning]
    shown = {s.name: s for s in (sets.validation, sets.test, *tuning, *sets.extra.values())}
    section: dict[str, Any] = {"tuning_sets": [t.name for t in tune_sets], "target_agreement": target,
                               "artefacts": {}}
    policies, curves = {}, {}
    for name in int8:
        choices = {t.name: choose_margin(logits[t.name][reference], logits[t.name][name], t.drifted,
                                         contract, target) for t in tune_sets}
        deciding = max(choices, key=lambda k: choices[k].chosen.margin_logit)
        policy = FallbackPolicy(choices[deciding].chosen.margin_logit, True, target)
        rows = {set_name: _set_row(logits[set_name][reference], logits[set_name][name], samples.drifted,
                                   contract, policy.margin_logit)
                for set_name, samples in shown.items()}
        tables = {}
        for t in tune_sets:
            at_policy = rows[t.name]
            own = [r.to_dict() for r in choices[t.name].table]
            chosen = {k: at_policy[k] for k in ("margin_logit", "rerun_fraction", "agreement")}
            tables[t.name] = sorted([r for r in own if r["margin_logit"] != chosen["margin_logit"]] + [chosen],
                                    key=lambda r: (r["rerun_fraction"], r["margin_logit"]))
            curves[f"{name} on {t.name}"] = (*choices[t.name].curve, chosen)
        section["artefacts"][name] = {"policy": policy.to_dict(), "set_by": deciding, "tables": tables,
                                      "sets": rows}
        policies[name] = policy
        rerun = rows[sets.validation.name]["rerun_fraction"]
        if rerun > RERUN_WARN:
            warnings.append(f"{name}: the fallback re-runs {100 * rerun:.0f}% of the validation windows to reach "
                            f"{100 * target:.1f}% agreement with fp32: INT8 buys little here "
                            "(calibrate on deployment data: --calib-data; try another --calib-method)")
    note = plot_fallback(curves, target, out / FALLBACK_PNG)
    section["png"] = None if note else FALLBACK_PNG
    if note:
        section["png_note"] = note
    return section, policies
