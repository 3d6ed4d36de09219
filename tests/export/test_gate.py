"""The INT8 gate's statistics: bootstrap AP identical to the metric, and verdicts that are honest about size."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mosaic_edge.export.gate import GATE_MIN_PATCHES, gate_set, judge, resampled_macro, weighted_ap
from mosaic_edge.export.quiet import quiet_quantization
from mosaic_edge.metrics import average_precision


def test_weighted_ap_is_the_metric_on_the_set_and_on_a_resample() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.2
    s = np.round(rng.normal(size=300) + y, 1)  # rounded: plenty of ties
    assert weighted_ap(y, s, np.ones((1, 300)))[0] == pytest.approx(average_precision(y, s), abs=1e-12)
    idx = rng.integers(0, 300, 300)
    counts = np.bincount(idx, minlength=300)[None]
    assert weighted_ap(y, s, counts)[0] == pytest.approx(average_precision(y[idx], s[idx]), abs=1e-12)
    assert np.isnan(weighted_ap(np.zeros(300, bool), s, np.ones((1, 300)))[0])


def _set(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 19)) < 0.3).astype(np.float32)
    logits = rng.normal(0.0, 1.0, (n, 19)) + 1.5 * labels  # a model with some skill
    return labels, logits


def test_a_large_set_passes_a_faithful_int8_and_fails_a_lossy_one() -> None:
    labels, z32 = _set(GATE_MIN_PATCHES + 100)
    gs = gate_set(labels)
    assert gs.judgeable and len(gs.classes) == 19
    ref = resampled_macro(gs, z32)
    noise = np.random.default_rng(1).normal(0.0, 0.02, z32.shape)
    ok = judge(gs, ref, z32 + noise, bound_pts=1.0)
    assert ok["verdict"] == "passed" and abs(ok["drop_pts"]) < 0.5 and ok["ci95_pts"][1] <= 1.0
    lossy = judge(gs, ref, z32 + np.random.default_rng(2).normal(0.0, 1.0, z32.shape), bound_pts=1.0)
    assert lossy["verdict"] == "failed" and lossy["drop_pts"] > 1.0


def test_a_small_set_is_inconclusive_unless_int8_is_clearly_broken() -> None:
    labels, z32 = _set(12)
    gs = gate_set(labels)
    assert not gs.judgeable
    ref = resampled_macro(gs, np.asarray(z32))
    # identical answers, yet 12 patches cannot show INT8 within 1 pt: inconclusive, not "passed"
    same = judge(gs, ref, z32, bound_pts=1.0)
    assert same["verdict"] == "inconclusive" and "too small to judge" in same["reason"]
    labels, z32 = _set(60, seed=3)
    gs = gate_set(labels)
    broken = judge(gs, resampled_macro(gs, z32), -z32, bound_pts=1.0)  # ranking reversed
    assert broken["verdict"] == "failed" and broken["ci95_pts"][0] > 1.0


def test_classes_with_few_positives_stay_out_of_the_gate_mean() -> None:
    labels, z32 = _set(400)
    labels[:, 7] = 0
    labels[:3, 7] = 1  # three positives: its AP would swing by tens of points
    gs = gate_set(labels)
    assert 7 not in gs.classes and len(gs.classes) == 18


def test_quiet_quantization_swallows_ort_chatter_only(capsys: pytest.CaptureFixture[str],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    lines: list[str] = []
    with caplog.at_level(logging.WARNING), quiet_quantization("INT8: calibrating", lines.append):
        print("Collecting tensor data and making histogram ...")
        logging.warning("Please consider pre-processing before quantization. See https://...")
        logging.warning("Quantized bias `b` exceeds the range of a int32. The bias scale is too small.")
    assert capsys.readouterr().out == ""
    assert [r.getMessage()[:14] for r in caplog.records] == ["Quantized bias"]
    assert len(lines) == 1 and lines[0].startswith("INT8: calibrating (") and lines[0].endswith(" s)")
    print("after")  # stdout is back
    assert capsys.readouterr().out == "after\n"
