"""A really full output volume (issue 7): results/ on a tiny tmpfs filled up; the daemon pauses and retries,
loses nothing, and resumes when space returns. Skipped where tmpfs cannot be mounted (needs root)."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig
from mosaic_edge.edge_runtime.runner import open_runner
from tests.support.runtime import read_results, write_npz_tile


@pytest.fixture()
def small_results_volume(tmp_path):
    results = tmp_path / "spool" / "results"
    results.mkdir(parents=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(results)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("mount is not available")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()[:100]}")
    try:
        yield results
    finally:
        subprocess.run(["umount", "-l", str(results)], capture_output=True, timeout=10)


def test_full_tmpfs_pauses_then_resumes(tmp_path, tiny_onnx, small_results_volume):
    filler = small_results_volume / ".filler"
    with open(filler, "wb", buffering=0) as f:  # fill the volume completely
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    spool = tmp_path / "spool"
    for i in range(6):
        write_npz_tile(spool / "incoming" / f"f{i}.npz", seed=i)
    cfg = ServeConfig(settle_s=0, poll_s=0.05, max_wait_ms=5, disk_retry_s=0.05, disk_retry_max_s=0.2)
    daemon = Daemon(open_runner(tiny_onnx, kind="ort", threads=1), spool, cfg)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        deadline = time.time() + 30
        while daemon.metrics.counters["disk_full_retries"] < 3:
            assert time.time() < deadline
            time.sleep(0.02)
        assert os.listdir(spool / "done") == [] and len(os.listdir(spool / "incoming")) == 6
        filler.unlink()  # space returns
        while len(os.listdir(spool / "done")) < 6:
            assert time.time() < deadline
            time.sleep(0.02)
    finally:
        daemon.stop()
        thread.join(30)
    assert set(read_results(spool)) == {f"f{i}" for i in range(6)}
    assert os.listdir(spool / "failed") == []
    assert not [n for n in os.listdir(small_results_volume) if n.startswith(".tmp-")]
