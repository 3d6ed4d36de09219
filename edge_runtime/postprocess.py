"""From logits to output records: sigmoid, the contract's thresholds, JSON Lines and GeoJSON.

One JSON Lines record per patch::

    {"tile": "T1", "patch": 0, "window": {"row": 0, "col": 0, "height": 120, "width": 120},
     "bounds": [minx, miny, maxx, maxy] | null, "crs": "EPSG:32633" | null,
     "head": "fused" | "sar", "labels": [{"name": ..., "score": ...}, ...],   # score >= class threshold
     "scores": {class: probability, ...}, "optical_invalid_fraction": 0.0,
     "model_hash": "...", "runner": "ort", "precision": "fp32", "input_sha256": "...",
     "timings_ms": {"read": .., "verify": .., "prepare": .., "cut": .., "queue": .., "infer": ..}}

``head`` says which logits answered: the fused head, or the SAR head when the patch has no usable optical
data. GeoJSON: one FeatureCollection per georeferenced tile, one Polygon per patch in the tile's CRS (named in
a ``crs`` member; RFC 7946 readers assume WGS 84, so consumers must honour it).

:func:`tile_records` builds the records as dicts (library use, tests); :func:`encode_tile` writes the same
bytes as ``to_jsonl(tile_records(...))`` and ``to_geojson(...)`` straight from the arrays, with the per-tile
parts serialised once instead of per patch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract, sigmoid
from mosaic_edge.data.tiff import GeoInfo
from mosaic_edge.patching import Window

# head name in records -> contract output holding its logits
HEAD_OUTPUTS = {"fused": "logits", "sar": "logits_sar"}
SCORE_DIGITS = 6


def choose_heads(optical_invalid: np.ndarray, max_invalid: float) -> list[str]:
    """Per patch: "sar" when its optical data is more invalid than ``max_invalid``, else "fused"."""
    sar = (np.asarray(optical_invalid, np.float64) > max_invalid).tolist()
    return ["sar" if s else "fused" for s in sar]


def patch_scores(outputs: Mapping[str, np.ndarray], heads: Sequence[str]) -> np.ndarray:
    """Probabilities [n, C] taking each row from the logits of its head."""
    fused = np.asarray([h == "fused" for h in heads])
    if fused.all():
        return sigmoid(outputs[HEAD_OUTPUTS["fused"]][: len(heads)])
    return sigmoid(np.where(fused[:, None], outputs[HEAD_OUTPUTS["fused"]][: len(heads)],
                            outputs[HEAD_OUTPUTS["sar"]][: len(heads)]))


def tile_records(
    tile_id: str,
    wins: Sequence[Window],
    heads: Sequence[str],
    scores: np.ndarray,
    contract: Contract,
    geo: GeoInfo | None,
    optical_invalid: Sequence[float],
    extra: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """The JSON Lines records of one tile (``extra`` adds model hash, runner, timings, input hash)."""
    thresholds = np.asarray(contract.thresholds)
    records = []
    for i, (win, head) in enumerate(zip(wins, heads, strict=True)):
        s = scores[i]
        above = np.flatnonzero(s >= thresholds)
        bounds = win.bounds(geo)
        records.append({
            "tile": tile_id,
            "patch": i,
            "window": win.to_dict(),
            "bounds": None if bounds is None else [round(v, 6) for v in bounds],
            "crs": None if geo is None else geo.crs,
            "head": head,
            "labels": [{"name": contract.classes[k], "score": round(float(s[k]), SCORE_DIGITS)}
                       for k in above[np.argsort(-s[above])]],
            "scores": {name: round(float(v), SCORE_DIGITS)
                       for name, v in zip(contract.classes, s, strict=True)},
            "optical_invalid_fraction": round(float(optical_invalid[i]), 4),
            **extra,
        })
    return records


def to_jsonl(records: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in records).encode()


def to_geojson(records: Sequence[Mapping[str, Any]]) -> bytes | None:
    """FeatureCollection of the patches' bounds, or None when the tile is not georeferenced."""
    if not records or records[0].get("bounds") is None:
        return None
    features = []
    for r in records:
        x0, y0, x1, y1 = r["bounds"]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon",
                         "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            "properties": {"tile": r["tile"], "patch": r["patch"], "head": r["head"],
                           "labels": [lab["name"] for lab in r["labels"]], "scores": r["scores"],
                           "model_hash": r.get("model_hash")},
        })
    fc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if records[0].get("crs"):
        fc["crs"] = {"type": "name", "properties": {"name": records[0]["crs"]}}
    return (json.dumps(fc, allow_nan=False) + "\n").encode()


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=False)


@lru_cache(maxsize=16)
def _class_keys(classes: tuple[str, ...]) -> tuple[list[str], list[int], list[str], str]:
    """JSON-encoded class names, the order of ``scores`` keys (sorted names), their ``"<name>: "`` prefixes,
    and a ``%`` template formatting one row of scores with :data:`SCORE_DIGITS` decimals, tab-separated."""
    names = [json.dumps(c) for c in classes]
    by_name = sorted(range(len(classes)), key=lambda k: classes[k])
    return names, by_name, [names[k] + ": " for k in by_name], "\t".join([f"%.{SCORE_DIGITS}f"] * len(classes))


def _rounded_reprs(row: list[float], template: str) -> list[str]:
    """``repr(round(v, SCORE_DIGITS))`` of each value -- what ``json.dumps`` writes for the rounded score --
    from one ``%`` format of the row: a correctly rounded fixed-point string is the shortest repr of the rounded
    float once trailing zeros go, for values from 1e-4 up (below, repr switches to exponent notation)."""
    out = (template % tuple(row)).split("\t")
    for k, (text, v) in enumerate(zip(out, row, strict=True)):
        if v < 1e-4:
            out[k] = repr(round(v, SCORE_DIGITS))
        else:
            text = text.rstrip("0")
            out[k] = text + "0" if text.endswith(".") else text
    return out


def encode_tile(
    tile_id: str,
    wins: Sequence[Window],
    heads: Sequence[str],
    scores: np.ndarray,
    contract: Contract,
    geo: GeoInfo | None,
    optical_invalid: Sequence[float],
    extra: Mapping[str, Any],
) -> tuple[bytes, bytes | None]:
    """``(to_jsonl(records), to_geojson(records))`` of :func:`tile_records`' records, without building them.

    The parts every record of the tile shares are serialised once; per patch only its numbers are formatted
    (as ``json.dumps`` formats them: ``repr`` of the rounded float).

    Raises:
        ValueError: a score is not finite (as ``json.dumps(..., allow_nan=False)`` would).
    """
    if not np.isfinite(scores).all():
        raise ValueError("Out of range float values are not JSON compliant: non-finite scores")
    names, by_name, score_keys, template = _class_keys(tuple(contract.classes))
    above_all = scores >= np.asarray(contract.thresholds)
    fixed = {"crs": None if geo is None else geo.crs, "tile": tile_id, **extra}
    keys = sorted([*fixed, "bounds", "head", "labels", "optical_invalid_fraction", "patch", "scores", "window"])
    # The record as alternating constant text and per-patch fields, in sort_keys order.
    parts: list[str] = []
    text = "{"
    for i, k in enumerate(keys):
        text += ("" if i == 0 else ", ") + f'"{k}": '
        if k in fixed:
            text += _dumps(fixed[k])
        else:
            parts += [text, k]
            text = ""
    parts.append(text + "}\n")
    lines, features = [], []
    for i, (win, head) in enumerate(zip(wins, heads, strict=True)):
        s = scores[i]
        values = _rounded_reprs(s.tolist(), template)
        above = np.flatnonzero(above_all[i])
        order = above[np.argsort(-s[above])].tolist()
        bounds = win.bounds(geo)
        bounds_r = None if bounds is None else [round(v, 6) for v in bounds]
        fields = {
            "bounds": "null" if bounds_r is None else "[" + ", ".join(map(repr, bounds_r)) + "]",
            "head": f'"{head}"',
            "labels": "[" + ", ".join(f'{{"name": {names[k]}, "score": {values[k]}}}' for k in order) + "]",
            "optical_invalid_fraction": repr(round(float(optical_invalid[i]), 4)),
            "patch": str(i),
            "scores": "{" + ", ".join(map(str.__add__, score_keys, [values[k] for k in by_name])) + "}",
            "window": f'{{"col": {win.col}, "height": {win.height}, "row": {win.row}, "width": {win.width}}}',
        }
        lines.append("".join(p if j % 2 == 0 else fields[p] for j, p in enumerate(parts)))
        if bounds_r is not None:
            x0, y0, x1, y1 = bounds_r
            features.append({
                "type": "Feature",
                "geometry": {"type": "Polygon",
                             "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
                "properties": {"tile": tile_id, "patch": i, "head": head,
                               "labels": [contract.classes[k] for k in order],
                               "scores": {c: round(v, SCORE_DIGITS) for c, v in zip(contract.classes, s.tolist(),
                                                                                     strict=True)},
                               "model_hash": extra.get("model_hash")},
            })
    geojson = None
    if features:
        fc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
        if geo is not None and geo.crs:
            fc["crs"] = {"type": "name", "properties": {"name": geo.crs}}
        geojson = (json.dumps(fc, allow_nan=False) + "\n").encode()
    return "".join(lines).encode(), geojson
