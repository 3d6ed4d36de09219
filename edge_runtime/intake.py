"""The daemon's intake (reader side): scan ``incoming/``, take ready entries, read and queue tiles.

Each scan takes every ready entry behind its own error boundary (one entry's failure never stops the others): an
entry that is not a tile, or a tile that cannot be read, goes to ``failed/`` with a one-line reason (or, when it
cannot even be moved, is reported once and skipped); a tile whose results already exist is settled (a crash
between commit and move is finished, a re-sent id refused); an accepted tile is read, verified and prepared by
:mod:`~mosaic_edge.edge_runtime.pipeline` -- ``reader_threads`` entries at a time, since decoding and hashing
release the GIL -- and queued for the inference thread (a scene piece by piece), blocking while the bounded
queue is full. A spool folder that vanishes ends the daemon (:data:`EXIT_SPOOL_GONE`).

:class:`Intake` is the reader half of :class:`~mosaic_edge.edge_runtime.daemon.Daemon`, which owns the state it
uses (the spool, the queue, the in-flight names and ids, the stop event).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mosaic_edge.edge_runtime import pipeline
from mosaic_edge.edge_runtime.logs import get_logger
from mosaic_edge.edge_runtime.metrics_http import Metrics
from mosaic_edge.edge_runtime.runner import Runner
from mosaic_edge.edge_runtime.safety import SafetyNet
from mosaic_edge.edge_runtime.spool import Candidate, IncomingWatcher, Spool, SpoolGone
from mosaic_edge.edge_runtime.spool_names import escape
from mosaic_edge.errors import DataError
from mosaic_edge.tile_format import MissingPartnerError, fingerprint

if TYPE_CHECKING:
    from mosaic_edge.edge_runtime.daemon import ServeConfig

log = get_logger()
# Put on the queue when the intake is done (``once`` drained, or stopping).
END: Any = object()
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


def _reason(cand: Candidate, exc: Exception) -> str:
    """The one-line reason a tile that raised ``exc`` fails with (an unexpected error is logged in full)."""
    if isinstance(exc, DataError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{cand.tile_id}: unreadable or vanished ({type(exc).__name__}: {exc})"
    log.exception("unexpected error reading tile", extra={"fields": {"tile": cand.tile_id}})
    return f"internal error: {type(exc).__name__}: {exc}"


class Intake:
    """The reader half of the daemon (see the module docstring); the :class:`Daemon` sets every attribute."""

    runner: Runner
    config: ServeConfig
    safety: SafetyNet
    spool: Spool
    metrics: Metrics
    _stop: threading.Event
    _queue: queue.Queue
    _lock: threading.Lock
    _fail_lock: threading.Lock
    _names: set[str]
    _ids: set[str]
    _read_pool: ThreadPoolExecutor | None
    _spool_error: str | None = None  # set when a spool folder vanished: run() exits with EXIT_SPOOL_GONE

    # ---- taking entries -------------------------------------------------------------------------------------
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
        except Exception as exc:  # noqa: BLE001 - one bad tile must never stop the daemon
            self._fail(cand.name, cand.tile_id, _reason(cand, exc))
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
            self._abandon(InFlight(job, cand, 0.0), _reason(cand, exc))
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
            self._queue.put(END)

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
