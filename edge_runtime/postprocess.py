"""From logits to output records: sigmoid, the contract's thresholds, JSON Lines and GeoJSON.

One JSON Lines record per patch::

    {"tile": "T1", "patch": 0, "window": {"row": 0, "col": 0, "height": 120, "width": 120},
     "bounds": [minx, miny, maxx, maxy] | null, "crs": "EPSG:32633" | null,
     "head": "fused" | "sar", "labels": [{"name": ..., "score": ...}, ...],   # score >= class threshold
     "scores": {class: probability, ...}, "optical_invalid_fraction": 0.0,
     "model_hash": "...", "runner": "ort", "precision": "fp32", "input_sha256": "...",
     "timings_ms": {"read": .., "preprocess": .., "queue": .., "infer": ..}}

``head`` says which logits answered: the fused head, or the SAR head when the patch has no usable optical
data. GeoJSON: one FeatureCollection per georeferenced tile, one Polygon per patch in the tile's CRS (named in
a ``crs`` member; RFC 7946 readers assume WGS 84, so consumers must honour it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
    return ["sar" if f > max_invalid else "fused" for f in np.asarray(optical_invalid, np.float64)]


def patch_scores(outputs: Mapping[str, np.ndarray], heads: Sequence[str]) -> np.ndarray:
    """Probabilities [n, C] taking each row from the logits of its head."""
    rows = [outputs[HEAD_OUTPUTS[h]][i] for i, h in enumerate(heads)]
    return sigmoid(np.stack(rows))


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
