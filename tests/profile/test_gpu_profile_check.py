"""The GPU profile check: skips cleanly without CUDA, stays out of the runtime's import graph."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mosaic_edge.export import gpu_profile_check

RUNTIME = Path(__file__).resolve().parents[2] / "edge_runtime"


def test_no_runtime_module_imports_the_gpu_check():
    pattern = re.compile(r"^\s*(from|import)\s+.*gpu_profile_check", re.MULTILINE)
    offenders = [p.name for p in RUNTIME.glob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_skips_cleanly_without_cuda(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_profile_check.run() == [
        {"name": "gpu_profile", "status": "skipped", "details": {"reason": "no CUDA device"}}]


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_graph_profile_on_gpu():
    results = gpu_profile_check.run()
    failed = [r for r in results if r["status"] != "ok"]
    assert not failed, failed
    graph = [r for r in results if r["name"].startswith("gpu_profile/cuda_graph/fp")]
    assert len(graph) == 2 * len(gpu_profile_check.BATCHES)
    for r in graph:
        st = r["details"]["stages"]
        assert 0 < st["inference"]["p50_ms"] <= st["inference"]["p99_ms"]
        assert r["details"]["throughput_tiles_s"] > 0
