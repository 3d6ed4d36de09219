"""Latency and throughput of the edge runtime, measured one way (STYLE.md #8).

Every number of ``mosaic-edge profile`` and of ``benchmarks/`` comes from :class:`StageClock`: warm-up, then
timed iterations; each iteration's end-to-end host time is split into the stages of :data:`STAGES` (read,
preprocess, host->device, inference, device->host, postprocess, write), which add up to it. Two modes:

* **latency** — one batch at a time, every stage synchronous, so a batch's end-to-end time is what one request
  waits (:func:`measure_latency`);
* **throughput** — the same stages pipelined over three threads (read+preprocess | inference |
  postprocess+write), as the daemon runs them; reports sustained tiles/s (:func:`measure_throughput`).

Host->device, device->host and the device-side inference time come from the runner when it reports them (the
TensorRT runner's CUDA events, via ``runner.last_timings``); a host-resident backend (ONNX Runtime on CPU) has
no copies, so those stages are 0 and the whole ``infer`` call is "inference".

No torch here, ever (edge_runtime runs on a Jetson without it).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.tile_format import write_tile

STAGES: tuple[str, ...] = ("read", "preprocess", "h2d", "inference", "d2h", "postprocess", "write")
PERCENTILES: tuple[int, ...] = (50, 90, 99)
# Keys a runner may put in ``last_timings`` after ``infer`` (milliseconds of that call): the host->device and
# device->host copies, GPU execution only, and the one-off capture + instantiation of a CUDA graph.
RUNNER_SPLIT_KEYS = {"h2d": "h2d_ms", "d2h": "d2h_ms"}
DEVICE_KEY = "device_ms"
GRAPH_CAPTURE_KEY = "graph_capture_ms"
PROFILE_SCHEMA = 1


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """Mean and p50/p90/p99 (numpy's linear interpolation between order statistics) of samples in ms."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples to summarise")
    pct = np.percentile(a, PERCENTILES)
    out = {"n": int(a.size), "mean_ms": float(a.mean())}
    out.update({f"p{q}_ms": float(v) for q, v in zip(PERCENTILES, pct, strict=True)})
    out.update({"min_ms": float(a.min()), "max_ms": float(a.max())})
    return out


class StageClock:
    """Per-stage host times of timed iterations; the one measurement code path of profiles and benchmarks.

    ``with clock.iteration(): with clock.stage("read"): ...`` — time spent in a stage several times within one
    iteration (e.g. reading each tile of a batch) is summed. Stages not entered count as 0 so every stage has
    one sample per iteration and the stage times of an iteration add up to (at most) its end-to-end time.
    """

    def __init__(self, stages: Sequence[str] = STAGES):
        self.stages = tuple(stages)
        self.samples: dict[str, list[float]] = {s: [] for s in self.stages}
        self.end_to_end: list[float] = []
        self.extra: dict[str, list[float]] = {}
        self._current: dict[str, float] | None = None

    @contextlib.contextmanager
    def iteration(self) -> Iterator[None]:
        self._current = dict.fromkeys(self.stages, 0.0)
        t0 = time.perf_counter_ns()
        try:
            yield
        finally:
            total = (time.perf_counter_ns() - t0) / 1e6
            current, self._current = self._current, None
            for s in self.stages:
                self.samples[s].append(current[s])
            self.end_to_end.append(total)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter_ns()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter_ns() - t0) / 1e6)

    def add(self, name: str, ms: float) -> None:
        """Add ``ms`` to a stage of the current iteration (used to move runner-reported copy times)."""
        if self._current is None:
            raise RuntimeError("StageClock.add outside an iteration")
        self._current[name] += ms

    def record_extra(self, name: str, ms: float) -> None:
        """A metric that is not a stage (e.g. device time from CUDA events), kept apart from the sum."""
        self.extra.setdefault(name, []).append(ms)

    def summary(self) -> dict[str, Any]:
        """``{"stages": {stage: summarize(...)}, "end_to_end": summarize(...), "extra": {...}}``."""
        return {
            "stages": {s: summarize(v) for s, v in self.samples.items()},
            "end_to_end": summarize(self.end_to_end),
            "extra": {k: summarize(v) for k, v in self.extra.items()},
        }


@dataclass(frozen=True)
class Pipeline:
    """The runtime's stages as callables, so profiling times exactly the code the daemon runs.

    Attributes:
        read: tile source -> raw tile (file I/O and decoding).
        preprocess: list of raw tiles -> model batch ``{"sar": [N,2,P,P], "optical": [N,12,P,P]}``.
        postprocess: (raw tiles, runner outputs) -> result records.
        write: (records, index of the batch) -> None (the result files).
    """

    read: Callable[[Any], Any]
    preprocess: Callable[[list[Any]], dict[str, np.ndarray]]
    postprocess: Callable[[list[Any], Mapping[str, np.ndarray]], Any]
    write: Callable[[Any, int], None]
    # ms of a raw tile's read call that were really preprocessing (the runtime reads and prepares in one go).
    preprocess_in_read_ms: Callable[[Any], float] | None = None


def _infer_timed(runner: Any, batch: Mapping[str, np.ndarray], clock: StageClock) -> Mapping[str, np.ndarray]:
    """Run one batch inside the "inference" stage, moving runner-reported copy times to h2d/d2h."""
    with clock.stage("inference"):
        out = runner.infer(batch)
    timings = getattr(runner, "last_timings", None) or {}
    for stage, key in RUNNER_SPLIT_KEYS.items():
        ms = timings.get(key)
        if ms:
            clock.add(stage, float(ms))
            clock.add("inference", -float(ms))
    if timings.get(DEVICE_KEY) is not None:
        clock.record_extra("inference_device", float(timings[DEVICE_KEY]))
    if timings.get(GRAPH_CAPTURE_KEY) is not None:
        clock.record_extra("graph_capture", float(timings[GRAPH_CAPTURE_KEY]))
    return out


def _batches(sources: Sequence[Any], batch: int, count: int) -> Iterator[list[Any]]:
    """``count`` batches of ``batch`` sources each, cycling through ``sources``."""
    i = 0
    for _ in range(count):
        yield [sources[(i + k) % len(sources)] for k in range(batch)]
        i = (i + batch) % len(sources)


def run_one(pipeline: Pipeline, runner: Any, srcs: list[Any], index: int, clock: StageClock) -> int:
    """One synchronous batch through every stage (one latency iteration); returns the patches inferred."""
    with clock.iteration():
        raws = []
        for s in srcs:
            with clock.stage("read"):
                raws.append(pipeline.read(s))
            if pipeline.preprocess_in_read_ms is not None:
                moved = pipeline.preprocess_in_read_ms(raws[-1])
                clock.add("read", -moved)
                clock.add("preprocess", moved)
        with clock.stage("preprocess"):
            batch = pipeline.preprocess(raws)
        out = _infer_timed(runner, batch, clock)
        with clock.stage("postprocess"):
            records = pipeline.postprocess(raws, out)
        with clock.stage("write"):
            pipeline.write(records, index)
    return _rows(batch)


def _rows(batch: Mapping[str, np.ndarray]) -> int:
    return int(len(next(iter(batch.values()))))


def measure_latency(pipeline: Pipeline, runner: Any, sources: Sequence[Any], batch: int, iterations: int,
                    warmup: int) -> dict[str, Any]:
    """Synchronous per-batch latency: ``warmup`` untimed batches, then ``iterations`` timed ones.

    Returns:
        ``StageClock.summary()`` plus ``batch``, ``iterations``, ``patches_per_batch`` and the raw
        per-iteration ``samples_ms`` of every stage and of ``end_to_end``; times are per batch in ms.
    """
    if iterations < 1 or warmup < 0 or batch < 1:
        raise ValueError("iterations >= 1, warmup >= 0 and batch >= 1 are required")
    scratch = StageClock()
    for i, srcs in enumerate(_batches(sources, batch, warmup)):
        run_one(pipeline, runner, srcs, i, scratch)
    clock = StageClock()
    patches = 0
    for i, srcs in enumerate(_batches(sources, batch, iterations)):
        patches += run_one(pipeline, runner, srcs, warmup + i, clock)
    return {"batch": batch, "iterations": iterations, "patches_per_batch": patches / iterations,
            **clock.summary(), "samples_ms": {**clock.samples, "end_to_end": clock.end_to_end}}


_DONE = object()


def measure_throughput(pipeline: Pipeline, runner: Any, sources: Sequence[Any], batch: int,
                       iterations: int, queue_depth: int = 4) -> dict[str, Any]:
    """Sustained tiles/s with the stages pipelined over three threads (read+preprocess | infer | post+write).

    Returns:
        ``{"batch", "batches", "tiles", "patches", "wall_s", "throughput_tiles_s", "throughput_patches_s",
        "t0", "t1"}`` (``t0``/``t1``: ``time.perf_counter`` bounds of the run, to match power samples).
    """
    inbox: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
    outbox: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for srcs in _batches(sources, batch, iterations):
                if errors:
                    break
                raws = [pipeline.read(s) for s in srcs]
                inbox.put((raws, pipeline.preprocess(raws)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
        finally:
            inbox.put(_DONE)

    def consume() -> None:
        index = 0
        while (item := outbox.get()) is not _DONE:
            try:
                if not errors:
                    pipeline.write(pipeline.postprocess(*item), index)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)
            index += 1

    threads = [threading.Thread(target=produce, daemon=True), threading.Thread(target=consume, daemon=True)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    batches = patches = 0
    try:
        while (item := inbox.get()) is not _DONE:
            if errors:
                continue  # drain so the producer can finish
            raws, arrays = item
            outbox.put((raws, runner.infer(arrays)))
            batches += 1
            patches += _rows(arrays)
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)
        while inbox.get() is not _DONE:
            pass
    finally:
        outbox.put(_DONE)
        for t in threads:
            t.join()
    t1 = time.perf_counter()
    if errors:
        raise errors[0]
    tiles = batches * batch
    return {"batch": batch, "batches": batches, "tiles": tiles, "patches": patches, "wall_s": t1 - t0,
            "throughput_tiles_s": tiles / (t1 - t0), "throughput_patches_s": patches / (t1 - t0),
            "t0": t0, "t1": t1}


# ---- the profile: configurations x stages, with the environment ---------------------------------------
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
        tiles: Folder of tiles in the spool formats (``.npz`` files / tile folders); None: synthetic
            patch-sized ``.npz`` tiles written to a scratch folder.
        threads: ONNX Runtime intra-op threads (None: ORT default).
        synthetic_tiles: How many synthetic tiles to write and cycle through.
        power_interval_ms: tegrastats sampling interval on a Jetson.
    """

    model: Path
    runner: str = "ort"
    batches: tuple[int, ...] = (1, 4, 16)
    precisions: tuple[str, ...] = ("fp32",)
    iterations: int = 50
    warmup: int = 5
    tiles: Path | None = None
    threads: int | None = None
    synthetic_tiles: int = 32
    power_interval_ms: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        from mosaic_edge.errors import UserError
        from mosaic_edge.manifest import PRECISIONS

        if self.runner not in ("auto", "ort", "trt"):
            raise UserError(f"--runner must be auto, ort or trt, got {self.runner!r}")
        if not self.batches or min(self.batches) < 1:
            raise UserError(f"batch sizes must be >= 1, got {list(self.batches)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if not self.precisions or bad:
            raise UserError(f"precisions must be among {list(PRECISIONS)}, got {list(self.precisions)}")
        if self.iterations < 1 or self.warmup < 0:
            raise UserError("--iterations must be >= 1 and --warmup >= 0")
        if Path(self.model).is_file() and len(self.precisions) > 1:
            raise UserError("comparing precisions needs an export directory with manifest.json, not one file")

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.model), "runner": self.runner, "batches": list(self.batches),
                "precisions": list(self.precisions), "iterations": self.iterations, "warmup": self.warmup,
                "tiles": None if self.tiles is None else str(self.tiles), "threads": self.threads}


def write_synthetic_tiles(folder: Path, patch: int, n: int, seed: int = 0) -> list[Path]:
    """``n`` patch-sized ``.npz`` tiles in the spool format: S1 in dB, S2 as uint16 reflectance x 1e4."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"synthetic-{i:04d}.npz"
        sar = rng.normal(-15.0, 5.0, size=(2, patch, patch)).astype(np.float32)
        optical = rng.integers(1, 5000, size=(12, patch, patch), dtype=np.uint16)
        write_tile(path, sar, optical)
        paths.append(path)
    return paths


def list_tiles(folder: Path) -> list[Path]:
    """Tiles in a folder (or its ``incoming/``): ``.npz`` files and tile folders, not markers or dot-names."""
    from mosaic_edge.errors import UserError

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


def runtime_pipeline(runner: Any, results_root: Path) -> Pipeline:
    """The daemon's own steps (``edge_runtime.pipeline``), writing results atomically into a scratch spool."""
    from mosaic_edge.edge_runtime import pipeline as rt
    from mosaic_edge.edge_runtime.spool import Spool

    spool = Spool(results_root)
    contract = runner.contract

    def read(path: Path) -> Any:
        return rt.load_job(path, path.name.removesuffix(".npz"), contract, allow_sar_only=True)

    def preprocess(jobs: list[Any]) -> dict[str, np.ndarray]:
        return {"sar": np.concatenate([j.sar for j in jobs]),
                "optical": np.concatenate([j.optical for j in jobs])}

    def postprocess(jobs: list[Any], out: Mapping[str, np.ndarray]) -> list[tuple[str, bytes, bytes | None]]:
        results, start = [], 0
        for job in jobs:
            rt.store_outputs(job, 0, {k: v[start:start + job.n] for k, v in out.items()})
            start += job.n
            _, jsonl, geojson = rt.result_files(job, runner)
            results.append((job.tile_id, jsonl, geojson))
        return results

    def write(results: list[tuple[str, bytes, bytes | None]], index: int) -> None:
        for tile_id, jsonl, geojson in results:
            spool.write_results(tile_id, jsonl, geojson)

    return Pipeline(read, preprocess, postprocess, write,
                    preprocess_in_read_ms=lambda job: float(job.timings_ms.get("preprocess", 0.0)))


def profile_runner(runner: Any, sources: Sequence[Path], config: ProfileConfig, scratch: Path,
                   sampler: Any = None) -> list[dict[str, Any]]:
    """Latency and throughput of one active runner at every batch size of ``config``."""
    rows = []
    for batch in config.batches:
        pipe = runtime_pipeline(runner, scratch / f"results-{runner.precision}-{batch}")
        lat = measure_latency(pipe, runner, sources, batch, config.iterations, config.warmup)
        thr = measure_throughput(pipe, runner, sources, batch, config.iterations)
        power = sampler.summary(thr["t0"], thr["t1"]) if sampler is not None else None
        stages = {k: {m: v[m] for m in ("mean_ms", "p50_ms", "p90_ms", "p99_ms")}
                  for k, v in lat["stages"].items()}
        rows.append({
            "runner": runner.kind, "precision": runner.precision, "batch": batch,
            "patches_per_batch": lat["patches_per_batch"],
            "stages": stages,
            "end_to_end": lat["end_to_end"],
            "device": lat["extra"].get("inference_device"),
            "graph_capture": lat["extra"].get("graph_capture"),
            "latency_per_tile_p50_ms": lat["end_to_end"]["p50_ms"] / batch,
            "throughput_tiles_s": thr["throughput_tiles_s"],
            "throughput": {k: v for k, v in thr.items() if k not in ("t0", "t1")},
            "power": None if power is None else power.to_dict(),
            "energy_per_tile_mj": None if power is None else power.energy_per_tile_mj(thr["tiles"]),
            "samples_ms": {k: [round(x, 4) for x in v] for k, v in lat["samples_ms"].items()},
        })
    return rows


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


def run_profile(config: ProfileConfig, scratch: Path) -> dict[str, Any]:
    """Profile every (precision, batch) configuration; return the ``profile.json`` document.

    Args:
        config: What to measure.
        scratch: Folder for synthetic tiles and result files (the caller removes it).
    """
    from mosaic_edge.edge_runtime import power, profile_report
    from mosaic_edge.edge_runtime.runner import open_runner

    env = power.environment()
    configurations: list[dict[str, Any]] = []
    notes: list[str] = []
    model = Path(config.model)
    with power.TegrastatsSampler(config.power_interval_ms) as sampler:
        if not sampler.available:
            notes.append("no tegrastats on this machine: power and energy per tile not measured")
        for precision in config.precisions:
            runner = open_runner(model, kind=config.runner, precision=precision, threads=config.threads)
            with runner:
                if config.tiles is not None:
                    sources = list_tiles(config.tiles)
                else:
                    sources = write_synthetic_tiles(scratch / "tiles", runner.contract.patch_size,
                                                    config.synthetic_tiles, config.seed)
                rows = profile_runner(runner, sources, config, scratch,
                                      sampler if sampler.available else None)
                artefact = _artefact_name(runner, model)
                accuracy = profile_report.accuracy_for(model, artefact) if model.is_dir() else None
                for row in rows:
                    row.update({"artefact": artefact, "artefact_sha256": runner.model_hash,
                                "accuracy": accuracy, "environment": {"runner": runner.describe()}})
                configurations += rows
    if all(c["device"] is None for c in configurations):
        notes.append("the runner reports no copy or device times (runner.last_timings): h2d/d2h are 0 and "
                     "'inference' is the host time of infer() (on ONNX Runtime CPU there are no copies)")
    return {"schema": PROFILE_SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": config.to_dict(), "stages": list(STAGES), "environment": env,
            "configurations": configurations, "notes": notes}


def profile_to_dir(config: ProfileConfig, out: Path) -> tuple[dict[str, Any], str]:
    """Run the profile, write ``out/profile.json`` and ``out/profile.png``; return (document, table text)."""
    import tempfile

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
