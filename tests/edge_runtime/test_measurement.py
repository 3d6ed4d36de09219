"""The one measurement path: percentile math, stage accounting, runner-reported splits, pipelining."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mosaic_edge.edge_runtime.profiling import (
    STAGES,
    Pipeline,
    StageClock,
    measure_latency,
    measure_throughput,
    summarize,
)


def test_summarize_matches_numpy_and_known_answers():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100, 1001):
        x = rng.lognormal(size=n)
        s = summarize(x)
        for q in (50, 90, 99):
            assert s[f"p{q}_ms"] == pytest.approx(float(np.percentile(x, q)))
        assert s["mean_ms"] == pytest.approx(float(x.mean()))
        assert s["n"] == n and s["min_ms"] == x.min() and s["max_ms"] == x.max()
    # 1..100 with linear interpolation between order statistics
    s = summarize(np.arange(1, 101))
    assert (s["p50_ms"], s["p90_ms"], s["p99_ms"]) == pytest.approx((50.5, 90.1, 99.01))
    with pytest.raises(ValueError):
        summarize([])


def test_stage_times_add_up_to_iteration_time():
    clock = StageClock()
    for _ in range(5):
        with clock.iteration():
            with clock.stage("read"):
                time.sleep(0.002)
            with clock.stage("read"):  # a second tile of the same batch adds to the same stage
                time.sleep(0.002)
            with clock.stage("inference"):
                time.sleep(0.003)
    totals = np.asarray(clock.end_to_end)
    staged = np.sum([clock.samples[s] for s in STAGES], axis=0)
    assert np.all(staged <= totals + 1e-6)
    assert np.median(totals - staged) < 1.0  # ms of bookkeeping; median, as any iteration may be preempted
    assert min(clock.samples["read"]) >= 4.0 and min(clock.samples["inference"]) >= 3.0
    assert clock.samples["write"] == [0.0] * 5
    with pytest.raises(RuntimeError):
        clock.add("read", 1.0)


class _Runner:
    """A runner that reports copy and device times the way the TensorRT runner does (``last_timings``)."""

    def __init__(self, h2d=1.0, d2h=0.5, device=2.0, fail_after=None):
        self.timings = {"h2d_ms": h2d, "d2h_ms": d2h, "device_ms": device}
        self.last_timings = None
        self.calls = 0
        self.fail_after = fail_after

    def infer(self, batch):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("boom")
        time.sleep(0.005)
        self.last_timings = dict(self.timings)
        return {"logits": batch["x"] * 2}


def _pipeline(written):
    return Pipeline(
        tile_stages=(("read", lambda src: float(src)), ("prepare", lambda v: np.full((1, 3), v, np.float32))),
        batch=lambda raws: {"x": np.concatenate(raws)},
        postprocess=lambda raws, out: out["logits"].sum(axis=1).tolist(),
        write=lambda records, index: written.append((index, records)),
    )


def test_latency_moves_runner_copy_times_and_keeps_device_time_apart():
    written = []
    res = measure_latency(_pipeline(written), _Runner(), list(range(10)), batch=4, iterations=6, warmup=2)
    assert res["iterations"] == 6 and res["batch"] == 4 and res["patches_per_batch"] == 4
    assert res["stages"]["h2d"]["p50_ms"] == pytest.approx(1.0)
    assert res["stages"]["d2h"]["p50_ms"] == pytest.approx(0.5)
    assert res["stages"]["inference"]["p50_ms"] >= 5.0 - 1.5  # host time of infer minus the copies
    assert res["extra"]["inference_device"]["p50_ms"] == pytest.approx(2.0)
    # every iteration's stages (copies included) still add up to its end-to-end time
    samples = res["samples_ms"]
    totals = np.asarray(samples["end_to_end"])
    staged = np.sum([samples[s] for s in STAGES], axis=0)
    assert np.all(staged <= totals + 1e-6)
    assert np.median(totals - staged) < 1.0
    assert len(written) == 8  # warm-up batches run the whole pipeline too
    # the timed run starts at the first source again and cycles: its 6th batch is sources 20..23 mod 10
    assert written[-1][1] == [2 * 3 * float(v) for v in (0, 1, 2, 3)]
    assert written[-2][1] == [2 * 3 * float(v) for v in (6, 7, 8, 9)]


def test_throughput_counts_tiles_and_writes_everything():
    written = []
    res = measure_throughput(_pipeline(written), _Runner(), list(range(10)), batch=3, iterations=7)
    assert res["batches"] == 7 and res["tiles"] == 21 and res["patches"] == 21
    assert [i for i, _ in written] == list(range(7))
    assert res["throughput_tiles_s"] == pytest.approx(21 / res["wall_s"])
    assert res["t1"] > res["t0"]


def test_throughput_propagates_errors_without_hanging():
    with pytest.raises(RuntimeError, match="boom"):
        measure_throughput(_pipeline([]), _Runner(fail_after=2), list(range(10)), batch=2, iterations=20)

    def bad_write(records, index):
        raise OSError("disk full")

    pipe = Pipeline((("read", lambda s: np.zeros((1, 3), np.float32)),),
                    batch=lambda r: {"x": np.concatenate(r)}, postprocess=lambda r, o: o, write=bad_write)
    with pytest.raises(OSError, match="disk full"):
        measure_throughput(pipe, _Runner(), list(range(4)), batch=2, iterations=20)
