"""Daemon metrics in the Prometheus exposition formats (``prometheus_client``), plus ``/healthz``.

Each :class:`Metrics` owns a private ``CollectorRegistry``, so several daemons (or tests) in one process never
share or clash over series. The exposition itself (text format 0.0.4, OpenMetrics when the scraper asks for
it, gzip, ``name[]`` filters) is ``prometheus_client``'s; :class:`MetricsServer` serves it with the standard
library's WSGI server the way ``prometheus_client.start_http_server`` does, but

* binds 127.0.0.1 unless told otherwise (``start_http_server`` binds every interface by default);
* answers only ``GET``/``HEAD`` of ``/metrics`` and ``/healthz`` (other paths 404, other methods 405), never
  touches the file system and runs nothing.

Names follow the Prometheus conventions: a ``mosaic_edge_`` prefix, base units in the name (``_seconds``),
``_total`` on counters (added by the client library to the counter's name), and plain gauges for counts that go
up and down. ``process_*`` series (memory, CPU, open files, start time) come from the library's
``ProcessCollector`` where ``/proc`` exists.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from mosaic_edge.optional import require

# Upper bounds (seconds) of the latency histogram buckets: from a fast patch batch to a slow large tile.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGES = ("read", "preprocess", "drift", "queue", "infer", "fallback", "write")
PREFIX = "mosaic_edge"

COUNTERS = {
    "tiles_done": "Tiles whose results are written and whose input is in done/.",
    "tiles_failed": "Entries moved to failed/ with a reason (bad tiles and entries that are not tiles).",
    "tiles_recovered": "Inputs whose results were committed before a crash; only moved on restart.",
    "patches": "Patches inferred.",
    "batches": "Inference batches run.",
    "disk_full_retries": "Result writes retried because the output disk was full.",
    "windows_drifted": "Windows outside the export's calibration envelope (drift flag in their records).",
    "windows_borderline": "INT8 windows with a logit within the fallback margin of a class threshold.",
    "windows_rerun": "INT8 windows re-run by the higher-precision fallback runner (borderline or drifted).",
    "fallback_batches": "Batches run by the fallback runner.",
}
GAUGES = {
    "queue_depth": "Tiles read and waiting for inference.",
    "spool_ready_entries": "Entries of incoming/ found ready at the last scan and not yet taken.",
    "spool_pending_entries": "Entries of incoming/ still settling (no marker, changed recently).",
    "spool_unmovable_entries": "Entries of incoming/ that could not be moved to failed/ and are skipped.",
    "tiles_in_flight": "Tiles taken from incoming/ and not yet finished.",
    "healthy": "1 while the daemon makes progress or has nothing to do; 0 when waiting tiles are stalled.",
}


class Metrics:
    """Thread-safe counters, gauges and per-stage latency histograms, with progress tracking for the watchdog.

    ``counters``/``gauges`` are plain dicts (read them directly; write through :meth:`inc`/:meth:`set`); any
    name may be used, known names get their help text. Every :meth:`inc` counts as progress.
    """

    def __init__(self) -> None:
        prom = require("prometheus_client", extra="runtime")
        from prometheus_client.process_collector import ProcessCollector

        self._lock = threading.Lock()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.gauges: dict[str, float] = dict.fromkeys(GAUGES, 0.0)
        self.gauges["healthy"] = 1.0
        self.registry = prom.CollectorRegistry()
        self._stage = prom.Histogram(f"{PREFIX}_stage_seconds", "Per-tile time spent in each pipeline stage.",
                                     ["stage"], buckets=BUCKETS, registry=self.registry)
        self._stages = {s: self._stage.labels(stage=s) for s in STAGES}
        self.started = time.time()
        self.last_progress = time.time()  # wall clock, for display; the watchdog uses the monotonic twin
        self._progress_mono = time.monotonic()
        self._busy_since: float | None = None
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)

    def inc(self, name: str, value: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + value
            self.last_progress = time.time()
            self._progress_mono = time.monotonic()

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = float(value)

    def observe(self, stage: str, seconds: float) -> None:
        child = self._stages.get(stage) or self._stage.labels(stage=stage)
        child.observe(seconds)

    def note_backlog(self, ready: int, in_flight: int) -> None:
        """Record the work that waits (entries ready in incoming/, tiles taken and unfinished)."""
        now = time.monotonic()
        with self._lock:
            self.gauges["spool_ready_entries"] = float(ready)
            self.gauges["tiles_in_flight"] = float(in_flight)
            if ready + in_flight == 0:
                self._busy_since = None
            elif self._busy_since is None:
                self._busy_since = now

    def stalled_s(self) -> float:
        """Seconds that work has waited without any progress (0 while nothing waits)."""
        with self._lock:
            if self._busy_since is None:
                return 0.0
            return max(0.0, time.monotonic() - max(self._busy_since, self._progress_mono))

    def render(self) -> str:
        """The Prometheus text exposition format (what a scrape without an ``Accept`` header gets)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode("utf-8")


class _Collector:
    """Turns the counter and gauge dicts into metric families at scrape time."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self) -> list[Any]:
        """The families at registration (lets a scraper select them with ``?name[]=``)."""
        return list(self.collect())

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.metrics
        with m._lock:
            counters, gauges = dict(m.counters), dict(m.gauges)
            progress = m.last_progress
        for name, count in sorted(counters.items()):
            yield CounterMetricFamily(f"{PREFIX}_{name}", COUNTERS.get(name, name.replace("_", " ")), count)
        for name, value in sorted(gauges.items()):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", GAUGES.get(name, name.replace("_", " ")), value)
        yield GaugeMetricFamily(f"{PREFIX}_start_time_seconds", "Start of the daemon, seconds since the epoch.",
                                m.started)
        yield GaugeMetricFamily(f"{PREFIX}_last_progress_timestamp_seconds",
                                "Last time a tile, patch or batch was finished, seconds since the epoch.", progress)


# ---- HTTP ----------------------------------------------------------------------------------------------------
Health = Callable[[], tuple[bool, str]]


def make_app(metrics: Metrics, health: Health | None = None) -> Callable[..., Iterable[bytes]]:
    """The WSGI app: ``/metrics`` (``prometheus_client.make_wsgi_app``) and ``/healthz``; nothing else."""
    from prometheus_client import make_wsgi_app

    exposition = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", text)])
            return [b"method not allowed\n"]
        if path == "/metrics":
            body = exposition({**environ, "REQUEST_METHOD": "GET"}, start_response)
            return [] if method == "HEAD" else body
        if path == "/healthz":
            ok, message = health() if health is not None else (True, "ok")
            data = (message + "\n").encode("utf-8")
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", text), ("Content-Length", str(len(data)))])
            return [] if method == "HEAD" else [data]
        start_response("404 Not Found", [("Content-Type", text)])
        return [b"not found\n"]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        pass  # scrapes are not worth a log line each


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class MetricsServer:
    """Serve ``metrics`` (and ``health``) on ``host:port`` in a daemon thread (port 0 picks a free port)."""

    def __init__(self, metrics: Metrics, port: int, host: str = "127.0.0.1", health: Health | None = None):
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("MetricsHTTPServer", (_ThreadingServer,), {"address_family": family})
        self.httpd: WSGIServer = make_server(host, port, make_app(metrics, health), server_class, _QuietHandler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def __enter__(self) -> MetricsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
