"""The spool daemon behind ``mosaic-edge serve``: three threads joined by bounded queues.

* reader (:class:`~mosaic_edge.edge_runtime.intake.Intake`): watches ``incoming/`` (inotify via ``inotify_simple``
  when importable, else polling), reads, verifies and prepares ready tiles
  (:mod:`~mosaic_edge.edge_runtime.pipeline`: one read per file, the SHA-256 from those bytes, whole-tile inputs
  in the artefact's input form) -- ``readers`` tiles at a time, since decoding and hashing release the GIL -- and
  queues them (at most ``queue_tiles`` ahead of inference);
* inference (the thread calling :meth:`Daemon.run`): gathers patches into batches of up to ``batch`` or
  whatever arrived within ``max_wait_ms`` of the first one, cuts their windows straight into the runner's
  input buffers, runs the runner, and hands finished tiles on;
* writer (:class:`~mosaic_edge.edge_runtime.commit.Committer`): writes results atomically, then moves inputs
  to ``done/``, a group of tiles per directory fsync, so inference never waits on the disk.

INT8 safety net (:mod:`~mosaic_edge.edge_runtime.safety`): readers drift-check every window against the
export's calibration envelope; after each INT8 batch the inference thread queues the windows the fallback
policy flags (borderline or drifted) and re-runs them with the higher-precision runner in batches -- up to
``batch`` windows or whatever was flagged within ``max_wait_ms`` of the first one, or at once when no more
tiles are coming -- on the same thread, so both runners are never busy at once. A tile is handed to the writer
only when every window is answered; tiles finished after it wait for its re-runs, so the fallback never changes
the order in which tiles are committed.

A full queue blocks the stage before it, so a slow disk slows reading instead of filling memory. A scene (a
GeoTIFF pair too large to hold, :mod:`mosaic_edge.scene`) goes through the same queue as pieces -- blocks of its
windows, cut region by region (:func:`~mosaic_edge.edge_runtime.pipeline.open_job`) -- so the queue bounds
memory for scenes too; its results are committed once, when its last window is answered. A bad tile
goes to ``failed/`` with a one-line reason and the daemon carries on. A full output disk pauses the writer and
retries with back-off; nothing is moved before its results are on disk. SIGTERM/SIGINT: stop taking tiles,
finish and commit what is queued, exit 0.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mosaic_edge.edge_runtime import pipeline
from mosaic_edge.edge_runtime.commit import Committer
from mosaic_edge.edge_runtime.intake import END, EXIT_SPOOL_GONE, InFlight, Intake
from mosaic_edge.edge_runtime.logs import get_logger
from mosaic_edge.edge_runtime.metrics_http import Metrics
from mosaic_edge.edge_runtime.runner import Runner
from mosaic_edge.edge_runtime.safety import RerunFailed, Reruns, SafetyNet
from mosaic_edge.edge_runtime.spool import Spool
from mosaic_edge.edge_runtime.watchdog import Supervisor
from mosaic_edge.environment import usable_cores
from mosaic_edge.errors import UserError
from mosaic_edge.tile_format import TileLimits

log = get_logger()


@dataclass(frozen=True)
class ServeConfig:
    """Daemon settings (defaults suit a Jetson watching a local spool)."""

    batch: int = 8
    max_wait_ms: float = 50.0
    settle_s: float = 2.0
    partner_timeout_s: float = 60.0
    poll_s: float = 1.0
    stride: int | None = None
    queue_tiles: int = 4
    write_queue: int = 4
    once: bool = False
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    limits: TileLimits = field(default_factory=TileLimits)
    disk_retry_s: float = 1.0
    disk_retry_max_s: float = 30.0
    inotify: bool = True
    stall_s: float = 300.0  # waiting work without progress for this long: unhealthy (watchdog restart)
    readers: int | None = None

    @property
    def reader_threads(self) -> int:
        """Tiles read at once: ``readers``, or by default half the usable cores (1 to 4)."""
        return self.readers or max(1, min(4, usable_cores() // 2))

    def __post_init__(self) -> None:
        if (self.batch < 1 or self.max_wait_ms < 0 or self.settle_s < 0 or self.queue_tiles < 1
                or self.write_queue < 1 or (self.readers is not None and self.readers < 1)):
            raise UserError("batch, queue sizes and readers must be >= 1; max-wait and settle times >= 0")
        if self.stall_s <= 0:
            raise UserError("the stall time (--stall-s) must be > 0")


class Daemon(Intake):
    """Serve ``runner`` over the spool at ``spool``; :meth:`run` blocks until stopped (or drained: once)."""

    def __init__(self, runner: Runner, spool: str | Path | Spool, config: ServeConfig = ServeConfig(),
                 metrics: Metrics | None = None, safety: SafetyNet | None = None):
        self.runner, self.config = runner, config
        self.safety = safety if safety is not None else SafetyNet()
        self.spool = spool if isinstance(spool, Spool) else Spool(spool, settle_s=config.settle_s)
        self.metrics = metrics or Metrics()
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_tiles)
        self._lock = threading.Lock()
        self._fail_lock = threading.Lock()  # three threads fail tiles; failed/ names are picked race-free
        self._names: set[str] = set()  # incoming/ entries taken and not finished
        self._ids: set[str] = set()
        self._reader_done = False
        self._read_pool: ThreadPoolExecutor | None = None
        self.metrics_address: tuple[str, int] | None = None
        # A TensorRT engine's profile caps the batch; never hand it more.
        self.batch = min(config.batch, runner.max_batch or config.batch)
        self._reruns = Reruns(self.safety, self.batch, config.max_wait_ms / 1e3, self._count)
        self._unfinished: deque[InFlight] = deque()  # one per tile, in the order read (see _hand_over)
        self._tracked: set[pipeline.Job] = set()  # the tiles in _unfinished
        self._committer = Committer(self.spool, runner, self.metrics, self._stop, self._fail, self._release,
                                    config.disk_retry_s, config.disk_retry_max_s, config.write_queue)

    def stop(self, *_: object) -> None:
        self._stop.set()

    # ---- inference side ------------------------------------------------------------------------------------
    def _gather(self, backlog: deque, deadline: float | None = None) -> list[tuple[InFlight, int, int]] | None:
        """The next batch's ``(tile, first window, end)`` slices; [] when none came before ``deadline`` (or a
        while), None once the reader is done and everything is batched."""
        items: list[tuple[InFlight, int, int]] = []
        count, first = 0, None
        max_wait = self.config.max_wait_ms / 1e3
        while count < self.batch:
            if backlog:
                item = backlog[0]
                if item.failed:  # failed in an earlier batch
                    backlog.popleft()
                    continue
                k = min(self.batch - count, item.unit.n - item.next_index)
                items.append((item, item.next_index, item.next_index + k))
                item.next_index += k
                count += k
                if item.next_index == item.unit.n:
                    backlog.popleft()
                first = first or time.perf_counter()
                continue
            if self._reader_done:
                break
            if first is None:
                timeout = 0.25 if deadline is None else min(0.25, deadline - time.perf_counter())
            else:
                timeout = first + max_wait - time.perf_counter()
            if timeout <= 0:
                break
            try:
                got = self._queue.get(timeout=timeout)
            except queue.Empty:
                if first is None:
                    return items
                continue
            if got is END:
                self._reader_done = True
                continue
            wait = (time.perf_counter() - got.enqueued) * 1e3
            got.job.timings_ms["queue"] = got.job.timings_ms.get("queue", 0.0) + wait  # a scene: all its pieces
            self.metrics.observe("queue", wait / 1e3)
            backlog.append(got)
            if got.job not in self._tracked:  # a scene's later pieces keep their tile's place
                self._tracked.add(got.job)
                self._unfinished.append(got)
        self.metrics.set("queue_depth", self._queue.qsize() + len(backlog))
        return None if not items and self._reader_done else items

    def _run_batch(self, items: list[tuple[InFlight, int, int]]) -> None:
        inflight = list(dict.fromkeys(i for i, _, _ in items))
        t0 = time.perf_counter()
        try:
            batch = pipeline.batch_inputs(self.runner, self.batch, [(i.unit, a, b) for i, a, b in items])
            t1 = time.perf_counter()
            out = self.runner.infer(batch)
        except Exception as exc:  # noqa: BLE001 - fail these tiles, keep serving
            log.exception("inference failed")
            self._fail_jobs(inflight, f"inference failed: {type(exc).__name__}: {exc}")
            return
        t2 = time.perf_counter()
        self.metrics.observe("infer", t2 - t1)
        self.metrics.inc("batches")
        self.metrics.inc("patches", len(batch["sar"]))
        off = 0
        for item, a, b in items:
            if not item.failed:
                timings = item.job.timings_ms
                pipeline.store_outputs(item.unit, a, {k: v[off:off + b - a] for k, v in out.items()})
                timings["cut"] = timings.get("cut", 0.0) + (t1 - t0) * 1e3 * (b - a) / len(batch["sar"])
                timings["infer"] = timings.get("infer", 0.0) + (t2 - t1) * 1e3
                # queue what the fallback must re-run, with a copy of those windows' inputs
                self._reruns.flag(item, item.job, pipeline.unit_rows(item.unit, a, b),
                                  {k: v[off:off + b - a] for k, v in batch.items()})
            off += b - a
        for item, _, b in items:
            if item.piece is not None and b == item.piece.n:
                item.piece.inputs = None  # a scene's piece is done: its windows' memory goes now

    # ---- the fallback and the hand-over to the writer -------------------------------------------------------
    def _count(self, name: str, amount: int) -> None:
        if name != "windows_checked":  # the "patches" counter already says how many windows were inferred
            self.metrics.inc(name, amount)

    def _rerun(self, everything: bool) -> None:
        """Re-run the queued windows that are due (all of them with ``everything``) with the fallback runner."""
        while True:
            t0 = time.perf_counter()
            try:
                if not next(self._reruns.run(everything), None):
                    return
            except RerunFailed as exc:
                log.error("fallback inference failed", extra={"fields": {"error": str(exc.__cause__)}})
                self._fail_jobs(exc.owners, str(exc))
                continue
            self.metrics.observe("fallback", time.perf_counter() - t0)

    def _hand_over(self) -> None:
        """Hand the finished tiles to the writer (one put), as they finished before the fallback existed: a tile
        whose windows are all inferred waits for its re-runs, and so do the finished tiles read after it (the
        fallback never reorders tiles); a tile still being inferred (a scene's pieces) holds no one back."""
        finished: list[InFlight] = []
        waiting: deque[InFlight] = deque()
        held = False  # an earlier tile waits for its re-runs
        for item in self._unfinished:
            job = item.job
            if item.failed or (job.complete and not held):
                self._tracked.discard(job)
                if not item.failed:
                    finished.append(item)  # one item per tile: a scene's pieces share its job
                continue
            held = held or job.n_done == job.n
            waiting.append(item)
        self._unfinished = waiting
        if finished:
            self._committer.put(finished)  # blocks only while the writer is write_queue batches behind

    def _fail_jobs(self, inflight: list[InFlight], reason: str) -> None:
        for item in inflight:
            self._reruns.discard(item.job)
            self._abandon(item, reason)  # its remaining patches (and pieces) are dropped from the backlog

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def stop_fields(self) -> dict[str, Any]:
        """The stop line: every counter, and the shares of the inferred windows drifted and re-run."""
        counts = dict(self.metrics.counters)
        patches = counts.get("patches", 0)
        for name in ("windows_drifted", "windows_rerun"):
            counts[f"{name}_fraction"] = round(counts.get(name, 0) / patches, 4) if patches else 0.0
        return counts

    def run(self) -> int:
        """Serve until stopped (or, with ``once``, until ``incoming/`` is drained); return the exit code."""
        restore = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                restore[sig] = signal.signal(sig, self.stop)
        try:
            removed = self.spool.recover()
            try:
                self.runner.activate()
                try:
                    self.safety.activate()  # the fallback runner, when there is one
                except BaseException:
                    self.runner.deactivate()
                    raise
            except Exception as exc:  # noqa: BLE001 - a clear one-line failure, not a crash loop
                log.error("cannot load the model",
                          extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}})
                return 2
            service = Supervisor(self.metrics, self.config.stall_s, self.config.metrics_port,
                                 self.config.metrics_host)  # /metrics, /healthz, sd_notify + watchdog
            service.start()
            self.metrics_address = service.address
            log.info("serving", extra={"fields": {
                "spool": str(self.spool.root), "runner": self.runner.describe(),
                "safety_net": self.safety.describe(), "temp_files_removed": removed,
                "metrics": self.metrics_address}})
            writer = threading.Thread(target=self._committer.run, name="result-writer", daemon=True)
            reader = threading.Thread(target=self._reader, name="tile-reader", daemon=True)
            if self.config.reader_threads > 1:
                self._read_pool = ThreadPoolExecutor(self.config.reader_threads, thread_name_prefix="tile-read")
            writer.start()
            reader.start()
            backlog: deque = deque()
            while True:
                try:
                    items = self._gather(backlog, self._reruns.deadline())
                    if items:
                        try:
                            self._run_batch(items)
                        except Exception as exc:  # noqa: BLE001 - keep serving; these tiles fail
                            log.exception("batch error")
                            self._fail_jobs(list(dict.fromkeys(j for j, _, _ in items)),
                                            f"internal error: {type(exc).__name__}: {exc}")
                    # full fallback batches; all of them when no tile came (idle, past the deadline, or done)
                    self._rerun(everything=not items)
                    self._hand_over()
                    if items is None:
                        break
                except Exception:  # noqa: BLE001 - keep serving
                    log.exception("batch loop error")
            reader.join()
            if self._read_pool is not None:
                self._read_pool.shutdown()
            self._committer.close()  # after the last batch: the writer commits everything, then returns
            writer.join()
            service.stop()
            self.safety.deactivate()
            self.runner.deactivate()
            log.info("stopped", extra={"fields": self.stop_fields()})
            return EXIT_SPOOL_GONE if self._spool_error is not None else 0
        finally:
            for sig, handler in restore.items():
                signal.signal(sig, handler)
