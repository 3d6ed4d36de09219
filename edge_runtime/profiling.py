"""Latency and throughput of the edge runtime, measured one way (STYLE.md #8): the measurement engine.

Every number of ``mosaic-edge profile`` (:mod:`mosaic_edge.edge_runtime.profile_run`) and of ``benchmarks/``
comes from :class:`StageClock`: warm-up, then timed iterations; each iteration's end-to-end host time is split
into the stages of :data:`STAGES`, which add up to it. Each stage is a function of the runtime
(:mod:`mosaic_edge.edge_runtime.pipeline`) timed on its own -- read, verify, prepare, the window plan and the
drift check per tile, cutting the windows into the batch, inference, the INT8 fallback's re-runs, postprocess,
write -- so nothing is reattributed after the fact. Two modes:

* **latency** -- one batch at a time, every stage synchronous, so a batch's end-to-end time is what one request
  waits (:func:`measure_latency`);
* **throughput** -- the same stages pipelined over three threads as the daemon runs them (per-tile stages |
  cut + inference + fallback | postprocess + write); reports sustained tiles/s (:func:`measure_throughput`).

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

STAGES: tuple[str, ...] = ("read", "verify", "prepare", "cut", "drift", "h2d", "inference", "d2h", "fallback",
                           "postprocess", "write")
PERCENTILES: tuple[int, ...] = (10, 50, 90, 99)
# Keys a runner may put in ``last_timings`` after ``infer`` (milliseconds of that call): the host->device and
# device->host copies, GPU execution only, and the one-off capture + instantiation of a CUDA graph.
RUNNER_SPLIT_KEYS = {"h2d": "h2d_ms", "d2h": "d2h_ms"}
DEVICE_KEY = "device_ms"
GRAPH_CAPTURE_KEY = "graph_capture_ms"


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """Mean and p10/p50/p90/p99 (numpy's linear interpolation between order statistics) of samples in ms."""
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

    ``with clock.iteration(): with clock.stage("read"): ...`` -- time spent in a stage several times within one
    iteration (e.g. reading each tile of a batch) is summed. Stages not entered count as 0 so every stage has
    one sample per iteration and the stage times of an iteration add up to (at most) its end-to-end time.

    Args:
        stages: Stage names.
        timer: Nanosecond clock: wall time (``time.perf_counter_ns``, the default: latency) or the calling
            thread's CPU time (``time.thread_time_ns``: host cost, blind to waits and to other processes).
    """

    def __init__(self, stages: Sequence[str] = STAGES, timer: Callable[[], int] = time.perf_counter_ns):
        self.stages = tuple(stages)
        self.timer = timer
        self.samples: dict[str, list[float]] = {s: [] for s in self.stages}
        self.end_to_end: list[float] = []
        self.extra: dict[str, list[float]] = {}
        self._current: dict[str, float] | None = None

    @contextlib.contextmanager
    def iteration(self) -> Iterator[None]:
        self._current = dict.fromkeys(self.stages, 0.0)
        t0 = self.timer()
        try:
            yield
        finally:
            total = (self.timer() - t0) / 1e6
            current, self._current = self._current, None
            for s in self.stages:
                self.samples[s].append(current[s])
            self.end_to_end.append(total)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = self.timer()
        try:
            yield
        finally:
            self.add(name, (self.timer() - t0) / 1e6)

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
        tile_stages: ``(stage, function)`` applied in order to each source of a batch: the first gets the
            source, each later one what the previous returned (read -> verify -> prepare -> window plan).
        batch: per-tile values of a batch -> model batch ``{"sar": [N,...], "optical": [N,...]}``; timed as
            ``batch_stage`` and run on the inference thread in throughput mode (as in the daemon).
        postprocess: (per-tile values, runner outputs) -> result records.
        write: (records, index of the batch) -> None (the result files).
        batch_stage: The stage the ``batch`` call is timed as.
        fallback: (per-tile values, model batch, runner outputs) -> None, run right after inference on the same
            thread and timed as "fallback": the INT8 safety net's re-runs (None: no such stage).
    """

    tile_stages: tuple[tuple[str, Callable[[Any], Any]], ...]
    batch: Callable[[list[Any]], dict[str, np.ndarray]]
    postprocess: Callable[[list[Any], Mapping[str, np.ndarray]], Any]
    write: Callable[[Any, int], None]
    batch_stage: str = "cut"
    fallback: Callable[[list[Any], Mapping[str, np.ndarray], Mapping[str, np.ndarray]], None] | None = None

    def tile(self, source: Any, clock: StageClock | None = None) -> Any:
        """Run the per-tile stages on one source (each inside ``clock.stage`` when a clock is given)."""
        value = source
        for name, fn in self.tile_stages:
            if clock is None:
                value = fn(value)
            else:
                with clock.stage(name):
                    value = fn(value)
        return value


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
        values = [pipeline.tile(s, clock) for s in srcs]
        with clock.stage(pipeline.batch_stage):
            batch = pipeline.batch(values)
        out = _infer_timed(runner, batch, clock)
        if pipeline.fallback is not None:
            with clock.stage("fallback"):
                pipeline.fallback(values, batch, out)
        with clock.stage("postprocess"):
            records = pipeline.postprocess(values, out)
        with clock.stage("write"):
            pipeline.write(records, index)
    return _rows(batch)


def _rows(batch: Mapping[str, np.ndarray]) -> int:
    return int(len(next(iter(batch.values()))))


def measure_latency(pipeline: Pipeline, runner: Any, sources: Sequence[Any], batch: int, iterations: int,
                    warmup: int, stages: Sequence[str] = STAGES, start: int = 0,
                    timer: Callable[[], int] = time.perf_counter_ns) -> dict[str, Any]:
    """Synchronous per-batch latency: ``warmup`` untimed batches, then ``iterations`` timed ones.

    Args:
        start: Index of the first source (a later round continues where the previous one stopped).
        timer: The :class:`StageClock` clock (``time.thread_time_ns`` measures host CPU instead of latency).

    Returns:
        ``StageClock.summary()`` plus ``batch``, ``iterations``, ``patches_per_batch``, the raw
        per-iteration ``samples_ms`` of every stage and of ``end_to_end`` and ``extra_samples_ms`` (device
        time); times are per batch in ms.
    """
    if iterations < 1 or warmup < 0 or batch < 1:
        raise ValueError("iterations >= 1, warmup >= 0 and batch >= 1 are required")
    rotated = list(sources[start % len(sources):]) + list(sources[:start % len(sources)])
    scratch = StageClock(stages)
    for i, srcs in enumerate(_batches(rotated, batch, warmup)):
        run_one(pipeline, runner, srcs, i, scratch)
    clock = StageClock(stages, timer)
    patches = 0
    for i, srcs in enumerate(_batches(rotated, batch, iterations)):
        patches += run_one(pipeline, runner, srcs, warmup + i, clock)
    return {"batch": batch, "iterations": iterations, "patches_per_batch": patches / iterations,
            **clock.summary(), "samples_ms": {**clock.samples, "end_to_end": clock.end_to_end},
            "extra_samples_ms": dict(clock.extra)}


_DONE = object()


def measure_throughput(pipeline: Pipeline, runner: Any, sources: Sequence[Any], batch: int,
                       iterations: int, queue_depth: int = 4) -> dict[str, Any]:
    """Sustained tiles/s with the stages pipelined as in the daemon: per-tile stages | batch + infer | post +
    write, on three threads joined by bounded queues.

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
                inbox.put([pipeline.tile(s) for s in srcs])
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
        while (values := inbox.get()) is not _DONE:
            if errors:
                continue  # drain so the producer can finish
            arrays = pipeline.batch(values)
            out = runner.infer(arrays)
            if pipeline.fallback is not None:
                pipeline.fallback(values, arrays, out)
            outbox.put((values, out))
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


def runtime_pipeline(runner: Any, results_root: Path, stride: int | None = None, net: Any = None,
                     reruns: Any = None) -> Pipeline:
    """The daemon's own stages (:mod:`mosaic_edge.edge_runtime.pipeline`), writing results atomically into a
    scratch spool; each tile stage is one pipeline function, timed as itself.

    Args:
        net: The runner's :class:`~mosaic_edge.edge_runtime.safety.SafetyNet`: its envelope adds the "drift"
            stage per tile.
        reruns: A :class:`~mosaic_edge.edge_runtime.safety.Reruns` over ``net``: adds the "fallback" stage (every
            window flagged in a batch is re-run before postprocess, in batches) and keeps the counts.
    """
    from mosaic_edge.edge_runtime import pipeline as rt
    from mosaic_edge.edge_runtime.spool import Spool

    spool = Spool(results_root)
    contract = runner.contract
    check = net is not None and net.envelope is not None

    def read(path: Path) -> tuple[Path, Any, Any]:
        files, tile = rt.read(path, path.name.removesuffix(".npz"), allow_sar_only=True)
        return path, files, tile

    def verify(value: tuple[Path, Any, Any]) -> tuple[Path, str, Any]:
        path, files, tile = value
        return path, rt.verify(files), tile

    def prepare(value: tuple[Path, str, Any]) -> tuple[Path, str, Any, Any]:
        path, digest, tile = value
        return path, digest, tile, rt.prepare(tile, contract)

    def plan(value: tuple[Path, str, Any, Any]) -> Any:
        path, digest, tile, prepared = value
        job = rt.cut(prepared, contract, path.name, digest, stride)
        return (job, tile, prepared) if check else job

    def drift(value: tuple[Any, Any, Any]) -> Any:
        job, tile, prepared = value
        rt.drift(job, prepared, tile, contract, net)
        return job

    def batch(jobs: list[Any]) -> dict[str, np.ndarray]:
        return rt.batch_inputs(runner, sum(j.n for j in jobs), [(j, 0, j.n) for j in jobs])

    def store(jobs: list[Any], out: Mapping[str, np.ndarray]) -> None:
        start = 0
        for job in jobs:
            if job.n_done == 0:
                rt.store_outputs(job, 0, {k: v[start:start + job.n] for k, v in out.items()})
            start += job.n

    def fallback(jobs: list[Any], inputs: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]) -> None:
        store(jobs, out)
        start = 0
        for job in jobs:
            reruns.flag(job, job, np.arange(job.n), {k: v[start:start + job.n] for k, v in inputs.items()})
            start += job.n
        for _ in reruns.run(everything=True):
            pass

    def postprocess(jobs: list[Any], out: Mapping[str, np.ndarray]) -> list[tuple[str, bytes, bytes | None]]:
        store(jobs, out)
        return [(job.tile_id, *rt.result_files(job, runner)) for job in jobs]

    def write(results: list[tuple[str, bytes, bytes | None]], index: int) -> None:
        for tile_id, jsonl, geojson in results:
            spool.write_results(tile_id, jsonl, geojson)

    stages = (("read", read), ("verify", verify), ("prepare", prepare), ("cut", plan))
    return Pipeline(stages + ((("drift", drift),) if check else ()), batch, postprocess, write,
                    fallback=fallback if reruns is not None else None)
