"""Q/DQ quantization: symmetric TensorRT artefact, entropy differs from minmax, one calibration path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mosaic_edge.calibration.quantize import (
    CalibConfig,
    calibrate,
    calibrated_amax,
    qdq_activation_amax,
    qdq_params,
    quantize_qdq,
)
from mosaic_edge.errors import UserError

# 512 bins keep ORT's pure-Python KL search fast; still 193 candidate thresholds, so it is a real search.
FAST = CalibConfig(num_bins=512, num_quantized_bins=128)


@pytest.fixture(scope="module")
def entropy_cal(tiny_onnx: Path, calib_data: dict) -> object:
    return calibrate(tiny_onnx, calib_data, CalibConfig("entropy", 512, 128), symmetric=True)


@pytest.fixture(scope="module")
def trt_artefact(tiny_onnx: Path, calib_data: dict, entropy_cal, tmp_path_factory) -> object:
    out = tmp_path_factory.mktemp("q") / "model.int8.onnx"
    return quantize_qdq(
        tiny_onnx, out, calib_data, "entropy", "tensorrt", config=FAST, calibration=entropy_cal
    )


def test_tensorrt_artefact_zero_points_all_zero_and_int8(trt_artefact) -> None:
    rows = qdq_params(trt_artefact.path)
    assert trt_artefact.num_quantize_nodes > 0
    act = [r for r in rows if r["op"] == "QuantizeLinear"]
    assert {r["source"] for r in act} >= {"sar", "optical"}  # the fp16 Casts of the float32 inputs
    for r in rows:
        assert r["zero_point"] is not None, r["name"]
        assert r["dtype"] == "int8", f"{r['name']}: {r['dtype']} (TensorRT needs int8, no int32 bias DQ)"
        assert not np.any(r["zero_point"]), f"{r['name']} has a non-zero zero point"


def test_tensorrt_weights_are_per_channel_symmetric(trt_artefact) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(trt_artefact.path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = [
        r for r in qdq_params(trt_artefact.path) if r["op"] == "DequantizeLinear" and r["input"] in inits
    ]
    assert {r["input"] for r in weights} == {"w_sar_quantized", "w_opt_quantized", "w_fc_quantized"}
    for r in weights:
        q = inits[r["input"]]
        scale = np.asarray(r["scale"])
        assert scale.ndim == 1 and scale.size == q.shape[r["axis"]] > 1, r[
            "name"
        ]  # one scale per out channel
        assert q.dtype == np.int8 and q.min() >= -127  # symmetric range [-127, 127]
        per_ch = np.abs(q.reshape(q.shape[0], -1)).max(axis=1) if r["axis"] == 0 else None
        if per_ch is not None:
            assert np.all(
                per_ch == 127
            )  # each channel's largest weight maps to +-127: symmetric, per channel


def test_activation_scales_are_the_calibration_amax(trt_artefact, entropy_cal) -> None:
    # The Q/DQ model and the TensorRT cache come from ONE calibration run: scale == amax / 127 (the artefact's
    # scales are fp16: 11 significant bits).
    in_model = qdq_activation_amax(trt_artefact.path)
    for name, amax in in_model.items():
        assert amax == pytest.approx(trt_artefact.amax[name], rel=2**-11), name
        assert amax == pytest.approx(entropy_cal.amax[name], rel=2**-11), name
    # the cache carries every tensor of the calibration run, not only the quantized ones (legacy implicit
    # INT8 wants a range for each tensor it may run in INT8, Conv outputs included)
    assert set(trt_artefact.amax) == set(entropy_cal.amax)
    assert {"c_opt", "r_opt", "logits"} <= set(trt_artefact.amax)


def test_tensorrt_placement_quantizes_only_weighted_op_inputs(trt_artefact) -> None:
    # TensorRT / ModelOpt placement: Q/DQ on the activation and weight inputs of Conv/Gemm, on no op output.
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(trt_artefact.path)).graph
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    acts = {r["source"] for r in qdq_params(trt_artefact.path) if r["op"] == "QuantizeLinear"}
    # the Conv inputs (graph inputs), the Gemm input; NOT c_sar/c_opt (Conv outputs) nor r_* (ReLU outputs,
    # which feed only a pooling op here) nor the logits
    assert acts == {"sar", "optical", "flat"}
    dq_out = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    for n in graph.node:
        if n.op_type in ("Conv", "Gemm"):
            assert n.input[0] in dq_out and n.input[1] in dq_out, n.name
    produced_by = {o: n for n in graph.node for o in n.output}
    # logits stay float: the Gemm's fp16 output reaches the float32 model output through a Cast only
    last = [produced_by[o.name] for o in graph.output]
    assert {n.op_type for n in last} == {"Cast"}
    assert {produced_by[n.input[0]].op_type for n in last} == {"Gemm"}


def test_entropy_is_not_minmax(tiny_onnx: Path, calib_data: dict, entropy_cal) -> None:
    mm = calibrated_amax(tiny_onnx, calib_data, CalibConfig("minmax"))
    ent = entropy_cal.amax
    assert set(mm) == set(ent)
    differ = [k for k in mm if not np.isclose(mm[k], ent[k], rtol=1e-3)]
    # heavy-tailed inputs: entropy must clip the outliers that minmax keeps
    assert {"sar", "optical"} <= set(differ)
    assert ent["optical"] < 0.5 * mm["optical"]


def test_percentile_differs_and_is_bounded(tiny_onnx: Path, calib_data: dict) -> None:
    mm = calibrated_amax(tiny_onnx, calib_data, CalibConfig("minmax"))
    pc = calibrated_amax(tiny_onnx, calib_data, CalibConfig("percentile", percentile=99.9))
    assert pc["optical"] < mm["optical"]
    assert all(pc[k] <= mm[k] * (1 + 1e-6) for k in mm)


def test_cpu_artefact_uses_uint8_activations(tiny_onnx: Path, calib_data: dict, tmp_path: Path) -> None:
    res = quantize_qdq(tiny_onnx, tmp_path / "cpu.onnx", calib_data, "minmax", "cpu")
    acts = [r for r in qdq_params(res.path) if r["op"] == "QuantizeLinear"]
    assert acts and all(r["dtype"] == "uint8" for r in acts)
    assert any(int(r["zero_point"].ravel()[0]) != 0 for r in acts)  # asymmetric: inputs get a real zero point


def test_quantized_model_keeps_contract_metadata_and_runs(
    trt_artefact, tiny_onnx: Path, calib_data: dict
) -> None:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(trt_artefact.path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert "mosaic_edge.contract" in meta and "mosaic_edge.quantization" in meta
    ref = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    batch = {k: v[:8] for k, v in calib_data.items()}
    a, b = sess.run(None, batch)[0], ref.run(None, batch)[0]
    # entropy clips the rare outliers on purpose, so compare typical error, not the worst case
    assert np.abs(a - b).mean() < 0.1 * np.abs(b).mean()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


def test_bad_arguments_are_user_errors(tiny_onnx: Path, calib_data: dict, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="method"):
        CalibConfig("kl")
    with pytest.raises(UserError, match="num_bins"):
        CalibConfig("entropy", num_bins=128, num_quantized_bins=128)  # ORT's default: a single KL candidate
    with pytest.raises(UserError, match="target"):
        quantize_qdq(tiny_onnx, tmp_path / "x.onnx", calib_data, target="gpu")
    with pytest.raises(UserError, match="inputs"):
        calibrate(tiny_onnx, {"sar": calib_data["sar"]}, CalibConfig("minmax"))


def test_cpu_artefact_runs_qlinearconv_with_float_outputs(
    tiny_onnx: Path, calib_data: dict, tmp_path: Path, entropy_cal
) -> None:
    # The CPU artefact exists for speed: ORT must fuse DQ -> Conv -> Q into QLinearConv (Conv outputs stay
    # quantized), while the Gemm logits stay float and the weights are 7-bit (no u8s8 saturation on AVX2).
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    res = quantize_qdq(tiny_onnx, tmp_path / "cpu.onnx", calib_data, "entropy", "cpu", config=FAST)
    # an asymmetric entropy run finds the symmetric run's thresholds, which is why the export shares one run
    assert res.amax == pytest.approx(entropy_cal.amax, rel=1e-6)
    graph = onnx.load(str(res.path)).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    assert {produced_by[o.name] for o in graph.output} == {"Gemm"}
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in graph.initializer
               if t.name.startswith("w_") and t.name.endswith("_quantized")]
    assert len(weights) == 3 and all(np.abs(w.astype(int)).max() == 64 for w in weights)  # 7-bit, symmetric
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(res.path), opts, providers=["CPUExecutionProvider"])
    fused = {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}
    assert "QLinearConv" in fused and "Conv" not in fused


def test_cache_from_the_quantize_calibration(tiny_onnx: Path, calib_data: dict, tmp_path: Path) -> None:
    from mosaic_edge.calibration.quantize import CalibConfig, calibrated_amax
    from mosaic_edge.trt_calib_cache import read_calib_cache, write_calib_cache

    amax = calibrated_amax(tiny_onnx, calib_data, CalibConfig("minmax"))
    cache = read_calib_cache(write_calib_cache(tmp_path / "c.cache", amax))
    assert cache.version_int == 100300  # default header: JetPack 6 / TensorRT 10.3
    assert set(cache.scales) == set(amax) >= {"sar", "optical", "logits"}
    ref = {k: abs(v) for k, v in amax.items()}
    assert all(cache.amax[k] == pytest.approx(ref[k], rel=1e-6) for k in ref)
