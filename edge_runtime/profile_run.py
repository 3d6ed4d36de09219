"""``mosaic-edge profile``: every (precision, batch) configuration, measured in interleaved rounds.

All runners are opened up front and the configurations take turns, a share of the iterations each per round
(the order rotating from round to round), so load that drifts on a shared machine spreads over all of them
instead of favouring whichever ran first: stages that do not depend on the precision (read, verify, prepare,
write) come out alike. The spread (p10-p90 of the iterations) is reported beside the medians. The measuring
itself is :mod:`mosaic_edge.edge_runtime.profiling`; the output files are
:mod:`mosaic_edge.edge_runtime.profile_report`.

The INT8 safety net runs as the daemon runs it: the drift check is a per-tile stage when the export has a
calibration envelope, and an INT8 runner with a fallback (:func:`~mosaic_edge.edge_runtime.safety.open_safety_net`)
is measured twice, without and with it (``fallback`` true/false in the configuration), so the profile reports
the share of windows re-run and the throughput the fallback costs against plain INT8 on the same tiles.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.edge_runtime.profiling import (
    STAGES,
    Pipeline,
    StageClock,
    measure_latency,
    measure_throughput,
    run_one,
    runtime_pipeline,
    summarize,
)
from mosaic_edge.errors import UserError
from mosaic_edge.tile_format import write_tile

PROFILE_SCHEMA = 3


@dataclass(frozen=True)
class ProfileConfig:
    """What ``mosaic-edge profile`` measures.

    Attributes:
        model: Export directory (its manifest picks each precision's artefact for the runner's target) or
            one file.
        runner: "ort", "trt" or "auto" (as :func:`~mosaic_edge.edge_runtime.runner.open_runner`).
        batches: Tiles per batch to sweep.
        precisions: Artefact precisions compared side by side (export directory only when more than one).
        iterations / warmup: Timed and untimed batches per configuration (latency mode; throughput runs
            ``iterations`` batches too).
        rounds: The iterations of each configuration are split over this many interleaved rounds (at most
            ``iterations``).
        tiles: Folder of tiles in the spool formats (``.npz`` files / tile folders); None: synthetic
            patch-sized ``.npz`` tiles written to a scratch folder.
        threads: ONNX Runtime intra-op threads (None: the usable cores).
        synthetic_tiles: How many synthetic tiles to write and cycle through.
        power_interval_ms: tegrastats sampling interval on a Jetson.
        fallback: Measure INT8 with its borderline fallback too (as ``serve`` runs it by default).
        fallback_margin: Logit margin overriding the export's fallback policy.
    """

    model: Path
    runner: str = "ort"
    batches: tuple[int, ...] = (1, 4, 16)
    precisions: tuple[str, ...] = ("fp32",)
    iterations: int = 50
    warmup: int = 5
    rounds: int = 5
    tiles: Path | None = None
    threads: int | None = None
    synthetic_tiles: int = 32
    power_interval_ms: int = 100
    seed: int = 0
    fallback: bool = True
    fallback_margin: float | None = None

    def __post_init__(self) -> None:
        from mosaic_edge.manifest import PRECISIONS

        if self.runner not in ("auto", "ort", "trt"):
            raise UserError(f"--runner must be auto, ort or trt, got {self.runner!r}")
        if not self.batches or min(self.batches) < 1:
            raise UserError(f"batch sizes must be >= 1, got {list(self.batches)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if not self.precisions or bad:
            raise UserError(f"precisions must be among {list(PRECISIONS)}, got {list(self.precisions)}")
        if self.iterations < 1 or self.warmup < 0 or self.rounds < 1:
            raise UserError("--iterations and --rounds must be >= 1 and --warmup >= 0")
        if Path(self.model).is_file() and len(self.precisions) > 1:
            raise UserError("comparing precisions needs an export directory with manifest.json, not one file")

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.model), "runner": self.runner, "batches": list(self.batches),
                "precisions": list(self.precisions), "iterations": self.iterations, "warmup": self.warmup,
                "rounds": len(self.round_sizes()), "tiles": None if self.tiles is None else str(self.tiles),
                "threads": self.threads, "fallback": self.fallback, "fallback_margin": self.fallback_margin}

    def round_sizes(self) -> list[int]:
        """Timed iterations of one configuration in each round (they add up to ``iterations``)."""
        rounds = min(self.rounds, self.iterations)
        return [self.iterations // rounds + (1 if r < self.iterations % rounds else 0) for r in range(rounds)]


def write_synthetic_tiles(folder: Path, patch: int, n: int, seed: int = 0) -> list[Path]:
    """``n`` patch-sized ``.npz`` tiles in the spool format (S1 in dB, S2 as uint16 reflectance x 1e4): the test
    split of the synthetic benchmark, so a model trained on it meets the data it knows (inside its INT8
    calibration envelope) rather than noise that every drift check flags."""
    from mosaic_edge.contract import S1_BANDS, S2_BANDS
    from mosaic_edge.data.preprocess import stack_bands
    from mosaic_edge.data.synthetic import SyntheticConfig, SyntheticMosaic

    grid = -(-patch // 6) * 6  # the benchmark's 60 m bands need a multiple of 6; crop back to the patch
    source = SyntheticMosaic(SyntheticConfig(seed=seed, n_test=n, patch_size=grid), "test")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        raw = source.read(i)
        sar = stack_bands(raw.sar, S1_BANDS)[:, :patch, :patch]
        optical = np.rint(stack_bands(raw.optical, S2_BANDS, (grid, grid))[:, :patch, :patch]).astype(np.uint16)
        paths.append(write_tile(folder / f"synthetic-{i:04d}.npz", sar, optical))
    return paths


def list_tiles(folder: Path) -> list[Path]:
    """Tiles in a folder (or its ``incoming/``): ``.npz`` files and tile folders, not markers or dot-names."""
    folder = Path(folder)
    if (folder / "incoming").is_dir():
        folder = folder / "incoming"
    if not folder.is_dir():
        raise UserError(f"--tiles {folder}: not a directory")
    tiles = sorted(p for p in folder.iterdir()
                   if not p.name.startswith(".") and (p.is_dir() or p.suffix.lower() == ".npz"))
    if not tiles:
        raise UserError(f"--tiles {folder}: no tiles (.npz files or tile folders)")
    return tiles


@dataclass
class _Configuration:
    """One (runner, batch) configuration and what its rounds measured so far."""

    runner: Any
    batch: int
    pipeline: Pipeline
    net: Any = None  # the SafetyNet measured (None: none)
    reruns: Any = None  # its Reruns (counts)
    samples: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in (*STAGES, "end_to_end")})
    device: list[float] = field(default_factory=list)
    graph_capture: list[float] = field(default_factory=list)
    patches: float = 0.0
    next_source: int = 0
    throughput: list[dict[str, Any]] = field(default_factory=list)
    power: list[Any] = field(default_factory=list)

    def add_latency(self, lat: dict[str, Any]) -> None:
        for key, values in lat["samples_ms"].items():
            self.samples[key] += values
        self.device += list(lat["extra_samples_ms"].get("inference_device", []))
        self.graph_capture += list(lat["extra_samples_ms"].get("graph_capture", []))
        self.patches += lat["patches_per_batch"] * lat["iterations"]

    def row(self) -> dict[str, Any]:
        stages = {s: {k: v for k, v in summarize(self.samples[s]).items() if k not in ("n", "min_ms", "max_ms")}
                  for s in STAGES}
        end_to_end = summarize(self.samples["end_to_end"])
        tiles = sum(t["tiles"] for t in self.throughput)
        wall = sum(t["wall_s"] for t in self.throughput)
        power = _combine_power(self.power)
        return {
            "runner": self.runner.kind, "precision": self.runner.precision, "batch": self.batch,
            "patches_per_batch": self.patches / end_to_end["n"],
            "stages": stages, "end_to_end": end_to_end,
            "device": summarize(self.device) if self.device else None,
            "graph_capture": summarize(self.graph_capture) if self.graph_capture else None,
            "latency_per_tile_p50_ms": end_to_end["p50_ms"] / self.batch,
            "throughput_tiles_s": tiles / wall,
            "throughput": {"batch": self.batch, "batches": sum(t["batches"] for t in self.throughput),
                           "tiles": tiles, "patches": sum(t["patches"] for t in self.throughput), "wall_s": wall,
                           "throughput_tiles_s": tiles / wall,
                           "rounds_tiles_s": [t["throughput_tiles_s"] for t in self.throughput]},
            "power": None if power is None else power.to_dict(),
            "energy_per_tile_mj": None if power is None else power.energy_per_tile_mj(tiles),
            "samples_ms": {k: [round(x, 4) for x in v] for k, v in self.samples.items()},
            "fallback": self.net is not None and self.net.fallback,
            "safety": self.safety(),
        }

    def safety(self) -> dict[str, Any] | None:
        """Shares of windows drifted, borderline and re-run over every batch measured (warm-up included)."""
        if self.reruns is None:
            return None
        r = self.reruns
        out = {**self.net.describe(), "windows": r.counts["windows_checked"],
               "drifted_fraction": r.fraction("windows_drifted")}
        if self.net.fallback:
            out.update({"borderline_fraction": r.fraction("windows_borderline"),
                        "rerun_fraction": r.fraction("windows_rerun"), "fallback_batches": r.counts["fallback_batches"],
                        "throughput_cost": None})  # set once the configuration without the fallback is known
        return out


def _combine_power(summaries: list[Any]) -> Any:
    """One power summary over several measurement windows (time-weighted mean power)."""
    from mosaic_edge.edge_runtime.power import PowerSummary

    found = [p for p in summaries if p is not None]
    if not found:
        return None
    window = sum(p.window_s for p in found)
    return PowerSummary(sum(p.avg_power_w * p.window_s for p in found) / window, found[0].rail,
                        sum(p.samples for p in found), window)


def _artefact_name(runner: Any, model: Path) -> str | None:
    """The artefact file the runner runs: its own ``model_path``, else the manifest's pick for its target."""
    path = getattr(runner, "model_path", None)
    if path is not None:
        return Path(path).name
    if not model.is_dir():
        return model.name
    from mosaic_edge.manifest import Manifest

    target = "tensorrt" if runner.kind == "trt" else getattr(runner, "device", "cpu")
    try:
        return Manifest.load(model).artefact_for(target, runner.precision).name
    except Exception:  # noqa: BLE001 - the name is a label; never lose the timings over it
        return None


def _warm_up(cfg: _Configuration, sources: list[Any], warmup: int) -> None:
    scratch = StageClock()
    for i in range(warmup):
        srcs = [sources[(i * cfg.batch + k) % len(sources)] for k in range(cfg.batch)]
        run_one(cfg.pipeline, cfg.runner, srcs, i, scratch)


def run_profile(config: ProfileConfig, scratch: Path) -> dict[str, Any]:
    """Profile every (precision, batch) configuration in interleaved rounds; return the ``profile.json``
    document.

    Args:
        config: What to measure.
        scratch: Folder for synthetic tiles and result files (the caller removes it).
    """
    from mosaic_edge import environment
    from mosaic_edge.edge_runtime import power, profile_report
    from mosaic_edge.edge_runtime.runner import open_runner
    from mosaic_edge.edge_runtime.safety import Reruns, SafetyNet, open_safety_net

    env = environment.environment()
    notes: list[str] = []
    model = Path(config.model)
    with power.TegrastatsSampler(config.power_interval_ms) as sampler, contextlib.ExitStack() as stack:
        if not sampler.available:
            notes.append("no tegrastats on this machine: power and energy per tile not measured")
        runners = [stack.enter_context(open_runner(model, kind=config.runner, precision=p, threads=config.threads))
                   for p in config.precisions]
        nets = [stack.enter_context(open_safety_net(model, r, config.fallback, config.fallback_margin, config.threads))
                for r in runners]
        if config.tiles is not None:
            sources: list[Any] = list_tiles(config.tiles)
        else:
            sources = write_synthetic_tiles(scratch / "tiles", runners[0].contract.patch_size,
                                            config.synthetic_tiles, config.seed)
        configs = []
        per_tile = _windows_per_tile(sources[0], runners[0].contract)  # one export: one contract for all
        for r, net in zip(runners, nets, strict=True):
            variants = [SafetyNet(envelope=net.envelope), net] if net.fallback else [net]
            for b in config.batches:
                for v in variants:
                    reruns = Reruns(v, b * per_tile)
                    name = f"results-{r.precision}{'-fallback' if v.fallback else ''}-{b}"
                    configs.append(_Configuration(r, b, runtime_pipeline(r, scratch / name, net=v, reruns=reruns),
                                                  v, reruns))
        for cfg in configs:
            _warm_up(cfg, sources, config.warmup)
        for k, n in enumerate(config.round_sizes()):
            for cfg in configs[k % len(configs):] + configs[:k % len(configs)]:
                cfg.add_latency(measure_latency(cfg.pipeline, cfg.runner, sources, cfg.batch, n, 0,
                                                start=cfg.next_source))
                cfg.next_source += n * cfg.batch
                thr = measure_throughput(cfg.pipeline, cfg.runner, sources, cfg.batch, n)
                cfg.throughput.append(thr)
                cfg.power.append(sampler.summary(thr["t0"], thr["t1"]) if sampler.available else None)
        configurations = []
        for cfg in configs:
            row = cfg.row()
            artefact = _artefact_name(cfg.runner, model)
            row.update({"artefact": artefact, "artefact_sha256": cfg.runner.model_hash,
                        "accuracy": profile_report.accuracy_for(model, artefact) if model.is_dir() else None,
                        "environment": {"runner": cfg.runner.describe()}})
            configurations.append(row)
    _throughput_costs(configurations)
    if all(c["device"] is None for c in configurations):
        notes.append("the runner reports no copy or device times (runner.last_timings): h2d/d2h are 0 and "
                     "'inference' is the host time of infer() (on ONNX Runtime CPU there are no copies)")
    return {"schema": PROFILE_SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": config.to_dict(), "stages": list(STAGES), "environment": env,
            "configurations": configurations, "notes": notes}


def _windows_per_tile(source: Path, contract: Any) -> int:
    """Windows of one tile (the fallback batches up to a batch's windows): read once, before timing."""
    from mosaic_edge import patching
    from mosaic_edge.edge_runtime import pipeline as rt

    try:
        _files, tile = rt.read(Path(source), Path(source).name.removesuffix(".npz"), allow_sar_only=True)
        sar = tile.sar if not isinstance(tile.sar, dict) else next(iter(tile.sar.values()))
        return len(patching.windows(int(sar.shape[-2]), int(sar.shape[-1]), contract.patch_size))
    except Exception:  # noqa: BLE001 - a bad tile fails later with its own message
        return 1


def _throughput_costs(configurations: list[dict[str, Any]]) -> None:
    """``safety.throughput_cost`` of each configuration with the fallback: its throughput over that of the same
    runner and batch without it (plain INT8)."""
    plain = {(c["runner"], c["precision"], c["artefact"], c["batch"]): c["throughput_tiles_s"]
             for c in configurations if not c["fallback"]}
    for c in configurations:
        base = plain.get((c["runner"], c["precision"], c["artefact"], c["batch"]))
        if c["fallback"] and base:
            c["safety"]["throughput_cost"] = c["throughput_tiles_s"] / base


def profile_to_dir(config: ProfileConfig, out: Path) -> tuple[dict[str, Any], str]:
    """Run the profile, write ``out/profile.json`` and ``out/profile.png``; return (document, table text)."""
    from mosaic_edge.edge_runtime import profile_report

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="mosaic-profile-") as tmp:
        doc = run_profile(config, Path(tmp))
    out.mkdir(parents=True, exist_ok=True)
    note = profile_report.plot_profile(doc, out / "profile.png")
    doc["png"] = None if note else "profile.png"
    if note:
        doc["notes"].append(note)
    profile_report.write_profile(doc, out)
    return doc, profile_report.render_table(doc)
