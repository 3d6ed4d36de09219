"""The metrics endpoint on prometheus_client (issue 14): Prometheus naming conventions, a private registry per
daemon, the exposition formats a scraper negotiates, and a read-only loopback endpoint."""

from __future__ import annotations

import gzip
import re
import socket
import threading
import urllib.error
import urllib.request

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from mosaic_edge.edge_runtime.daemon import ServeConfig  # noqa: E402
from mosaic_edge.edge_runtime.metrics_http import COUNTERS, GAUGES, STAGES, Metrics, MetricsServer  # noqa: E402


def _request(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _families(metrics: Metrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(metrics.render())}


def test_names_follow_prometheus_conventions():
    m = Metrics()
    m.inc("tiles_done", 2)
    m.observe("infer", 0.02)
    fams = {n: f for n, f in _families(m).items() if n.startswith("mosaic_edge_")}
    for fam in fams.values():
        assert re.fullmatch(r"mosaic_edge_[a-z][a-z0-9_]*", fam.name), fam.name
        assert fam.documentation and fam.documentation != fam.name
        if fam.type == "counter":  # the client library adds _total to every counter sample
            assert {s.name for s in fam.samples} == {fam.name + "_total"}, fam
        else:
            assert not fam.name.endswith("_total"), fam.name
    assert {f"mosaic_edge_{c}" for c in COUNTERS} <= {n for n, f in fams.items() if f.type == "counter"}
    assert {f"mosaic_edge_{g}" for g in GAUGES} <= {n for n, f in fams.items() if f.type == "gauge"}
    hist = fams["mosaic_edge_stage_seconds"]  # base unit in the name
    assert hist.type == "histogram"
    assert {s.labels["stage"] for s in hist.samples} == set(STAGES)
    count = next(s.value for s in hist.samples if s.name.endswith("_count") and s.labels["stage"] == "infer")
    assert count == 1
    assert any(s.value == 2 for s in fams["mosaic_edge_tiles_done"].samples)
    assert fams["mosaic_edge_start_time_seconds"].type == "gauge"
    text = m.render()
    assert "mosaic_edge_tiles_done_total 2.0" in text and "_total_total" not in text


def test_each_metrics_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.inc("tiles_done")
    a.observe("read", 0.5)
    assert b.counters["tiles_done"] == 0
    assert "mosaic_edge_tiles_done_total 0.0" in b.render() and "mosaic_edge_tiles_done_total 1.0" in a.render()
    assert 'mosaic_edge_stage_seconds_count{stage="read"} 0.0' in b.render()
    with MetricsServer(a, 0) as sa, MetricsServer(b, 0) as sb:  # two endpoints in one process
        assert _request(f"http://127.0.0.1:{sa.address[1]}/metrics")[2] != _request(
            f"http://127.0.0.1:{sb.address[1]}/metrics")[2]


def test_counters_are_thread_safe_and_any_name_works():
    m = Metrics()

    def work() -> None:
        for _ in range(2000):
            m.inc("patches")
            m.inc("custom_events")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.counters["patches"] == 8000
    assert "mosaic_edge_custom_events_total 8000.0" in m.render()
    m.observe("a_new_stage", 1.0)
    assert 'mosaic_edge_stage_seconds_count{stage="a_new_stage"} 1.0' in m.render()


def test_endpoint_formats_and_methods():
    m = Metrics()
    m.inc("tiles_done")
    health = {"state": (True, "ok")}
    with MetricsServer(m, 0, health=lambda: health["state"]) as server:
        host, port = server.address
        url = f"http://{host}:{port}"
        code, headers, body = _request(url + "/metrics")
        assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert b"mosaic_edge_tiles_done_total 1.0" in body
        code, headers, body = _request(url + "/metrics", headers={"Accept": "application/openmetrics-text"})
        assert headers["Content-Type"].startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
        code, headers, body = _request(url + "/metrics", headers={"Accept-Encoding": "gzip"})
        assert headers.get("Content-Encoding") == "gzip" and b"tiles_done" in gzip.decompress(body)
        code, _, body = _request(url + "/metrics?name[]=mosaic_edge_tiles_done_total")
        assert b"tiles_done" in body and b"stage_seconds" not in body
        assert _request(url + "/metrics", "HEAD")[::2] == (200, b"")
        assert _request(url + "/healthz")[::2] == (200, b"ok\n")
        health["state"] = (False, "stalled: 3 entries ready")
        assert _request(url + "/healthz")[::2] == (503, b"stalled: 3 entries ready\n")
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            code, headers, _ = _request(url + "/metrics", method)
            assert code == 405 and headers["Allow"] == "GET, HEAD"
        for path in ("/", "/favicon.ico", "/metrics/../x", "/results/a.jsonl", "/healthz/x"):
            assert _request(url + path)[0] == 404, path


def test_binds_loopback_unless_told():
    assert ServeConfig().metrics_host == "127.0.0.1"
    with MetricsServer(Metrics(), 0) as server:
        assert server.address[0] == "127.0.0.1"
        assert server.httpd.socket.getsockname()[0] == "127.0.0.1"


def test_binds_ipv6_when_asked():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = MetricsServer(Metrics(), 0, host="::1")
    except OSError:
        pytest.skip("cannot bind ::1 here")
    with server:
        assert server.httpd.socket.family == socket.AF_INET6
        code, _, _ = _request(f"http://[::1]:{server.address[1]}/healthz")
        assert code == 200
