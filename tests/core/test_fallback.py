"""Borderline fallback: the logit margin rule, margin selection, and a runner pair with perturbed INT8 answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mosaic_edge.contract import Contract, decide
from mosaic_edge.errors import UserError
from mosaic_edge.fallback import (
    FallbackPolicy,
    border_distance,
    choose_margin,
    needs_fallback,
    simulate,
    threshold_logits,
)

THRESHOLDS = np.array([0.5, 0.9, 0.1])


def test_margin_is_in_logit_space_around_each_threshold() -> None:
    np.testing.assert_allclose(threshold_logits(THRESHOLDS), [0.0, np.log(9.0), -np.log(9.0)])
    z = np.array([[0.3, 5.0, -5.0],     # class 0 is 0.3 from its threshold logit 0
                  [4.0, 2.1, -4.0],     # class 1 is 0.097 from log 9 = 2.197
                  [-3.0, -3.0, 0.0]])   # class 2 is 2.197 from -log 9
    np.testing.assert_allclose(border_distance(z, THRESHOLDS), [0.3, np.log(9.0) - 2.1, np.log(9.0)])
    pol = FallbackPolicy(0.5)
    np.testing.assert_array_equal(needs_fallback(z, None, THRESHOLDS, pol), [True, True, False])
    drifted = np.array([False, False, True])
    np.testing.assert_array_equal(needs_fallback(z, drifted, THRESHOLDS, pol), [True, True, True])
    np.testing.assert_array_equal(needs_fallback(z, drifted, THRESHOLDS, FallbackPolicy(0.5, rerun_drifted=False)),
                                  [True, True, False])
    contract = Contract(classes=("a", "b", "c"), thresholds=tuple(THRESHOLDS))
    np.testing.assert_array_equal(needs_fallback(z, None, contract, pol), needs_fallback(z, None, THRESHOLDS, pol))


def test_bad_inputs_and_policy_roundtrip() -> None:
    with pytest.raises(UserError, match="classes"):
        border_distance(np.zeros((2, 4)), THRESHOLDS)
    with pytest.raises(UserError, match="drift flags"):
        needs_fallback(np.zeros((2, 3)), np.zeros(3, bool), THRESHOLDS, FallbackPolicy(1.0))
    with pytest.raises(ValueError, match="margin"):
        FallbackPolicy(-1.0)
    pol = FallbackPolicy(1.5, rerun_drifted=False, target_agreement=0.999)
    assert FallbackPolicy.from_dict(pol.to_dict()) == pol
    assert pol.to_dict()["margin_space"] == "logit"


def _pair(n: int, c: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z32 = rng.normal(0.0, 3.0, (n, c))
    return z32, z32 + rng.normal(0.0, noise, (n, c))


def test_chosen_margin_is_the_smallest_reaching_the_target() -> None:
    z32, z8 = _pair(400, 3, 0.4, seed=0)
    alone = float(np.mean(decide(z8, THRESHOLDS) == decide(z32, THRESHOLDS)))
    assert alone < 0.99
    choice = choose_margin(z32, z8, None, THRESHOLDS, target=0.995)
    assert choice.int8_agreement == pytest.approx(alone)
    assert choice.chosen.agreement >= 0.995
    below = simulate(z32, z8, None, THRESHOLDS, np.nextafter(choice.chosen.margin_logit, 0.0))
    assert below.agreement < 0.995 and below.rerun_fraction < choice.chosen.rerun_fraction
    # agreement never falls as the margin (and the re-run share) grows
    rerun, agree = choice.curve
    assert np.all(np.diff(rerun) >= 0) and np.all(np.diff(agree) >= -1e-12)
    assert [r.margin_logit for r in choice.table] == sorted(r.margin_logit for r in choice.table)
    full = choose_margin(z32, z8, None, THRESHOLDS, target=1.0)
    assert full.chosen.agreement == 1.0 and full.chosen.margin_logit >= choice.chosen.margin_logit


def test_drifted_windows_are_rerun_at_any_margin() -> None:
    z32, z8 = _pair(200, 3, 0.4, seed=1)
    wrong = (decide(z8, THRESHOLDS) != decide(z32, THRESHOLDS)).any(axis=1)
    choice = choose_margin(z32, z8, wrong, THRESHOLDS, target=1.0)  # the drift flags cover every error
    assert choice.chosen.margin_logit == 0.0 and choice.chosen.agreement == 1.0
    assert choice.chosen.rerun_fraction == pytest.approx(wrong.mean(), abs=1e-9)
    assert choice.drifted_fraction == pytest.approx(wrong.mean())


# ---- a runner pair whose INT8 answers are perturbed on purpose ----------------------------------------------
def _perturbed_copy(src: Path, dst: Path, seed: int) -> Path:
    """The tiny fixture model with its class heads nudged: logits move like an INT8 model's would."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if init.name.endswith("_bc"):
            arr = arr + rng.normal(0.0, 0.15, arr.shape).astype(np.float32)
        elif init.name.endswith("_wc"):
            arr = arr * (1.0 + rng.normal(0.0, 0.05, arr.shape)).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(dst))
    return dst


def _windows(n: int, patch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw windows of varied scenes: per window and band a level, plus pixel noise."""
    rng = np.random.default_rng(seed)
    sar = rng.normal(-15.0, 4.0, (n, 2, 1, 1)) + rng.normal(0.0, 2.0, (n, 2, patch, patch))
    opt = rng.uniform(300, 3000, (n, 12, 1, 1)) * rng.uniform(0.8, 1.2, (n, 12, patch, patch))
    return sar.astype(np.float32), opt.astype(np.uint16)


def test_runner_pair_fallback_restores_fp32_decisions(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from mosaic_edge.data.preprocess import normalise_optical, normalise_sar
    from mosaic_edge.edge_runtime.runner import OnnxRuntimeRunner
    from mosaic_edge.envelope import build_envelope
    from tests.support.runtime import tiny_contract, write_tiny_onnx

    contract = tiny_contract()
    fp32_path = write_tiny_onnx(tmp_path / "model.onnx", contract)
    int8_path = _perturbed_copy(fp32_path, tmp_path / "model.int8-cpu.onnx", seed=3)

    def model_inputs(sar: np.ndarray, opt: np.ndarray) -> dict[str, np.ndarray]:
        return {"sar": np.stack([normalise_sar(s, contract)[0] for s in sar]),
                "optical": np.stack([normalise_optical(o, contract)[0] for o in opt])}

    calib = _windows(256, contract.patch_size, seed=0)
    envelope = build_envelope(calib[0], calib[1].astype(np.float32), contract)
    with OnnxRuntimeRunner(fp32_path, threads=1) as fp32, OnnxRuntimeRunner(int8_path, threads=1,
                                                                            precision="int8") as int8:
        val = model_inputs(*_windows(300, contract.patch_size, seed=1))
        choice = choose_margin(fp32.infer(val)["logits"], int8.infer(val)["logits"], None, contract, 0.995)
        policy = FallbackPolicy(choice.chosen.margin_logit)
        assert 0.0 < choice.chosen.rerun_fraction < 0.6 and choice.int8_agreement < 0.99

        # the runtime's loop over one batch: INT8 first, then the flagged windows again at fp32
        raw_sar, raw_opt = _windows(300, contract.patch_size, seed=2)
        raw_opt[:20] = np.clip(raw_opt[:20].astype(np.float64) * 6, 0, 65535).astype(np.uint16)  # new sensor
        batch = model_inputs(raw_sar, raw_opt)
        drifted = envelope.drifted(raw_sar, raw_opt)
        assert drifted[:20].all() and drifted[20:].mean() < 0.08
        z8 = int8.infer(batch)["logits"]
        rerun = needs_fallback(z8, drifted, contract, policy)
        answer = z8.copy()
        answer[rerun] = fp32.infer({k: v[rerun] for k, v in batch.items()})["logits"]
        z32 = fp32.infer(batch)["logits"]
        agree = np.mean(contract.decide(answer) == contract.decide(z32))
        assert agree >= 0.99 and agree > np.mean(contract.decide(z8) == contract.decide(z32))
        assert rerun[:20].all() and rerun.mean() < 0.7  # drifted ones always, not everything
        # a margin as wide as the largest INT8 error restores every decision (a flip needs |z8 - tau| <= |z8 - z32|)
        worst = float(np.abs(z8 - z32).max())
        exact = needs_fallback(z8, None, contract, FallbackPolicy(worst))
        answer[exact] = z32[exact]
        np.testing.assert_array_equal(contract.decide(answer), contract.decide(z32))
