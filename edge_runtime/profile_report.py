"""Output of ``mosaic-edge profile``: ``profile.json``, the table, ``profile.png``, and accuracy lookup.

matplotlib is the optional extra ``plot``; it is imported only inside :func:`plot_profile`, which skips the
PNG with a note when it is missing (a Jetson image often lacks it). Never torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Keys of every configuration in profile.json (tests check them; readers may rely on them).
CONFIG_KEYS = ("runner", "precision", "batch", "artefact", "artefact_sha256", "stages", "end_to_end",
               "throughput_tiles_s", "environment", "accuracy", "power", "energy_per_tile_mj", "fallback", "safety")
STAT_KEYS = ("mean_ms", "p10_ms", "p50_ms", "p90_ms", "p99_ms")
ACCURACY_KEYS = ("macro_map", "micro_map", "macro_map_delta_pts", "agreement", "max_prob_diff")
# Column labels: h2d/d2h are the copies (CUDA events), "infer host" the host time of infer() without them, and
# "gpu exec" the GPU execution alone (CUDA events; n/a on a host-resident runner).
_SHORT = {"read": "read", "verify": "verify", "prepare": "prep", "cut": "cut", "drift": "drift", "h2d": "h2d copy",
          "inference": "infer host", "d2h": "d2h copy", "fallback": "fallback", "postprocess": "post",
          "write": "write"}


def label(cfg: Mapping[str, Any]) -> str:
    """The precision column: ``int8+fp32`` for INT8 with its fallback (to fp32), else the precision."""
    fb = (cfg.get("safety") or {}).get("fallback") if cfg.get("fallback") else None
    return f"{cfg['precision']}+{fb['precision']}" if fb else str(cfg["precision"])


def accuracy_for(model_dir: Path, artefact: str | None) -> dict[str, Any] | None:
    """Accuracy of ``artefact`` per evaluation set from the export's ``report.json`` (None when absent).

    Returns:
        ``{"gate_set": name, "sets": {set: {macro_map, micro_map, macro_map_delta_pts, agreement,
        max_prob_diff}}}`` — the deltas are against the fp32 ONNX, as export computed them.
    """
    path = Path(model_dir) / "report.json"
    if artefact is None or not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
        sets = {name: {k: ds["artefacts"][artefact].get(k) for k in ACCURACY_KEYS}
                for name, ds in report.get("datasets", {}).items() if artefact in ds.get("artefacts", {})}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # an unreadable report must not cost the timings; the table shows n/a
    if not sets:
        return None
    return {"gate_set": (report.get("gate") or {}).get("set"), "sets": sets}


def validate_profile(doc: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first key or value of ``doc`` that breaks the profile.json schema."""
    for key in ("schema", "created", "settings", "stages", "environment", "configurations", "notes"):
        if key not in doc:
            raise ValueError(f"profile.json: missing {key!r}")
    if not doc["configurations"]:
        raise ValueError("profile.json: no configurations")
    for i, cfg in enumerate(doc["configurations"]):
        missing = [k for k in CONFIG_KEYS if k not in cfg]
        if missing:
            raise ValueError(f"configuration {i}: missing {missing}")
        for stage in doc["stages"]:
            stats = cfg["stages"].get(stage)
            bad = stats is None or any(not isinstance(stats.get(k), (int, float)) or stats[k] < 0
                                       for k in STAT_KEYS)
            if bad:
                raise ValueError(f"configuration {i}: stage {stage!r} lacks non-negative {list(STAT_KEYS)}")
            if not stats["p10_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]:
                raise ValueError(f"configuration {i}: stage {stage!r} percentiles are not ordered")
        if not cfg["throughput_tiles_s"] > 0:
            raise ValueError(f"configuration {i}: throughput_tiles_s must be > 0")


def write_profile(doc: Mapping[str, Any], out: Path) -> Path:
    """Write ``out/profile.json`` atomically (a reader never sees half a file); return its path."""
    validate_profile(doc)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "profile.json"
    tmp = out / ".profile.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _delta(cfg: Mapping[str, Any]) -> str:
    acc = cfg.get("accuracy")
    if not acc:
        return "n/a"
    row = acc["sets"].get(acc.get("gate_set")) or next(iter(acc["sets"].values()))
    d = row.get("macro_map_delta_pts")
    return "n/a" if d is None else f"{d:+.2f}"


def _grid(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _span(stats: Mapping[str, Any], spec: str) -> str:
    """``p10-p90`` of a stage (n/a in documents of schema 1, which have no p10)."""
    if "p10_ms" not in stats or "p90_ms" not in stats:
        return "n/a"
    return f"{format(stats['p10_ms'], spec)}-{format(stats['p90_ms'], spec)}"


def _rounds(cfg: Mapping[str, Any]) -> str:
    rates = cfg.get("throughput", {}).get("rounds_tiles_s") or []
    return f"{min(rates):.1f}-{max(rates):.1f}" if rates else "n/a"


def render_table(doc: Mapping[str, Any]) -> str:
    """Fixed-width tables: per-stage p50 (ms per batch), end-to-end p50/p90/p99, tiles/s, mJ/tile, ΔmAP; then
    the spread (p10-p90) of every stage and the range of the rounds' throughput."""
    stages = list(doc["stages"])
    configs = doc["configurations"]
    head = (["runner", "prec", "batch"] + [_SHORT.get(s, s) for s in stages]
            + ["gpu exec", "e2e p50", "p90", "p99", "ms/tile", "tiles/s", "mJ/tile", "ΔmAP pts"])
    rows = []
    for cfg in configs:
        e2e = cfg["end_to_end"]
        rows.append([cfg["runner"], label(cfg), str(cfg["batch"])]
                    + [_fmt(cfg["stages"][s]["p50_ms"], ".3f") for s in stages]
                    + [_fmt((cfg.get("device") or {}).get("p50_ms"), ".3f")]
                    + [_fmt(e2e["p50_ms"]), _fmt(e2e["p90_ms"]), _fmt(e2e["p99_ms"]),
                       _fmt(e2e["p50_ms"] / cfg["batch"]), _fmt(cfg["throughput_tiles_s"], ".1f"),
                       _fmt(cfg["energy_per_tile_mj"], ".1f"), _delta(cfg)])
    spread_head = ["runner", "prec", "batch"] + [_SHORT.get(s, s) for s in stages] + ["e2e", "tiles/s rounds"]
    spread = [[c["runner"], label(c), str(c["batch"])] + [_span(c["stages"][s], ".3f") for s in stages]
              + [_span(c["end_to_end"], ".2f"), _rounds(c)] for c in configs]
    rounds = (doc.get("settings") or {}).get("rounds")
    out = ["latency: ms per batch, synchronous; stage columns are p50; throughput: pipelined"
           + (f"; configurations interleaved in {rounds} rounds" if rounds else ""),
           *_grid(head, rows), "", "spread: p10-p90 ms per batch; throughput: slowest-fastest round",
           *_grid(spread_head, spread)]
    out += _safety_lines(configs)
    env = doc["environment"]
    cpu = env.get("cpu") or {}
    vers = env.get("versions") or {}
    shown = ("onnxruntime", "tensorrt", "cuda", "jetpack")
    out.append(f"cpu: {cpu.get('model')} ({cpu.get('usable_threads')} threads usable); "
               + ", ".join(f"{k} {v}" for k, v in vers.items() if v and k in shown))
    jetson = env.get("jetson")
    if jetson:
        out.append(f"jetson: {jetson.get('model')}, power mode {jetson.get('power_mode')}")
    arts = {(c["precision"], c["artefact"], c["artefact_sha256"][:12]) for c in doc["configurations"]}
    out += [f"artefact {p}: {a} sha256 {h}..." for p, a, h in sorted(arts, key=str)]
    out += [f"note: {n}" for n in doc.get("notes", [])]
    return "\n".join(out)


def _safety_lines(configs: list[Mapping[str, Any]]) -> list[str]:
    """The INT8 safety net per configuration that has one: drifted and re-run shares, throughput cost."""
    lines = []
    for c in configs:
        safety = c.get("safety") or {}
        if not safety.get("drift_check") and not c.get("fallback"):
            continue
        text = (f"safety net {c['runner']} {label(c)} batch {c['batch']}: {safety.get('windows', 0)} windows, "
                f"{100 * safety.get('drifted_fraction', 0.0):.1f}% drifted")
        if c.get("fallback"):
            cost = safety.get("throughput_cost")
            text += (f", {100 * safety['rerun_fraction']:.1f}% re-run with {safety['fallback']['precision']} "
                     f"(margin {safety['fallback']['margin_logit']:.3g} logit; "
                     f"{100 * safety['borderline_fraction']:.1f}% borderline); throughput "
                     + ("n/a" if cost is None else f"{cost:.2f}x") + f" of {c['precision']} without the fallback")
        lines.append(text)
    return ([""] + lines) if lines else []


def plot_profile(doc: Mapping[str, Any], path: Path) -> str | None:
    """Write the PNG (per-stage latency distributions; throughput vs batch); return a note when skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'mosaic-edge[plot]'): profile.png skipped"
    configs = doc["configurations"]
    stages = [*doc["stages"], "end_to_end"]
    precisions = list(dict.fromkeys(label(c) for c in configs))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [2, 1]})
    smallest = min(c["batch"] for c in configs)
    width = 0.8 / max(1, len(precisions))
    for j, prec in enumerate(precisions):
        cfg = next(c for c in configs if label(c) == prec and c["batch"] == smallest)
        # A stage that took no time (no copies on a host-resident runner) has no box on a log axis.
        positive = [[x for x in cfg["samples_ms"].get(s, []) if x > 0] for s in stages]
        drawn = [(i, xs) for i, xs in enumerate(positive) if xs]
        pos = [i + (j - (len(precisions) - 1) / 2) * width for i, _ in drawn]
        bp = ax1.boxplot([xs for _, xs in drawn], positions=pos, widths=width * 0.9, patch_artist=True,
                         whis=(10, 90), showfliers=False)
        for box in bp["boxes"]:
            box.set_facecolor(f"C{j}")
        ax1.plot([], [], color=f"C{j}", lw=6, label=prec)
    ax1.set_xticks(range(len(stages)), stages, rotation=30)
    ax1.set_yscale("log")
    ax1.set_ylabel(f"ms per batch of {smallest} (synchronous)")
    rounds = (doc.get("settings") or {}).get("rounds")
    ax1.set_title("latency per stage: box p25-p75, whiskers p10-p90"
                  + (f"; configurations interleaved in {rounds} rounds" if rounds else ""), fontsize=9)
    ax1.legend()
    for j, prec in enumerate(precisions):
        mine = sorted((c for c in configs if label(c) == prec), key=lambda c: c["batch"])
        xs, ys = [c["batch"] for c in mine], [c["throughput_tiles_s"] for c in mine]
        ax2.plot(xs, ys, "o-", color=f"C{j}", label=prec)
        spans = [c.get("throughput", {}).get("rounds_tiles_s") or [c["throughput_tiles_s"]] for c in mine]
        ax2.fill_between(xs, [min(r) for r in spans], [max(r) for r in spans], color=f"C{j}", alpha=0.2)
    batches = sorted({c["batch"] for c in configs})
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(batches, [str(b) for b in batches])
    ax2.minorticks_off()
    ax2.set_xlabel("batch (tiles)")
    ax2.set_ylabel("tiles/s (pipelined; band: slowest-fastest round)")
    ax2.set_title("throughput vs batch")
    ax2.legend()
    fig.suptitle(f"mosaic-edge profile — {configs[0]['runner']} — {doc['environment'].get('platform', '')}",
                 fontsize=9)
    # fixed margins: tight_layout measures every tick label and costs seconds on a small board
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.2, top=0.88, wspace=0.25)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None
