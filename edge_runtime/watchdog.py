"""Health and supervision: ``/healthz``, the systemd watchdog and the metrics endpoint around the daemon.

The daemon is *stalled* when work waits — entries ready in ``incoming/`` or tiles taken and unfinished — and
nothing has progressed (no tile done or failed, no patch inferred, no disk-full retry) for ``stall_s``
seconds. Then ``/healthz`` answers 503 with the reason, the ``mosaic_edge_healthy`` gauge drops to 0, the log
says so once, and ``WATCHDOG=1`` pings to systemd stop: with ``WatchdogSec=`` in the unit systemd kills the
daemon and ``Restart=`` starts a fresh one, which picks the waiting tiles up again (nothing is lost: inputs
stay in ``incoming/`` until their results are committed). An idle daemon with nothing to do is healthy.
"""

from __future__ import annotations

import threading

from mosaic_edge.edge_runtime.logs import get_logger
from mosaic_edge.edge_runtime.metrics_http import Metrics, MetricsServer
from mosaic_edge.edge_runtime.sd_notify import Notifier, watchdog_interval_s

log = get_logger()


def check(metrics: Metrics, stall_s: float) -> tuple[bool, str]:
    """``(healthy, one-line reason)`` of a daemon whose counters and backlog are in ``metrics``."""
    stalled = metrics.stalled_s()
    if stalled > stall_s:
        g = metrics.gauges
        return False, (f"stalled: {int(g.get('spool_ready_entries', 0))} entries ready in incoming/ and "
                       f"{int(g.get('tiles_in_flight', 0))} tiles in flight, no progress for {stalled:.0f} s "
                       f"(limit {stall_s:g} s)")
    return True, "ok"


class Supervisor:
    """Starts and stops what watches the daemon from outside.

    Args:
        metrics: The daemon's metrics (progress and backlog).
        stall_s: Seconds of waiting work without progress after which the daemon is unhealthy.
        port / host: Serve ``/metrics`` and ``/healthz`` there (None: no HTTP endpoint).
        notifier: The service-manager channel (default: from ``$NOTIFY_SOCKET``).
        watchdog_s: systemd's watchdog period (default: from ``$WATCHDOG_USEC``; None: off).
    """

    def __init__(self, metrics: Metrics, stall_s: float, port: int | None = None, host: str = "127.0.0.1",
                 notifier: Notifier | None = None, watchdog_s: float | None = None):
        self.metrics, self.stall_s = metrics, stall_s
        self.notifier = notifier or Notifier()
        self.watchdog_s = watchdog_interval_s() if watchdog_s is None else watchdog_s
        self.server = MetricsServer(metrics, port, host, self.health) if port is not None else None
        periods = [p for p in (self.watchdog_s and self.watchdog_s / 2, stall_s / 4, 5.0) if p]
        self.tick_s = max(min(periods), 0.01)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self.healthy = True

    @property
    def address(self) -> tuple[str, int] | None:
        return self.server.address if self.server is not None else None

    def health(self) -> tuple[bool, str]:
        return check(self.metrics, self.stall_s)

    def start(self) -> None:
        """Serve the endpoint, tell the service manager we are ready and start pinging its watchdog."""
        if self.server is not None:
            self.server.__enter__()
        self.notifier.notify("READY=1", "STATUS=serving")
        self._thread.start()

    def stop(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self.server is not None:
            self.server.__exit__(None, None, None)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.beat()

    def beat(self) -> bool:
        """Evaluate health once: gauge, log on change, ``WATCHDOG=1`` only while healthy."""
        ok, reason = self.health()
        self.metrics.set("healthy", 1.0 if ok else 0.0)
        if ok != self.healthy:
            self.healthy = ok
            if ok:
                log.info("progressing again", extra={"fields": {}})
                self.notifier.notify("STATUS=serving")
            else:
                log.error("daemon stalled", extra={"fields": {
                    "reason": reason, "watchdog_restart": bool(self.watchdog_s and self.notifier.enabled)}})
                self.notifier.notify(f"STATUS={reason}")
        if ok and self.watchdog_s:
            self.notifier.notify("WATCHDOG=1")
        return ok
