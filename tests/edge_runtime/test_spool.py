"""The spool under hostile entries (issue 15): one entry never stops the others, every kind of entry and name
gets an answer, entries that cannot be moved are reported once, and a vanished spool is a clean exit."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from mosaic_edge.edge_runtime import spool as spool_mod
from mosaic_edge.edge_runtime.daemon import EXIT_SPOOL_GONE, Daemon, ServeConfig
from mosaic_edge.edge_runtime.runner import open_runner
from mosaic_edge.edge_runtime.spool import Spool, SpoolGone
from mosaic_edge.edge_runtime.spool_names import (
    MAX_ID_BYTES,
    NAME_MAX,
    derived_names,
    escape,
    one_line,
    quarantine_base,
    valid_tile_id,
)
from tests.support.logs import runtime_log
from tests.support.runtime import read_results, write_npz_tile


def _daemon(model: Path, spool: Path | Spool, **cfg) -> Daemon:
    config = {"settle_s": 0.0, "poll_s": 0.05, "max_wait_ms": 5.0, "once": True, **cfg}
    return Daemon(open_runner(model, kind="ort", threads=1), spool, ServeConfig(**config))


def _run(daemon: Daemon, timeout: float = 60.0) -> int | None:
    """``daemon.run()`` in a thread; its exit code, or None when it did not return in time (then stopped)."""
    rc: list[int] = []
    thread = threading.Thread(target=lambda: rc.append(daemon.run()), daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        daemon.stop()
        thread.join(10)
        return None
    return rc[0]


@pytest.fixture
def log_lines():
    with runtime_log() as lines:
        yield lines


def _odd_entry(inc: Path, kind: str) -> str:
    """One entry of an unexpected kind; returns its name."""
    if kind == "stale_folder_marker":  # the entry of the reported bug: a folder named like a stale marker
        (inc / "zz.ready").mkdir()
        os.utime(inc / "zz.ready", (0, 0))
        return "zz.ready"
    if kind == "fifo_marker":
        os.mkfifo(inc / "good0.npz.ready")
        return "good0.npz.ready"
    if kind == "symlink_marker":
        os.symlink("/etc/hostname", inc / "good1.npz.ready")
        return "good1.npz.ready"
    if kind == "fifo":
        os.mkfifo(inc / "pipe.npz")
        return "pipe.npz"
    if kind == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(inc / "sock"))
        return "sock"
    if kind == "symlink_loop":
        os.symlink("loop", inc / "loop")
        return "loop"
    if kind == "long_name_folder":
        (inc / ("x" * 250)).mkdir()
        return "x" * 250
    raise ValueError(kind)


ODD = ["stale_folder_marker", "fifo_marker", "symlink_marker", "fifo", "socket", "symlink_loop",
       "long_name_folder"]


@pytest.mark.parametrize("odd", ODD)
def test_reported_spool_20_good_9_malformed_1_odd(tmp_path, tiny_onnx, log_lines, odd):
    """The reported bug: one odd entry made every scan fail ("spool scan failed" every second, nothing done)."""
    spool = tmp_path / "spool"
    inc = spool / "incoming"
    inc.mkdir(parents=True)
    for i in range(20):
        write_npz_tile(inc / f"good{i}.npz", seed=i)
    for i in range(9):
        (inc / f"bad{i}.npz").write_bytes(b"junk" * i)
    name = _odd_entry(inc, odd)
    daemon = _daemon(tiny_onnx, spool)
    assert _run(daemon) == 0
    assert set(read_results(spool)) == {f"good{i}" for i in range(20)}
    failed = sorted(os.listdir(spool / "failed"))
    assert len(failed) == 2 * 10 and all(n.endswith(".reason") or n + ".reason" in failed for n in failed)
    assert os.listdir(inc) == []
    lines = log_lines()
    assert not [r for r in lines if r["msg"] in ("spool scan failed", "cannot move entry to failed/; "
                                                 "skipped until it changes")]
    assert daemon.metrics.counters["tiles_failed"] == 10
    reason = next(p.read_text() for p in (spool / "failed").glob("*.reason") if escape(name)[:40] in p.read_text())
    assert reason.count("\n") == 1


def _denying_rename(monkeypatch, names: set[str], err: int = errno.EACCES) -> None:
    real = os.rename

    def rename(src, dst, *a, **kw):
        if os.path.basename(os.fsdecode(src)) in names:
            raise OSError(err, os.strerror(err), src)
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(spool_mod.os, "rename", rename)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_unmovable_entry_is_skipped_and_reported_once(tmp_path, tiny_onnx, monkeypatch, log_lines, err):
    spool = tmp_path / "spool"
    inc = spool / "incoming"
    inc.mkdir(parents=True)
    (inc / "locked").mkdir()  # e.g. a folder owned by another user: renaming it needs write access to it
    (inc / "bad.npz").write_bytes(b"x")
    for i in range(3):
        write_npz_tile(inc / f"g{i}.npz", seed=i)
    _denying_rename(monkeypatch, {"locked"}, err)
    daemon = _daemon(tiny_onnx, spool, once=False, poll_s=0.02)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        deadline = time.time() + 30
        while daemon.metrics.counters["tiles_done"] < 3 or not daemon.spool.unmovable:
            assert time.time() < deadline
            time.sleep(0.02)
        scans = _count_scans(daemon, 1.0)  # a second of 20 ms polls: many scans, no new report
    finally:
        daemon.stop()
        thread.join(30)
    assert scans >= 5
    reports = [r for r in log_lines() if r["msg"].startswith("cannot move entry")]
    assert len(reports) == 1 and reports[0]["entry"] == "locked" and os.strerror(err) in reports[0]["error"]
    assert set(daemon.spool.unmovable) == {"locked"}
    assert daemon.metrics.gauges["spool_unmovable_entries"] == 1
    assert "mosaic_edge_spool_unmovable_entries 1.0" in daemon.metrics.render()
    assert (inc / "locked").is_dir() and not (spool / "failed" / "locked.reason").exists()
    assert sorted(os.listdir(spool / "failed")) == ["bad.npz", "bad.npz.reason"]


def _counting_scans(daemon: Daemon) -> list[int]:
    """Count the daemon's spool scans from now on: the returned list's one item."""
    calls = [0]
    real = daemon.spool.poll

    def counting(*a, **kw):
        calls[0] += 1
        return real(*a, **kw)

    daemon.spool.poll = counting  # type: ignore[method-assign]
    return calls


def _count_scans(daemon: Daemon, seconds: float) -> int:
    real = daemon.spool.poll
    calls = _counting_scans(daemon)
    time.sleep(seconds)
    daemon.spool.poll = real  # type: ignore[method-assign]
    return calls[0]


def test_unmovable_entry_is_retried_when_it_changes(tmp_path):
    spool = Spool(tmp_path / "s", settle_s=0, unmovable_retry_s=3600)
    (spool.incoming / "x.txt").write_text("a")
    ready, _ = spool.poll()
    real = os.rename
    spool_mod.os.rename = lambda *a: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied"))  # type: ignore
    try:
        q = spool.quarantine("x.txt", ready[0].problem or "")
    finally:
        spool_mod.os.rename = real  # type: ignore[assignment]
    assert q.dest is None and q.first_report and "x.txt" in spool.unmovable
    assert spool.poll() == ([], 0)  # skipped while unchanged
    (spool.incoming / "x.txt").write_text("changed")
    ready, _ = spool.poll()
    assert [c.name for c in ready] == ["x.txt"]
    assert spool.quarantine("x.txt", "still not a tile").dest == "x.txt"
    assert not spool.unmovable


def test_entry_that_cannot_be_inspected_is_quarantined(tmp_path, tiny_onnx, monkeypatch):
    """EACCES while looking at one entry (an unprivileged daemon, a folder it may not read): that entry fails."""
    spool = tmp_path / "spool"
    inc = spool / "incoming"
    (inc / "secret").mkdir(parents=True)
    write_npz_tile(inc / "ok.npz")
    real = os.lstat

    def lstat(path, *a, **kw):
        if os.fsdecode(path).endswith("/secret"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path, *a, **kw)

    monkeypatch.setattr(spool_mod.os, "lstat", lstat)
    assert _run(_daemon(tiny_onnx, spool)) == 0
    assert set(read_results(spool)) == {"ok"}
    assert "Permission denied" in (spool / "failed" / "secret.reason").read_text()


def _write_bytes_name(folder: Path, name: bytes, data: bytes) -> None:
    with open(os.fsencode(folder) + b"/" + name, "wb") as f:
        f.write(data)


NAMES = [b"\xff\xfe.npz", b"a\nb.npz", b"\x1b[31mred", b"-rf", b"--help.npz", b"tab\tname", b"x" * 255,
         b"y" * 251 + b".npz", "é.npz".encode(), b"\xed\xa0\x80", b" ", b"a..b.npz", b"-"]


def test_names_of_any_bytes_and_length_are_quarantined_safely(tmp_path, tiny_onnx):
    spool = tmp_path / "spool"
    inc = spool / "incoming"
    inc.mkdir(parents=True)
    tile = write_npz_tile(tmp_path / "t.npz").read_bytes()  # a valid tile, under names that are not valid ids
    for name in NAMES:
        _write_bytes_name(inc, name, tile)
    _write_bytes_name(inc, b".\xffhidden", tile)  # a dot-name: ignored
    daemon = _daemon(tiny_onnx, spool)
    assert _run(daemon) == 0
    assert os.listdir(os.fsencode(inc)) == [b".\xffhidden"]
    failed = os.listdir(os.fsencode(spool / "failed"))
    assert len(failed) == 2 * len(NAMES)
    reasons = []
    for n in failed:
        assert len(n) <= NAME_MAX and all(c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
                                          for c in n), n
        if n.endswith(b".reason"):
            text = (spool / "failed" / os.fsdecode(n)).read_bytes()
            assert text.count(b"\n") == 1 and text.endswith(b"\n") and all(c >= 32 for c in text[:-1])
            reasons.append(text.decode("utf-8"))
    for name in NAMES:  # every original name can be read back from a reason
        assert any(escape(os.fsdecode(name)) in r for r in reasons), name
    long_dest = quarantine_base("x" * 255)
    assert long_dest in {os.fsdecode(n) for n in failed} and len(long_dest) < 200


def test_derived_names_fit_the_name_limit(tmp_path):
    longest = "a" * MAX_ID_BYTES
    assert valid_tile_id(longest) and not valid_tile_id(longest + "a")
    names = derived_names(longest)
    assert max(len(os.fsencode(n)) for n in names.values()) <= NAME_MAX
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    for n in names.values():  # and the file system takes every one of them
        (tmp_path / n).touch()
        (tmp_path / n).unlink()
    assert limit >= NAME_MAX
    for name in ("x" * 255, "\udcff" * 255, "é" * 127):
        base = quarantine_base(name)
        assert len(os.fsencode(base)) + len(".999999.reason") + 14 <= NAME_MAX


def test_longest_valid_tile_and_an_overlong_one(tmp_path, tiny_onnx):
    spool = tmp_path / "spool"
    inc = spool / "incoming"
    longest, overlong = "L" * MAX_ID_BYTES, "O" * (MAX_ID_BYTES + 1)
    write_npz_tile(inc / f"{longest}.npz")
    (inc / f"{longest}.npz.ready").touch()
    write_npz_tile(inc / f"{overlong}.npz")
    (inc / f"{overlong}.npz.ready").touch()
    assert _run(_daemon(tiny_onnx, spool)) == 0
    assert set(read_results(spool)) == {longest}
    short = quarantine_base(f"{overlong}.npz")  # a short unique name; the original is in the reason
    assert sorted(os.listdir(spool / "failed")) == [short, f"{short}.reason"] and len(short) < MAX_ID_BYTES
    reason = (spool / "failed" / f"{short}.reason").read_text()
    assert "at most 200" in reason and f"[entry name: {overlong}.npz]" in reason
    assert os.listdir(inc) == []


def test_numbered_duplicates_in_failed(tmp_path):
    spool = Spool(tmp_path / "s")
    dests = []
    for _ in range(3):
        (spool.incoming / "n.txt").write_text("x")
        dests.append(spool.quarantine("n.txt", "not a tile").dest)
    assert dests == ["n.txt", "n.txt.1", "n.txt.2"]


def test_entry_changing_between_scan_and_read(tmp_path):
    spool = Spool(tmp_path / "s", settle_s=0)
    grow = write_npz_tile(spool.incoming / "grow.npz")
    swap = write_npz_tile(spool.incoming / "swap.npz")
    gone = write_npz_tile(spool.incoming / "gone.npz")
    folder = spool.incoming / "folder"
    folder.mkdir()
    write_npz_tile(folder / "t.npz")
    ready = {c.name: c for c in spool.poll()[0]}
    assert set(ready) == {"grow.npz", "swap.npz", "gone.npz", "folder"}
    with open(grow, "ab") as f:
        f.write(b"more")
    write_npz_tile(spool.incoming / ".new.npz", seed=7).rename(swap)  # replaced by another file
    gone.unlink()
    (folder / "late.txt").write_text("a file arriving inside the folder")
    assert spool.recheck(ready["grow.npz"]) == "changed"
    assert spool.recheck(ready["swap.npz"]) == "changed"
    assert spool.recheck(ready["gone.npz"]) == "gone"
    assert spool.recheck(ready["folder"]) == "changed"
    again = {c.name: c for c in spool.poll()[0]}
    assert spool.recheck(again["grow.npz"]) == "same"


def test_replaced_after_reading_is_not_moved_to_done(tmp_path):
    spool = Spool(tmp_path / "s", settle_s=0)
    tile = write_npz_tile(spool.incoming / "t.npz")
    (cand,) = spool.poll()[0]
    write_npz_tile(spool.incoming / ".t2.npz", seed=3).rename(tile)
    with pytest.raises(OSError, match="replaced"):
        spool.move_done(cand)
    assert tile.exists() and not (spool.done / "t.npz").exists()


def test_stale_and_fresh_orphan_markers(tmp_path):
    spool = Spool(tmp_path / "s", settle_s=0, marker_grace_s=60)
    (spool.incoming / "old.npz.ready").touch()
    os.utime(spool.incoming / "old.npz.ready", (0, 0))
    (spool.incoming / "fresh.npz.ready").touch()
    assert spool.poll() == ([], 1)  # the fresh one may precede its tile: waited for, not removed
    assert sorted(os.listdir(spool.incoming)) == ["fresh.npz.ready"]


def test_vanished_entry_keeps_its_reason_and_scan_goes_on(tmp_path):
    spool = Spool(tmp_path / "s", settle_s=0)
    q = spool.quarantine("never-there.npz", "read failed: it disappeared")
    assert q.dest == "never-there.npz" and q.vanished
    assert (spool.failed / "never-there.npz.reason").read_text() == "read failed: it disappeared\n"


def test_one_line_reasons():
    assert one_line("a\nb\r\nc\td") == "a b c d"
    assert one_line("bad \udcff byte \x1b[31m") == "bad \\xff byte \\x1b[31m"
    assert len(one_line("x" * 5000)) == 2000


@pytest.mark.parametrize("how", ["incoming_removed", "spool_replaced", "results_removed", "incoming_is_a_file"])
def test_spool_removed_or_replaced_while_running(tmp_path, tiny_onnx, log_lines, how):
    import shutil

    spool = tmp_path / "spool"
    daemon = _daemon(tiny_onnx, spool, once=False, poll_s=0.02)
    rc: list[int] = []
    thread = threading.Thread(target=lambda: rc.append(daemon.run()))
    thread.start()
    try:
        write_npz_tile(spool / "incoming" / ".a.npz").rename(spool / "incoming" / "a.npz")
        deadline = time.time() + 30
        while daemon.metrics.counters["tiles_done"] < 1:
            assert time.time() < deadline
            time.sleep(0.02)
        time.sleep(0.3)  # the writer's closing fsync of done/ and incoming/ follows the counter
        calls = _counting_scans(daemon)
        if how == "incoming_removed":
            shutil.rmtree(spool / "incoming")
        elif how == "spool_replaced":
            spool.rename(tmp_path / "old-spool")
            for d in ("incoming", "done", "failed", "results"):
                (spool / d).mkdir(parents=True)
        elif how == "results_removed":
            shutil.rmtree(spool / "results")
        else:
            shutil.rmtree(spool / "incoming")
            (spool / "incoming").write_text("not a folder")
        thread.join(10)
        assert not thread.is_alive(), "the daemon did not exit"
    finally:
        daemon.stop()
        thread.join(30)
    assert rc == [EXIT_SPOOL_GONE] and EXIT_SPOOL_GONE not in (0, 2)
    assert calls[0] <= 2  # no busy loop: the first scan that notices ends the daemon
    errors = [r for r in log_lines() if r["level"] == "error"]
    assert len(errors) == 1 and errors[0]["msg"].startswith("spool folder removed or replaced")
    assert "\n" not in errors[0]["error"]


def test_spool_check_raises_spool_gone(tmp_path):
    spool = Spool(tmp_path / "s")
    spool.check()
    os.rmdir(spool.done)
    with pytest.raises(SpoolGone, match="done"):
        spool.poll()


def test_serve_cli_exits_nonzero_when_spool_vanishes(tmp_path, tiny_onnx):
    """The CLI turns the vanished spool into the exit code systemd restarts (not 2, which it does not)."""
    import shutil
    import subprocess
    import sys

    spool = tmp_path / "spool"
    cmd = [sys.executable, "-m", "mosaic_edge", "serve", "--model", str(tiny_onnx), "--spool", str(spool),
           "--runner", "ort", "--poll-s", "0.05", "--threads", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (spool / "incoming").is_dir() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        shutil.rmtree(spool)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_SPOOL_GONE, err[-2000:]
    errors = [json.loads(line) for line in err.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1 and "spool" in errors[0]["error"]



def test_stale_marker_that_cannot_be_removed_is_quarantined(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "s", settle_s=0, marker_grace_s=0)
    (spool.incoming / "gone.npz.ready").touch()
    real = os.unlink

    def unlink(path, *a, **kw):
        if os.fsdecode(path).endswith("gone.npz.ready"):
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        return real(path, *a, **kw)

    monkeypatch.setattr(spool_mod.os, "unlink", unlink)
    (cand,) = spool.poll()[0]
    assert cand.name == "gone.npz.ready" and "cannot be removed" in (cand.problem or "")
    assert spool.quarantine(cand.name, cand.problem or "").dest == "gone.npz.ready"


def test_watcher_falls_back_to_polling_when_inotify_fails(tmp_path):
    from mosaic_edge.edge_runtime.spool import IncomingWatcher

    class BrokenINotify:
        closed = False

        def read(self, timeout):
            raise OSError(errno.EBADF, "Bad file descriptor")

        def close(self):
            self.closed = True

    watcher = IncomingWatcher(tmp_path, use_inotify=False)
    broken = BrokenINotify()
    watcher.ino = broken
    stop = threading.Event()
    t0 = time.monotonic()
    watcher.wait(0.05, stop)  # no exception: it waits by polling instead
    watcher.wait(0.05, stop)
    assert watcher.ino is None and broken.closed and time.monotonic() - t0 >= 0.09


def test_daemon_takes_an_entry_only_as_it_was_found(tmp_path, tiny_onnx):
    """Between the scan and the read: a grown entry waits to settle again, a vanished one is dropped quietly,
    and an entry that is not a tile is quarantined without being read."""
    spool = tmp_path / "spool"
    for name in ("grow.npz", "gone.npz"):
        write_npz_tile(spool / "incoming" / name)
    (spool / "incoming" / "notes.txt").write_text("not a tile")
    daemon = _daemon(tiny_onnx, spool)
    ready = {c.name: c for c in daemon.spool.poll()[0]}
    with open(ready["grow.npz"].path, "ab") as f:
        f.write(b"still being written")
    (spool / "incoming" / "gone.npz").unlink()
    assert daemon._take(ready["grow.npz"]) == "wait"
    assert daemon._take(ready["gone.npz"]) == "handled"
    assert daemon._take(ready["notes.txt"]) == "handled"
    assert sorted(os.listdir(spool / "failed")) == ["notes.txt", "notes.txt.reason"]
    assert daemon._queue.empty() and (spool / "incoming" / "grow.npz").exists()
    assert "invalid tile name" in (spool / "failed" / "notes.txt.reason").read_text()


def test_an_unexpected_error_on_one_entry_does_not_stop_the_scan(tmp_path, tiny_onnx, monkeypatch, log_lines):
    """Whatever goes wrong looking at one entry (here: a bug, simulated), the others are served."""
    from mosaic_edge.edge_runtime.spool_scan import IncomingScan

    spool = tmp_path / "spool"
    for i in range(3):
        write_npz_tile(spool / "incoming" / f"g{i}.npz", seed=i)
    write_npz_tile(spool / "incoming" / "cursed.npz")
    real = IncomingScan._inspect

    def inspect(self, name, present, now):
        if name == "cursed.npz":
            raise RuntimeError("an entry nobody thought of")
        return real(self, name, present, now)

    monkeypatch.setattr(IncomingScan, "_inspect", inspect)
    assert _run(_daemon(tiny_onnx, spool)) == 0
    assert set(read_results(spool)) == {"g0", "g1", "g2"}
    reason = (spool / "failed" / "cursed.npz.reason").read_text()
    assert "cannot inspect entry (RuntimeError: an entry nobody thought of)" in reason
    assert not [r for r in log_lines() if r["msg"] == "spool scan failed"]


def test_an_unexpected_error_taking_one_entry_does_not_stop_the_reader(tmp_path, tiny_onnx, log_lines):
    spool = tmp_path / "spool"
    for i in range(3):
        write_npz_tile(spool / "incoming" / f"g{i}.npz", seed=i)
    write_npz_tile(spool / "incoming" / "cursed.npz")
    daemon = _daemon(tiny_onnx, spool)
    real = daemon.spool.recheck

    def recheck(cand):
        if cand.name == "cursed.npz":
            raise RuntimeError("a bug in taking entries")
        return real(cand)

    daemon.spool.recheck = recheck  # type: ignore[method-assign]
    assert _run(daemon) == 0
    assert set(read_results(spool)) == {"g0", "g1", "g2"}
    assert "internal error: RuntimeError" in (spool / "failed" / "cursed.npz.reason").read_text()
    assert [r["msg"] for r in log_lines()].count("unexpected error taking an entry") == 1
