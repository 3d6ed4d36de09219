"""From logits to output records: sigmoid, the contract's thresholds, JSON Lines and GeoJSON.

One JSON Lines record per patch::

    {"tile": "T1", "patch": 0, "window": {"row": 0, "col": 0, "height": 120, "width": 120},
     "bounds": [minx, miny, maxx, maxy] | null, "crs": "EPSG:32633" | null,
     "head": "fused" | "sar", "labels": [{"name": ..., "score": ...}, ...],   # score >= class threshold
     "scores": {class: probability, ...}, "optical_invalid_fraction": 0.0,
     "model_hash": "...", "runner": "ort", "precision": "fp32", "input_sha256": "...",
     "timings_ms": {"read": .., "verify": .., "prepare": .., "cut": .., "queue": .., "infer": ..},
     "drift": {"drifted": false, "beyond": 0.0042, "distance": 4.17, "band": "B12"} | null,
     "answered_by": "int8" | "fp16" | "fp32", "rerun": null | "borderline" | "drifted" | "borderline+drifted"}

``head`` says which logits answered: the fused head, or the SAR head when the patch has no usable optical
data. ``bounds`` are in the tile's own CRS (``crs``), as its grid.

Before the window records, one summary of the tile (:func:`tile_summary`)::

    {"type": "tile", "tile": "T1", "windows": 100, "size": {"height": 1200, "width": 1200},
     "heads": {"fused": 97, "sar": 3}, "windows_without_labels": 4,
     "labels": [{"name": ..., "windows": 61, "fraction": 0.61, "max_score": 0.98}, ...],   # most windows first
     "bounds": [...] | null, "crs": ... | null, "bbox": [west, south, east, north] | null,  # bbox: WGS 84
     "model_hash": ..., "runner": ..., "precision": ..., "input_sha256": ..., "timings_ms": {...},
     "windows_drifted": 2 | null, "windows_rerun": 5}     # the INT8 safety net's counts (drifted: null without one)

GeoJSON (:func:`to_geojson`, georeferenced tiles, pyproj installed): RFC 7946 -- WGS 84 longitude/latitude,
counter-clockwise exterior rings, ``bbox`` members, no ``crs`` member, footprints densified and cut at the
antimeridian (:mod:`mosaic_edge.edge_runtime.geo_output`). The first feature is the tile's footprint carrying
the summary (``"type": "tile"``), then one feature per window (``"type": "window"``); both keep the native
``crs`` and ``bounds`` as properties. Without pyproj a georeferenced tile gets no GeoJSON (one warning per
process), JSON Lines as always.

The INT8 safety net's fields (:class:`SafetyFields`; ``precision`` and ``model_hash`` name the artefact serving
the tile): ``drift`` -- null when the export has no calibration envelope, else whether the window lies outside
it (``drifted``), the fraction of its sampled values beyond the envelope's quantiles (``beyond``), the
Mahalanobis distance of its band statistics (``distance``; null without them) and the band with the most values
beyond (``band``; null when none is); ``answered_by`` -- the precision whose logits answered; ``rerun`` -- why
the fallback re-ran the window at higher precision (null: it did not).

:func:`tile_records` builds the window records as dicts (library use, tests); :func:`encode_tile` writes the
same bytes as ``to_jsonl([tile_summary(...), *tile_records(...)])`` and ``to_geojson(...)`` straight from the
arrays, with the per-tile parts serialised once instead of per patch.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract, sigmoid
from mosaic_edge.data.tiff import GeoInfo
from mosaic_edge.edge_runtime.logs import get_logger
from mosaic_edge.envelope import DriftCheck
from mosaic_edge.patching import Window

# head name in records -> contract output holding its logits
HEAD_OUTPUTS = {"fused": "logits", "sar": "logits_sar"}
SCORE_DIGITS = 6
BEYOND_DIGITS, DISTANCE_DIGITS = 4, 2
# Why the fallback re-ran a window: bits of SafetyFields.rerun, and the record's text for each combination.
RERUN_BORDERLINE, RERUN_DRIFTED = 1, 2
RERUN_REASONS: dict[int, str | None] = {0: None, RERUN_BORDERLINE: "borderline", RERUN_DRIFTED: "drifted",
                                        RERUN_BORDERLINE | RERUN_DRIFTED: "borderline+drifted"}


@dataclass(frozen=True)
class SafetyFields:
    """The INT8 safety net's per-window record fields of one tile (see the module doc).

    Attributes:
        precision: Precision of the runner serving the tile (answers every window the fallback did not).
        drift: The tile's drift check (None: no envelope); ``bands`` names its columns.
        answered_fallback: bool per window, answered by the fallback runner (None: none was).
        fallback_precision: Precision of that runner.
        rerun: uint8 per window, bits of :data:`RERUN_REASONS` (None: none re-run).
    """

    precision: str
    drift: DriftCheck | None = None
    bands: tuple[str, ...] = ()
    answered_fallback: np.ndarray | None = None
    fallback_precision: str | None = None
    rerun: np.ndarray | None = None

    def _drift_parts(self) -> tuple[list[bool], list[float], list[float | None], list[str | None]]:
        d = self.drift
        assert d is not None
        beyond = np.round(d.combined, BEYOND_DIGITS).tolist()
        distance = [None if not np.isfinite(x) else x for x in np.round(d.distance, DISTANCE_DIGITS).tolist()]
        worst = d.per_band.argmax(axis=1) if d.per_band.size else np.zeros(len(beyond), int)
        any_beyond = d.per_band.max(axis=1) > 0 if d.per_band.size else np.zeros(len(beyond), bool)
        band = [self.bands[k] if hit and k < len(self.bands) else None
                for k, hit in zip(worst.tolist(), any_beyond.tolist(), strict=True)]
        return d.drifted.tolist(), beyond, distance, band

    def _answered(self, n: int) -> list[str]:
        if self.answered_fallback is None or self.fallback_precision is None:
            return [self.precision] * n
        names = (self.precision, self.fallback_precision)
        return [names[int(x)] for x in self.answered_fallback.tolist()]

    def _reasons(self, n: int) -> list[str | None]:
        if self.rerun is None:
            return [None] * n
        return [RERUN_REASONS[int(x)] for x in self.rerun.tolist()]

    def counts(self) -> dict[str, int | None]:
        """The tile summary's counts: windows drifted (None without an envelope) and re-run."""
        return {"windows_drifted": None if self.drift is None else int(self.drift.drifted.sum()),
                "windows_rerun": 0 if self.answered_fallback is None else int(self.answered_fallback.sum())}

    def values(self, n: int) -> dict[str, list[Any]]:
        """Per key, the python value of each of the ``n`` windows (what :func:`tile_records` puts in)."""
        if self.drift is None:
            drift: list[Any] = [None] * n
        else:
            drift = [{"drifted": f, "beyond": b, "distance": x, "band": k}
                     for f, b, x, k in zip(*self._drift_parts(), strict=True)]
        return {"drift": drift, "answered_by": self._answered(n), "rerun": self._reasons(n)}

    def encoded(self, n: int) -> dict[str, list[str]]:
        """Per key, ``json.dumps(value, sort_keys=True)`` of each window's value, formatted directly."""
        if self.drift is None:
            drift = ["null"] * n
        else:
            quoted = {k: json.dumps(k) for k in (*self.bands, None)}
            drift = [f'{{"band": {quoted[k]}, "beyond": {b!r}, "distance": {"null" if x is None else repr(x)}, '
                     f'"drifted": {"true" if f else "false"}}}'
                     for f, b, x, k in zip(*self._drift_parts(), strict=True)]
        answered = [f'"{a}"' for a in self._answered(n)]
        reasons = ["null" if r is None else f'"{r}"' for r in self._reasons(n)]
        return {"drift": drift, "answered_by": answered, "rerun": reasons}


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
    safety: SafetyFields | None = None,
) -> list[dict[str, Any]]:
    """The JSON Lines records of one tile (``extra`` adds model hash, runner, timings, input hash; ``safety``
    the safety net's per-window fields)."""
    thresholds = np.asarray(contract.thresholds)
    per_patch = safety.values(len(wins)) if safety is not None else {}
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
            **{k: v[i] for k, v in per_patch.items()},
        })
    return records


def to_jsonl(records: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in records).encode()


def to_geojson(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> bytes | None:
    """RFC 7946 FeatureCollection of a tile (its summary's footprint, then its windows), or None when the tile
    is not georeferenced or pyproj is missing (see the module docstring)."""
    if not records or records[0].get("bounds") is None or not records[0].get("crs"):
        return None
    r0 = records[0]
    pixel = (r0["bounds"][2] - r0["bounds"][0]) / r0["window"]["width"]
    props = [_window_properties(r["tile"], r["patch"], r["head"], [lab["name"] for lab in r["labels"]],
                                r["scores"], r.get("model_hash"), r["window"], r["bounds"], r["crs"])
             for r in records]
    tile = None if summary is None else (summary["bounds"], _tile_properties(summary))
    return _feature_collection(r0["crs"], pixel, tile, [r["bounds"] for r in records], props)[0]


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
    safety: SafetyFields | None = None,
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
    per_patch = safety.encoded(len(wins)) if safety is not None else {}
    keys = sorted([*fixed, "bounds", "head", "labels", "optical_invalid_fraction", "patch", "scores", "window",
                   *per_patch])
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
    lines: list[str] = []
    props: list[dict[str, Any]] = []
    rects: list[list[float]] = []
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
            **{k: v[i] for k, v in per_patch.items()},
        }
        lines.append("".join(p if j % 2 == 0 else fields[p] for j, p in enumerate(parts)))
        if bounds_r is not None and geo is not None and geo.crs:
            props.append(_window_properties(
                tile_id, i, head, [contract.classes[k] for k in order],
                {c: round(v, SCORE_DIGITS) for c, v in zip(contract.classes, s.tolist(), strict=True)},
                extra.get("model_hash"), win.to_dict(), bounds_r, geo.crs))
            rects.append(bounds_r)
    summary = tile_summary(tile_id, wins, heads, scores, contract, geo, extra, with_bbox=False, safety=safety)
    geojson = None
    if rects and geo is not None and geo.crs:
        pixel = (rects[0][2] - rects[0][0]) / wins[0].width
        geojson, summary["bbox"] = _feature_collection(geo.crs, pixel, (summary["bounds"], _tile_properties(summary)),
                                                       rects, props)
    return (_dumps(summary) + "\n" + "".join(lines)).encode(), geojson


# ---- the tile summary and RFC 7946 GeoJSON -----------------------------------------------------------------
def tile_summary(tile_id: str, wins: Sequence[Window], heads: Sequence[str], scores: np.ndarray, contract: Contract,
                 geo: GeoInfo | None, extra: Mapping[str, Any], with_bbox: bool = True,
                 safety: SafetyFields | None = None) -> dict[str, Any]:
    """The tile-level record (first line of the JSON Lines file; see the module docstring): which labels occur in
    any window and in what fraction of the windows, which heads answered, the footprint (``with_bbox``: its WGS
    84 bbox, else None for the caller to fill), and with ``safety`` how many windows drifted and were re-run."""
    n = len(wins)
    above = scores[:n] >= np.asarray(contract.thresholds)
    counts = above.sum(axis=0)
    present = np.flatnonzero(counts)
    best = scores[:n, present].max(axis=0).tolist() if n else []
    classes = contract.classes
    labels = [{"fraction": round(k / n, 4), "max_score": round(m, SCORE_DIGITS), "name": classes[c], "windows": k}
              for c, k, m in sorted(zip(present.tolist(), counts[present].tolist(), best, strict=True),
                                    key=lambda t: (-t[1], classes[t[0]]))]
    last = wins[-1] if n else None  # windows are row-major and the last is flush with the far corner
    height, width = (last.row + last.height, last.col + last.width) if last else (0, 0)
    bounds = None if geo is None else [round(v, 6) for v in geo.window_bounds(0, 0, height, width)]
    return {"type": "tile", "tile": tile_id, "windows": n, "size": {"height": height, "width": width},
            "heads": dict(sorted(Counter(heads).items())),
            "windows_without_labels": int(n - above.any(axis=1).sum()), "labels": labels,
            "bounds": bounds, "crs": None if geo is None else geo.crs,
            "bbox": _tile_bbox(geo, bounds, wins) if with_bbox else None, **extra,
            **(safety.counts() if safety is not None else {})}


_warned_no_pyproj = False


def _geo_output() -> Any:
    """:mod:`geo_output` when pyproj is importable, else None after one warning per process."""
    global _warned_no_pyproj
    from mosaic_edge.edge_runtime import geo_output
    from mosaic_edge.optional import available

    if available("pyproj"):
        return geo_output
    if not _warned_no_pyproj:
        _warned_no_pyproj = True
        get_logger().warning("pyproj is not installed: georeferenced tiles get JSON Lines only, no GeoJSON; "
                             "install it with `pip install 'mosaic-edge[runtime]'`")
    return None


def _tile_bbox(geo: GeoInfo | None, bounds: list[float] | None, wins: Sequence[Window]) -> list[float] | None:
    """WGS 84 ``[west, south, east, north]`` of the tile, None without georeferencing or pyproj."""
    if geo is None or bounds is None or not geo.crs or not wins or (go := _geo_output()) is None:
        return None
    return list(go.footprints(geo.crs, [bounds], abs(geo.transform[0]))[0].bbox)


def _window_properties(tile_id: str, patch: int, head: str, labels: list[str], scores: Mapping[str, float],
                       model_hash: Any, window: Mapping[str, int], bounds: Sequence[float], crs: str
                       ) -> dict[str, Any]:
    return {"type": "window", "tile": tile_id, "patch": patch, "head": head, "labels": labels, "scores": scores,
            "model_hash": model_hash, "window": dict(window), "crs": crs, "bounds": list(bounds)}


def _tile_properties(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "tile", "tile": summary["tile"], "windows": summary["windows"], "heads": summary["heads"],
            "labels": [lab["name"] for lab in summary["labels"]],
            "label_fractions": {lab["name"]: lab["fraction"] for lab in summary["labels"]},
            "windows_without_labels": summary["windows_without_labels"], "size": summary["size"],
            "model_hash": summary.get("model_hash"), "input_sha256": summary.get("input_sha256"),
            "crs": summary["crs"], "bounds": summary["bounds"]}


def _feature_collection(crs: str, pixel: float, tile: tuple[Sequence[float], dict[str, Any]] | None,
                        rects: Sequence[Sequence[float]], props: Sequence[dict[str, Any]]
                        ) -> tuple[bytes | None, list[float] | None]:
    """The RFC 7946 FeatureCollection bytes (the tile's footprint feature when given, then one per window) and
    the collection's bbox; ``(None, None)`` without pyproj."""
    go = _geo_output()
    if go is None:
        return None, None
    shapes = go.footprints(crs, ([tile[0]] if tile else []) + list(rects), pixel)
    features = []
    for fp, p in zip(shapes, ([tile[1]] if tile else []) + list(props), strict=True):
        features.append({"type": "Feature", "bbox": list(fp.bbox), "geometry": fp.geometry(), "properties": p})
    fc: dict[str, Any] = {"type": "FeatureCollection"}
    if tile is not None:
        fc["bbox"] = features[0]["bbox"]
    fc["features"] = features
    return (json.dumps(fc, allow_nan=False) + "\n").encode(), fc.get("bbox")
