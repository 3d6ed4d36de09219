"""The spool daemon behind ``mosaic-edge serve``: three threads joined by bounded queues.

* reader: watches ``incoming/`` (inotify via ``inotify_simple`` when importable, else polling), reads, verifies
  and prepares ready tiles (:mod:`~mosaic_edge.edge_runtime.pipeline`: one read per file, the SHA-256 from
  those bytes, whole-tile inputs in the artefact's input form) -- ``readers`` tiles at a time, since decoding
  and hashing release the GIL -- and queues them (at most ``queue_tiles`` ahead of inference);
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
from mosaic_edge.edge_runtime.logs import get_logger
from mosaic_edge.edge_runtime.metrics_http import Metrics
from mosaic_edge.edge_runtime.runner import Runner, usable_cores
from mosaic_edge.edge_runtime.safety import RerunFailed, Reruns, SafetyNet
from mosaic_edge.edge_runtime.spool import Candidate, IncomingWatcher, Spool, SpoolGone
from mosaic_edge.edge_runtime.spool_names import escape
from mosaic_edge.edge_runtime.watchdog import Supervisor
from mosaic_edge.errors import DataError, UserError
from mosaic_edge.tile_format import MissingPartnerError, TileLimits, fingerprint

log = get_logger()
_SENTINEL: Any = object()
# Exit code when a spool folder vanishes while running: EX_TEMPFAIL, so systemd's Restart=on-failure starts a
# fresh daemon (exit code 2, a configuration error, is not restarted).
EXIT_SPOOL_GONE = 75


@dataclass(eq=False)  # identity semantics: queue items and dict keys
class InFlight:
    """A job (or a piece of a scene's job) on its way through the daemon: the spool entry it came from and its
    batching state."""

    job: pipeline.Job
    candidate: Candidate
    enqueued: float
    next_index: int = 0  # first window (of ``unit``) not yet handed to a batch
    piece: pipeline.Piece | None = None  # a scene's block of windows; None: the whole job

    @property
    def unit(self) -> pipeline.Job | pipeline.Piece:
        """What is batched: the piece, or the whole job."""
        return self.piece if self.piece is not None else self.job

    @property
    def failed(self) -> bool:  # per tile: every piece of a failed scene is dropped
        return self.job.failed

    @failed.setter
    def failed(self, value: bool) -> None:
        self.job.failed = value

    @property
    def tile_id(self) -> str:
        return self.job.tile_id

    @property
    def name(self) -> str:
        return self.job.name


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


class Daemon:
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

    _spool_error: str | None = None  # set when a spool folder vanished: run() exits with EXIT_SPOOL_GONE

    def stop(self, *_: object) -> None:
        self._stop.set()

    # ---- reader side ---------------------------------------------------------------------------------------
    def _release(self, cand: Candidate) -> None:
        with self._lock:
            self._names.discard(cand.name)
            self._ids.discard(cand.tile_id)

    def _fail(self, name: str, tile_id: str, reason: str) -> None:
        """Quarantine an entry with a one-line reason; one that cannot be moved is reported once and skipped."""
        if self._spool_error is not None:
            return  # the spool is gone: nothing can be moved; the restarted daemon sees what is left
        reason = reason.replace(f"{self.spool.incoming}/", "")  # relative names: shorter, no host paths
        with self._fail_lock:
            q = self.spool.quarantine(name, reason)
        entry = escape(name)
        if q.dest is not None:
            self.metrics.inc("tiles_failed")
            log.warning("tile failed", extra={"fields": {"tile": entry, "failed_as": q.dest, "reason": reason}})
        elif q.first_report:
            log.error("cannot move entry to failed/; skipped until it changes", extra={"fields": {
                "entry": entry, "reason": reason, "error": q.unmovable}})
        self.metrics.set("spool_unmovable_entries", len(self.spool.unmovable))

    def _take(self, cand: Candidate) -> str:
        """Handle one ready entry: queue it, settle it (fail/recover), or leave it ("wait")."""
        if self._stop.is_set():
            return "wait"  # shutting down: leave it in incoming/ unread
        if cand.problem is not None:  # not a tile (kind, name or marker): found by the scan
            self._fail(cand.name, cand.tile_id, cand.problem)
            return "handled"
        state = self.spool.recheck(cand)  # grown, replaced or removed since the scan?
        if state != "same":
            return "wait" if state == "changed" else "handled"
        with self._lock:
            if cand.tile_id in self._ids:
                return "wait"  # same id in flight: decided once that one is finished
            self._names.add(cand.name)
            self._ids.add(cand.tile_id)
        queued = False
        try:
            previous = self.spool.result_input_hash(cand.tile_id)
            if previous is not None:
                self._settle_existing(cand, fingerprint(cand.path), previous)
                return "handled"
            queued = self._load_and_queue(cand)
            return "queued" if queued else "handled"
        except MissingPartnerError as exc:
            if not cand.marker and cand.age_s < self.config.partner_timeout_s:
                return "wait"
            self._fail(cand.name, cand.tile_id, f"{exc} (waited {cand.age_s:.0f} s)")
        except (DataError, OSError) as exc:
            self._fail(cand.name, cand.tile_id, str(exc) if isinstance(exc, DataError)
                       else f"{cand.tile_id}: unreadable or vanished ({type(exc).__name__}: {exc})")
        except Exception as exc:  # noqa: BLE001 - one bad tile must never stop the daemon
            log.exception("unexpected error reading tile", extra={"fields": {"tile": cand.tile_id}})
            self._fail(cand.name, cand.tile_id, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if not queued:  # queued tiles are released by the thread that finishes them
                self._release(cand)
        return "handled"


    def _load_and_queue(self, cand: Candidate) -> bool:
        """Read, verify, prepare and plan an accepted tile and queue it (a scene: piece by piece); False when
        stopped before anything was queued.

        Raises what :func:`pipeline.open_job` raises for a bad tile (the caller fails or defers it); a scene
        that turns out bad after some of its pieces were queued is failed here.
        """
        job, units = pipeline.open_job(cand.path, cand.tile_id, self.runner.contract, self.config.limits,
                                       self.config.stride, allow_sar_only=cand.marker, net=self.safety)
        queued = 0
        try:
            for unit in units:
                item = InFlight(job, cand, time.perf_counter(),
                                piece=unit if isinstance(unit, pipeline.Piece) else None)
                if not self._put(item):
                    if queued:
                        self._abandon(item, None)  # shutting down: the tile stays in incoming/ and is redone
                    return bool(queued)
                queued += 1
        except Exception as exc:
            if not queued:
                raise
            if isinstance(exc, DataError):
                reason = str(exc)
            elif isinstance(exc, OSError):
                reason = f"{cand.tile_id}: unreadable or vanished ({type(exc).__name__}: {exc})"
            else:
                log.exception("unexpected error reading a scene", extra={"fields": {"tile": cand.tile_id}})
                reason = f"internal error: {type(exc).__name__}: {exc}"
            self._abandon(InFlight(job, cand, 0.0), reason)
            return True
        finally:
            close = getattr(units, "close", None)
            if close is not None:
                close()  # a scene's files
        t = job.timings_ms
        self.metrics.observe("read", (t["read"] + t["verify"]) / 1e3)
        self.metrics.observe("preprocess", (t["prepare"] + t["cut"]) / 1e3)
        if "drift" in t:
            self.metrics.observe("drift", t["drift"] / 1e3)
        return True

    def _put(self, item: InFlight) -> bool:
        """Queue one item, waiting while the queue is full; False when stopped (or its tile failed) first."""
        while not self._stop.is_set() and not item.failed:
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _abandon(self, item: InFlight, reason: str | None) -> None:
        """A scene with pieces queued cannot finish: drop its pieces; fail it with ``reason`` (None: leave it in
        incoming/ to be redone). Whoever marks the tile failed first fails and releases it."""
        with self._lock:
            if item.failed:
                return
            item.failed = True
        if reason is not None:
            self._fail(item.name, item.tile_id, reason)
        self._release(item.candidate)

    def _settle_existing(self, cand: Candidate, digest: str, previous: str) -> None:
        """Results for this tile id exist: finish a crashed run, or refuse a duplicate."""
        if previous == digest and not (self.spool.done / cand.name).exists():
            self.spool.move_done(cand)  # results were committed before the crash; only the move was missing
            self.metrics.inc("tiles_recovered")
            log.info("recovered tile", extra={"fields": {"tile": cand.tile_id}})
            return
        what = "the same input was already processed" if previous == digest else "belong to another input"
        self._fail(cand.name, cand.tile_id, f"duplicate tile id {cand.tile_id!r}: results/"
                   f"{cand.tile_id}.jsonl exists and {what}")

    def _reader(self) -> None:
        """Scan, take, wait; one entry's failure never stops the loop, a vanished spool ends the daemon."""
        waiter = IncomingWatcher(self.spool.incoming, self.config.inotify)
        handled: dict[str, tuple] = {}
        reported: set[str] = set()
        try:
            while not self._stop.is_set():
                try:
                    ready, pending, waiting, handled = self._scan(handled)
                except SpoolGone as exc:
                    self._spool_error = str(exc)
                    log.error("spool folder removed or replaced; exiting so that the service manager restarts "
                              "the daemon", extra={"fields": {"error": str(exc), "exit_code": EXIT_SPOOL_GONE}})
                    self._stop.set()
                    break
                except Exception as exc:  # noqa: BLE001 - a bug in the scan: said once, never every second
                    key = f"{type(exc).__name__}: {exc}"
                    if key not in reported:
                        reported.add(key)
                        log.exception("spool scan failed", extra={"fields": {"error": key}})
                    ready, pending, waiting = [], 1, 0
                if self.config.once and not ready and pending == 0 and waiting == 0:
                    break
                if not ready or waiting == len(ready):
                    waiter.wait(self.config.poll_s, self._stop)
        finally:
            waiter.close()
            self._queue.put(_SENTINEL)

    def _scan(self, handled: dict[str, tuple]) -> tuple[list[Candidate], int, int, dict[str, tuple]]:
        """One scan of incoming/: take every ready entry, each behind its own error boundary."""
        with self._lock:
            skip = set(self._names)
        ready, pending = self.spool.poll(skip)
        self.metrics.note_backlog(len(ready), len(skip))  # a take that hangs is a stall (watchdog)
        self.metrics.set("spool_pending_entries", pending)
        waiting, now_handled = 0, {}
        for cand, outcome in zip(ready, self._take_ready(ready, handled), strict=True):
            if outcome == "wait":
                waiting += 1
            elif outcome == "handled":
                now_handled[cand.name] = cand.signature
        with self._lock:
            in_flight = len(self._names)
        self.metrics.note_backlog(0, in_flight)  # entries left waiting (a partner, an id in flight) are no stall
        self.metrics.set("spool_unmovable_entries", len(self.spool.unmovable))
        return ready, pending, waiting, now_handled

    def _take_guarded(self, cand: Candidate, handled: dict[str, tuple]) -> str:
        """:meth:`_take` one entry behind its own error boundary ("skipped": handled last round, still there)."""
        if handled.get(cand.name) == cand.signature:  # handled last round, yet still there unchanged
            self._fail(cand.name, cand.tile_id, "still in incoming/ after it was handled")
            return "skipped"
        try:
            return self._take(cand)
        except Exception as exc:  # noqa: BLE001 - one entry never stops the others
            log.exception("unexpected error taking an entry", extra={"fields": {"entry": escape(cand.name)}})
            self._fail(cand.name, cand.tile_id, f"internal error: {type(exc).__name__}: {exc}")
            return "handled"

    def _take_ready(self, ready: list[Candidate], handled: dict[str, tuple]) -> list[str]:
        """:meth:`_take_guarded` every ready entry, ``reader_threads`` at a time (decoding and hashing release
        the GIL); outcomes in the order of ``ready``.

        Each reader blocks on the bounded queue once it holds a prepared tile, so at most ``queue_tiles`` +
        ``reader_threads`` tiles are in memory ahead of inference, whatever the number of readers.
        """
        if self._read_pool is None or len(ready) < 2:
            return [self._take_guarded(c, handled) for c in ready]
        return list(self._read_pool.map(lambda c: self._take_guarded(c, handled), ready))

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
            if got is _SENTINEL:
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
