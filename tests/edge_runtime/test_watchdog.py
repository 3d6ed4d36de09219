"""The watchdog (issue 15): sd_notify over a real AF_UNIX datagram socket, /healthz and WATCHDOG=1 pings that
stop while ready tiles wait without progress, and a daemon that stalls and recovers."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mosaic_edge.edge_runtime.daemon import EXIT_SPOOL_GONE, Daemon, ServeConfig
from mosaic_edge.edge_runtime.metrics_http import Metrics
from mosaic_edge.edge_runtime.runner import open_runner
from mosaic_edge.edge_runtime.sd_notify import Notifier, socket_address, watchdog_interval_s
from mosaic_edge.edge_runtime.watchdog import Supervisor, check
from tests.support.logs import runtime_log
from tests.support.runtime import REPO_ROOT, write_npz_tile


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket (a path, or abstract with ``@``)."""

    def __init__(self, address: str):
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(socket_address(address))
        self.sock.settimeout(0.05)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except (TimeoutError, socket.timeout):  # noqa: UP041 - socket.timeout is TimeoutError from 3.10 on
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def log_lines():
    with runtime_log() as lines:
        yield lines


@pytest.fixture
def notify_socket(tmp_path):
    s = NotifySocket(str(tmp_path / "notify"))
    yield s
    s.close()


def test_notify_over_a_real_datagram_socket(notify_socket):
    n = Notifier({"NOTIFY_SOCKET": notify_socket.env_value})
    assert n.enabled and n.notify("READY=1", "STATUS=serving") and n.notify("WATCHDOG=1")
    assert notify_socket.messages() == ["READY=1\nSTATUS=serving", "WATCHDOG=1"]
    assert n.notify("STATUS=two\nlines")  # a value never smuggles in another assignment
    assert notify_socket.messages() == ["STATUS=two lines"]


def test_notify_abstract_namespace():
    name = f"@mosaic-edge-test-{os.getpid()}-{time.monotonic_ns()}"
    s = NotifySocket(name)
    try:
        assert Notifier({"NOTIFY_SOCKET": name}).notify("READY=1")
        assert s.messages() == ["READY=1"]
    finally:
        s.close()


def test_notify_without_a_service_manager(tmp_path, log_lines):
    assert not Notifier({}).enabled and not Notifier({}).notify("READY=1")
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert not gone.notify("READY=1") and not gone.notify("WATCHDOG=1")  # never raises
    assert [r["msg"] for r in log_lines()].count("cannot notify the service manager") == 1
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_watchdog_interval_from_the_environment():
    pid = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None  # not for us
    assert watchdog_interval_s({}) is None and watchdog_interval_s({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None


def test_health_needs_waiting_work_and_no_progress():
    m = Metrics()
    assert check(m, 0.05) == (True, "ok")
    time.sleep(0.1)
    assert check(m, 0.05)[0], "idle is healthy however long ago the last progress was"
    m.note_backlog(ready=3, in_flight=1)
    assert check(m, 0.05)[0], "work that just arrived is not a stall"
    time.sleep(0.1)
    ok, reason = check(m, 0.05)
    assert not ok and reason.startswith("stalled: 3 entries ready in incoming/ and 1 tiles in flight")
    m.inc("patches")
    assert check(m, 0.05)[0]
    m.note_backlog(0, 0)
    time.sleep(0.1)
    assert check(m, 0.05)[0]


def test_supervisor_pings_only_while_healthy(notify_socket, log_lines):
    m = Metrics()
    sup = Supervisor(m, stall_s=0.05, notifier=Notifier({"NOTIFY_SOCKET": notify_socket.env_value}),
                     watchdog_s=1.0)
    sup.start()
    sup.stop()
    assert notify_socket.messages()[:1] == ["READY=1\nSTATUS=serving"]
    assert sup.beat() and notify_socket.messages() == ["WATCHDOG=1"]
    m.note_backlog(2, 0)
    time.sleep(0.1)
    assert not sup.beat() and not sup.beat()
    msgs = notify_socket.messages()
    assert "WATCHDOG=1" not in msgs and len(msgs) == 1 and msgs[0].startswith("STATUS=stalled")
    assert m.gauges["healthy"] == 0 and [r["msg"] for r in log_lines()].count("daemon stalled") == 1
    m.inc("tiles_done")
    assert sup.beat() and notify_socket.messages() == ["STATUS=serving", "WATCHDOG=1"]


def _healthz(address) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/healthz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait(pred, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_stalled_daemon_turns_unhealthy_stops_pinging_and_recovers(tmp_path: Path, tiny_onnx, notify_socket,
                                                                   monkeypatch, log_lines):
    """Inference hangs with tiles waiting: /healthz 503, no WATCHDOG=1 (systemd would restart); it resumes."""
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    runner = open_runner(tiny_onnx, kind="ort", threads=1)
    release, infer = threading.Event(), runner.infer
    runner.infer = lambda batch: (release.wait(30), infer(batch))[1]  # type: ignore[method-assign]
    spool = tmp_path / "spool"
    cfg = ServeConfig(settle_s=0, poll_s=0.05, max_wait_ms=5, metrics_port=0, stall_s=0.5)
    daemon = Daemon(runner, spool, cfg)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        _wait(lambda: daemon.metrics_address is not None)
        time.sleep(1.0)  # idle for longer than stall_s: still healthy
        assert _healthz(daemon.metrics_address) == (200, "ok\n")
        msgs = notify_socket.messages()
        assert msgs[0] == "READY=1\nSTATUS=serving" and msgs.count("WATCHDOG=1") >= 3
        for i in range(3):
            write_npz_tile(spool / "incoming" / f".t{i}.npz", seed=i).rename(spool / "incoming" / f"t{i}.npz")
        _wait(lambda: _healthz(daemon.metrics_address)[0] == 503)
        code, text = _healthz(daemon.metrics_address)
        assert text.startswith("stalled:") and "no progress for" in text
        time.sleep(0.2)  # longer than a tick: a ping decided just before the stall has arrived by now
        notify_socket.messages()
        time.sleep(0.5)
        assert "WATCHDOG=1" not in notify_socket.messages()  # systemd's WatchdogSec would now fire
        release.set()
        _wait(lambda: daemon.metrics.counters["tiles_done"] == 3)
        _wait(lambda: _healthz(daemon.metrics_address) == (200, "ok\n"))
        time.sleep(0.3)
        assert "WATCHDOG=1" in notify_socket.messages()
    finally:
        release.set()
        daemon.stop()
        thread.join(30)
    assert notify_socket.messages()[-1] == "STOPPING=1\nSTATUS=stopping"
    lines = log_lines()
    assert [r["msg"] for r in lines].count("daemon stalled") == 1
    assert next(r for r in lines if r["msg"] == "daemon stalled")["watchdog_restart"] is True


UNIT = REPO_ROOT / "deploy" / "mosaic-edge.service"


def _unit_settings(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a systemd unit (continuations joined, comments dropped), all values per key."""
    out: dict[str, list[str]] = {}
    for line in text.replace("\\\n", " ").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(" ".join(value.split()))
    return out


def test_systemd_unit_uses_notify_and_the_watchdog():
    from typer.testing import CliRunner

    from mosaic_edge.cli import app

    unit = _unit_settings(UNIT.read_text())
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert float(unit["WatchdogSec"][0]) > 0 and unit["Restart"] == ["on-failure"]
    assert "AF_UNIX" in unit["RestrictAddressFamilies"][0].split()  # the notify socket
    assert str(EXIT_SPOOL_GONE) not in unit["RestartPreventExitStatus"][0].split()
    args = unit["ExecStart"][0].split()
    assert args[1] == "serve"
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    known = set(re.findall(r"--[a-z][a-z0-9-]*", result.output))
    flags = [a for a in args[2:] if a.startswith("--")]
    assert "--stall-s" in flags and set(flags) <= known, set(flags) - known
    assert "--metrics-host" not in flags  # the default, loopback, stands


def test_systemd_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).with_name("mosaic-edge")
    if not exe.exists():
        pytest.skip("the mosaic-edge entry point is not installed beside this interpreter")
    unit = tmp_path / "mosaic-edge.service"
    unit.write_text(UNIT.read_text().replace("/opt/mosaic-edge/venv/bin/mosaic-edge", str(exe)))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "mosaic-edge.service" in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr
