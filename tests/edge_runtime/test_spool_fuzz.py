"""Property-based fuzzing of the spool (issue 15): Hypothesis draws spools of good tiles mixed with entries of
every kind and name, some of which cannot be moved; ``serve --once`` (the in-process daemon over the ONNX
Runtime runner) must give every entry its answer and exit 0 in time. The harness is shared with
``benchmarks/spool_fuzz.py``, which runs it at scale with concurrent writers and SIGKILLs.

``MOSAIC_EDGE_FUZZ_EXAMPLES`` sets the number of examples (default 100, ~10 s on 2 cores);
``MOSAIC_EDGE_FUZZ_RANDOM=1`` draws fresh examples instead of the fixed, reproducible set.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path
from unittest import mock

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from benchmarks.spool_fuzz import KINDS, Entry, Plan, build, check, valid_name  # noqa: E402
from mosaic_edge.edge_runtime import spool as spool_mod  # noqa: E402
from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig  # noqa: E402
from mosaic_edge.edge_runtime.logs import LOGGER  # noqa: E402
from mosaic_edge.edge_runtime.runner import open_runner  # noqa: E402
from mosaic_edge.edge_runtime.spool import Spool  # noqa: E402

EXAMPLES = int(os.environ.get("MOSAIC_EDGE_FUZZ_EXAMPLES", "100"))
RANDOM = bool(os.environ.get("MOSAIC_EDGE_FUZZ_RANDOM"))  # fresh examples each run instead of a fixed set
TIME_BOUND_S = 60.0
SPECIAL = [b"-rf", b"--help", b"-", b".hidden", b"..x", b"\n", b"a\nb.npz", b"\xff\xfe.npz", b"\x1b[31m",
           b"x" * 255, b"y" * 251 + b".npz", b"z" * 249 + b".ready", b"a..b", b"CON", b" ", b"tile.ready.ready",
           "é".encode(), b"\xed\xa0\x80"]

names = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.binary(min_size=190, max_size=255),
    st.binary(min_size=1, max_size=30).map(lambda b: b + b".npz"),
    st.text("ab.-_\n", min_size=1, max_size=12).map(lambda t: t.encode() + b".ready"),
    st.sampled_from(SPECIAL),
).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"0")).filter(valid_name)
entries = st.builds(Entry, names, st.sampled_from(KINDS), st.booleans(), st.integers(0, 2**30))
plans = st.builds(
    lambda good, extra: Plan([(i, form, marker) for i, (form, marker) in enumerate(good)], extra),
    st.lists(st.tuples(st.sampled_from(["file", "file", "folder"]), st.booleans()), max_size=5),
    st.lists(entries, max_size=10),
)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _serve_once(root: Path, model: Path, denied: set[bytes]) -> tuple[Daemon, list[logging.LogRecord], bool]:
    """Run the daemon (``--once``) with ``os.rename`` refused (EACCES) for the ``denied`` entry names."""
    real_rename = os.rename

    def rename(src, dst, *a, **kw):
        if os.path.basename(os.fsencode(src)) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", src)
        return real_rename(src, dst, *a, **kw)

    cfg = ServeConfig(settle_s=0.0, poll_s=0.05, max_wait_ms=2.0, once=True, inotify=False)
    daemon = Daemon(open_runner(model, kind="ort", threads=1), Spool(root / "spool", 0.0, marker_grace_s=0.0), cfg)
    handler = _Records()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    rc: list[int] = []
    try:
        with mock.patch.object(spool_mod.os, "rename", rename):
            thread = threading.Thread(target=lambda: rc.append(daemon.run()), daemon=True)
            thread.start()
            thread.join(TIME_BOUND_S)
    finally:
        logger.removeHandler(handler)
    finished = not thread.is_alive()
    if not finished:
        daemon.stop()
        thread.join(10)
    return daemon, handler.records, finished and rc == [0]


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(plan=plans, data=st.data())
def test_every_entry_gets_its_answer(tmp_path_factory, tiny_onnx, plan, data):
    root = tmp_path_factory.mktemp("fuzz")
    built = build(root, plan)
    denied = set(data.draw(st.lists(st.sampled_from(sorted(built.bad)), unique=True, max_size=2))
                 if built.bad else [])
    daemon, records, ok = _serve_once(root, tiny_onnx, denied)
    assert ok, "serve --once did not exit 0 within the time bound"
    problems = check(built, denied)
    assert not problems, "\n".join(problems)
    messages = [r.getMessage() for r in records]
    assert "spool scan failed" not in messages and "unexpected error taking an entry" not in messages
    unmovable = {os.fsencode(n) for n in daemon.spool.unmovable}
    assert unmovable == denied
    assert daemon.metrics.gauges["spool_unmovable_entries"] == len(denied)
    assert messages.count("cannot move entry to failed/; skipped until it changes") == len(denied)
    assert daemon.metrics.counters["tiles_done"] == len(built.good)
