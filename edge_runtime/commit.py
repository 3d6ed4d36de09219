"""The daemon's writer stage: commit finished tiles off the inference thread, exactly once.

The inference thread hands each batch's finished jobs to :meth:`Committer.put`; a bounded queue carries them
to the writer thread, so inference no longer waits on every fsync, and only a disk that falls behind for good
makes it wait (back-pressure up to the reader). Whatever has queued up is committed as one group:

1. each tile's result files are written atomically (temp file, fsync, rename; ``.jsonl`` last, see
   :meth:`~mosaic_edge.edge_runtime.spool.Spool.write_results`), pausing with back-off while the disk is full;
   the tiles of a group are written by a few threads at once, because concurrent fsyncs share the file
   system's journal commits (on ext4 several times cheaper per file than one after another);
2. one fsync of ``results/`` makes all those renames durable — only now may any input move;
3. each input is renamed into ``done/``, then one fsync of ``done/`` and ``incoming/``.

A crash between 2 and 3 leaves committed results beside inputs still in ``incoming/``; the next start only
moves them. One directory fsync per group, not per tile, keeps a fast model from being write-bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mosaic_edge.edge_runtime import pipeline
from mosaic_edge.edge_runtime.logs import get_logger
from mosaic_edge.edge_runtime.metrics_http import Metrics
from mosaic_edge.edge_runtime.runner import Runner
from mosaic_edge.edge_runtime.spool import DISK_FULL, Spool

if TYPE_CHECKING:
    from mosaic_edge.edge_runtime.intake import InFlight

log = get_logger()
_CLOSE: Any = object()
# Most tiles per group: a long backlog still reaches done/ at a steady pace, not in one burst at the end.
MAX_GROUP = 64
WRITE_THREADS = 8  # files written (and fsynced) at once within a group


class Committer:
    """Writes results and moves inputs to ``done/`` on its own thread (:meth:`run`).

    Args:
        spool: The spool written to.
        runner: Supplies model hash, kind and precision for the records.
        metrics: Counters and the ``write`` stage histogram.
        stop: Set on shutdown; ends disk-full retries (the input stays in ``incoming/`` and is redone).
        fail: ``fail(name, tile_id, reason)`` moves a tile to ``failed/``.
        release: ``release(candidate)`` marks a tile as no longer in flight.
        retry_s / retry_max_s: First and longest pause between disk-full retries.
        depth: Batches that may wait for the writer before :meth:`put` blocks.
    """

    def __init__(self, spool: Spool, runner: Runner, metrics: Metrics, stop: threading.Event,
                 fail: Callable[[str, str, str], None], release: Callable[[Any], None],
                 retry_s: float = 1.0, retry_max_s: float = 30.0, depth: int = 4):
        self.spool, self.runner, self.metrics, self.stop = spool, runner, metrics, stop
        self.fail, self.release = fail, release
        self.retry_s, self.retry_max_s = retry_s, retry_max_s
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="result-write")  # threads on demand

    def put(self, jobs: list[InFlight]) -> None:
        """Hand finished jobs over; blocks while ``depth`` batches are already waiting (back-pressure)."""
        self._queue.put(jobs)

    def close(self) -> None:
        """Ask :meth:`run` to return once everything put before is committed."""
        self._queue.put(_CLOSE)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def run(self) -> None:
        """Thread body: commit groups until :meth:`close`; never raises."""
        closed = False
        while not closed:
            group: list[InFlight] = []
            item = self._queue.get()
            while item is not _CLOSE:
                group += item
                if len(group) >= MAX_GROUP:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            closed = item is _CLOSE
            try:
                self.commit(group)
            except Exception:  # noqa: BLE001 - the writer must outlive any one group
                log.exception("commit failed; its inputs stay in incoming/ and are redone")
                for item in group:
                    self.release(item.candidate)
        self._pool.shutdown()

    def _write(self, tile_id: str, jsonl: bytes, geojson: bytes | None) -> bool:
        """Write one tile's results, retrying while the disk is full; False when stopped meanwhile."""
        delay = self.retry_s
        while True:
            try:
                self.spool.write_results(tile_id, jsonl, geojson)
                return True
            except OSError as exc:
                if exc.errno not in DISK_FULL:
                    raise
                self.metrics.inc("disk_full_retries")
                log.warning("output disk full; retrying",
                            extra={"fields": {"tile": tile_id, "retry_s": delay}})
                if self.stop.wait(delay):
                    return False
                delay = min(2 * delay, self.retry_max_s)

    def _write_job(self, item: InFlight) -> tuple[InFlight, float] | None:
        """Write one tile's result files; None (tile released, or failed) when that did not happen."""
        t0 = time.perf_counter()
        job = item.job
        try:
            jsonl, geojson = pipeline.result_files(job, self.runner)
            if self._write(job.tile_id, jsonl, geojson):
                return item, t0
        except Exception as exc:  # noqa: BLE001 - one bad tile must never stop the daemon
            log.exception("writing results failed", extra={"fields": {"tile": job.tile_id}})
            self.fail(job.name, job.tile_id, f"cannot write results: {type(exc).__name__}: {exc}")
        self.release(item.candidate)
        return None

    def _write_all(self, group: list[InFlight]) -> list[tuple[InFlight, float] | None]:
        # One tile (one in flight: latency) is written on this thread; a group by the pool, whose concurrent
        # fsyncs share journal commits.
        if len(group) == 1:
            return [self._write_job(group[0])]
        return list(self._pool.map(self._write_job, group))

    def commit(self, group: list[InFlight]) -> None:
        """Write every job's results, fsync ``results/`` once, then move the inputs to ``done/``."""
        written = [w for w in self._write_all(group) if w is not None]
        if not written:
            return
        try:
            self.spool.sync("results")  # the results are durable from here on: only now may inputs move
        except OSError:
            log.exception("cannot sync results/; inputs stay in incoming/ and are redone")
            for item, _ in written:
                self.release(item.candidate)
            return
        for item, t0 in written:
            job = item.job
            try:
                self.spool.move_done(item.candidate, sync=False)
                self.metrics.observe("write", time.perf_counter() - t0)
                self.metrics.inc("tiles_done")
                if log.isEnabledFor(logging.INFO):
                    log.info("tile done", extra={"fields": {
                        "tile": job.tile_id, "patches": job.n, "heads": sorted(set(job.heads)),
                        "timings_ms": {k: round(v, 3) for k, v in job.timings_ms.items()}}})
            except Exception as exc:  # noqa: BLE001 - one bad tile must never stop the daemon
                log.exception("moving tile to done/ failed", extra={"fields": {"tile": job.tile_id}})
                self.fail(job.name, job.tile_id, f"cannot finish tile: {type(exc).__name__}: {exc}")
            finally:
                self.release(item.candidate)
        try:
            self.spool.sync("done", "incoming")
        except OSError:
            log.exception("cannot sync done/")  # a crash now only repeats the (idempotent) moves
