"""Daemon metrics in Prometheus text format, plus ``/healthz``, over a read-only HTTP endpoint.

The server binds to 127.0.0.1 unless told otherwise, answers only ``GET /metrics`` and ``GET /healthz``
(everything else: 404/405), and never touches the file system or runs anything.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Upper bounds (seconds) of the latency histogram buckets: from a fast patch batch to a slow large tile.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGES = ("read", "preprocess", "queue", "infer", "write")
PREFIX = "mosaic_edge"


class Metrics:
    """Thread-safe counters, gauges and per-stage latency histograms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters = {"tiles_done": 0, "tiles_failed": 0, "tiles_recovered": 0, "patches": 0, "batches": 0,
                         "disk_full_retries": 0}
        self.gauges = {"queue_depth": 0.0, "up": 1.0}
        self._hist = {s: [0] * (len(BUCKETS) + 1) for s in STAGES}
        self._sum = dict.fromkeys(STAGES, 0.0)
        self.started = time.time()
        self.last_progress = time.time()

    def inc(self, name: str, value: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + value
            self.last_progress = time.time()

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = float(value)

    def observe(self, stage: str, seconds: float) -> None:
        with self._lock:
            i = next((k for k, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
            self._hist[stage][i] += 1
            self._sum[stage] += seconds

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        with self._lock:
            lines = []
            for name, v in sorted(self.counters.items()):
                lines += [f"# TYPE {PREFIX}_{name}_total counter", f"{PREFIX}_{name}_total {v}"]
            for name, g in sorted(self.gauges.items()):
                lines += [f"# TYPE {PREFIX}_{name} gauge", f"{PREFIX}_{name} {g}"]
            h = f"{PREFIX}_stage_seconds"
            lines.append(f"# TYPE {h} histogram")
            for stage in STAGES:
                cum = 0
                for b, n in zip(BUCKETS, self._hist[stage][:-1], strict=True):
                    cum += n
                    lines.append(f'{h}_bucket{{stage="{stage}",le="{b}"}} {cum}')
                cum += self._hist[stage][-1]
                lines.append(f'{h}_bucket{{stage="{stage}",le="+Inf"}} {cum}')
                lines.append(f'{h}_sum{{stage="{stage}"}} {self._sum[stage]:.6f}')
                lines.append(f'{h}_count{{stage="{stage}"}} {cum}')
            lines.append(f"# TYPE {PREFIX}_uptime_seconds gauge")
            lines.append(f"{PREFIX}_uptime_seconds {time.time() - self.started:.1f}")
        return "\n".join(lines) + "\n"


def _handler(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "mosaic-edge"
        sys_version = ""

        def _send(self, code: int, body: str, ctype: str = "text/plain; charset=utf-8") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/healthz":
                self._send(200, "ok\n")
            else:
                self._send(404, "not found\n")

        do_HEAD = do_GET  # noqa: N815

        def _refuse(self) -> None:
            self._send(405, "method not allowed\n")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
            pass  # scrapes are not worth a log line each

    return Handler


class MetricsServer:
    """Serve ``metrics`` on ``host:port`` in a daemon thread (port 0 picks a free port)."""

    def __init__(self, metrics: Metrics, port: int, host: str = "127.0.0.1"):
        self.httpd = ThreadingHTTPServer((host, port), _handler(metrics))
        self.httpd.daemon_threads = True
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
