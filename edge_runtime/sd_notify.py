"""The systemd notification protocol (``sd_notify(3)``), without libsystemd.

A service started with ``Type=notify`` finds the path of an ``AF_UNIX`` datagram socket in ``$NOTIFY_SOCKET``
(a leading ``@`` means the Linux abstract namespace) and sends newline-separated ``KEY=VALUE`` assignments to it,
one datagram per message: ``READY=1`` once it serves, ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC``
microseconds while healthy (when ``WatchdogSec=`` is set and ``$WATCHDOG_PID``, if present, is this process),
``STATUS=...`` for ``systemctl status``, and ``STOPPING=1`` on shutdown. Outside systemd the variables are
absent and every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from mosaic_edge.edge_runtime.logs import get_logger

log = get_logger()


def socket_address(value: str) -> str:
    """The ``AF_UNIX`` address of a ``$NOTIFY_SOCKET`` value (``@name`` -> abstract ``\\0name``)."""
    return "\0" + value[1:] if value.startswith("@") else value


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds within which systemd expects ``WATCHDOG=1``, or None when its watchdog is off for us."""
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    try:
        if not usec or int(usec) <= 0 or (pid and int(pid) != os.getpid()):
            return None
        return int(usec) / 1e6
    except ValueError:
        return None


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET`` (of ``env``, default the process environment).

    A failed send is logged once and never raised: the daemon serves with or without a service manager.
    """

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        value = env.get("NOTIFY_SOCKET", "")
        self.address = socket_address(value) if value.startswith(("/", "@")) else None
        self._warned = False
        if value and self.address is None:
            log.warning("NOTIFY_SOCKET is not a unix socket path; not notifying", extra={"fields": {
                "notify_socket": value}})

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True when sent."""
        if self.address is None:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager", extra={"fields": {"error": str(exc)}})
            return False
        return True
