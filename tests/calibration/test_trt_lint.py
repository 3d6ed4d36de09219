"""The TensorRT INT8 artefact: residual Adds (ModelOpt's rule), Q/DQ on the residual input, fp16 base, the lint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from mosaic_edge.calibration.placement import residual_adds
from mosaic_edge.calibration.quantize import CalibConfig, quantize_qdq
from mosaic_edge.calibration.trt_lint import lint_tensorrt_qdq
from mosaic_edge.calibration.trt_qdq import FP16_QDQ_OPSET
from tests.support.calib import build_residual_onnx

FAST = CalibConfig("minmax")


@pytest.fixture(scope="module")
def residual_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_residual_onnx(tmp_path_factory.mktemp("res") / "model.onnx")


@pytest.fixture(scope="module")
def trt_int8(residual_onnx: Path, calib_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "model.int8.onnx"
    return quantize_qdq(residual_onnx, out, calib_data, "minmax", "tensorrt", config=FAST).path


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _old_style_qdq(src: Path, dst: Path, calib: dict) -> Path:
    """What export wrote before the fp16 base: Q/DQ on Conv/Gemm inputs only, fp32 everywhere, no Add Q/DQ."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    class Reader:
        def __init__(self) -> None:
            self.batches = iter([{k: v[:16] for k, v in calib.items()}])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "Gemm"],
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "OpTypesToExcludeOutputQuantization": ["Conv", "Gemm"]})
    return dst


def test_residual_adds_follow_modelopt(residual_onnx: Path) -> None:
    # a_add: conv branch a2 (3 nodes from the shortcut's ReLU) vs the stem's ReLU -> the shortcut is input 1;
    # b_add: conv branch b2 vs the 1x1 downsampling Conv (the shorter path) -> the shortcut is input 1;
    # c_add (the same Conv on both sides) and heads_add (two Gemms, no Conv) are not residual.
    assert residual_adds(onnx.load(str(residual_onnx)).graph) == {"a_add": 1, "b_add": 1}


def test_residual_input_quantized_conv_branch_not(trt_int8: Path) -> None:
    graph = onnx.load(str(trt_int8)).graph
    prod = _producers(graph)
    adds = {n.name: n for n in graph.node if n.op_type == "Add"}
    for name, conv_branch in (("a_add", "a2"), ("b_add", "b2")):
        a, b = adds[name].input
        assert a == conv_branch, f"{name}: the Conv branch reads the Conv output directly"
        dq = prod[b]
        assert dq.op_type == "DequantizeLinear" and prod[dq.input[0]].op_type == "QuantizeLinear", name
    assert not any(prod[i].op_type == "DequantizeLinear" for i in adds["heads_add"].input if i in prod)
    assert residual_adds(graph) == {"a_add": 1, "b_add": 1}  # found again through the Q/DQ pairs (the lint)


def test_fp16_base_with_fp16_scales_and_float32_io(trt_int8: Path) -> None:
    model = onnx.load(str(trt_int8))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {FP16_QDQ_OPSET}
    inits = {t.name: t for t in model.graph.initializer}
    scales = [inits[n.input[1]].data_type for n in model.graph.node
              if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert scales and set(scales) == {TensorProto.FLOAT16}
    floats = [t.data_type for t in model.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert set(floats) == {TensorProto.FLOAT16}  # biases and scales: no fp32 constant left
    io = [vi.type.tensor_type.elem_type for vi in list(model.graph.input) + list(model.graph.output)]
    assert set(io) == {TensorProto.FLOAT}  # the contract's float32 I/O, converted by Casts
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred}
    assert types["a2"] == types["b_add"] == TensorProto.FLOAT16


def test_artefact_runs_in_onnxruntime_close_to_fp32(trt_int8: Path, residual_onnx: Path, calib_data: dict) -> None:
    batch = {k: v[:8] for k, v in calib_data.items()}
    got = ort.InferenceSession(str(trt_int8), providers=["CPUExecutionProvider"]).run(None, batch)[0]
    ref = ort.InferenceSession(str(residual_onnx), providers=["CPUExecutionProvider"]).run(None, batch)[0]
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.98


def test_lint_passes_on_the_tensorrt_artefact(trt_int8: Path) -> None:
    res = lint_tensorrt_qdq(trt_int8)
    assert res.passed, res.failures
    assert res.checked["dq_inputs"] == 10 and res.checked["residual_adds"] == 2  # 8 Conv + 2 Gemm
    assert res.checked["fp16_between_pairs"] > 0
    assert res.to_dict()["failures"] == []


def test_lint_fails_the_fp32_based_artefact_without_residual_qdq(residual_onnx: Path, calib_data: dict,
                                                                 tmp_path: Path) -> None:
    old = _old_style_qdq(residual_onnx, tmp_path / "old.onnx", calib_data)
    res = lint_tensorrt_qdq(old)
    assert not res.passed
    failed = {f.split(":")[0] for f in res.failures}
    assert failed == {"residual_adds", "fp16_between_pairs"}
    assert "'b_add'" in next(f for f in res.failures if f.startswith("residual_adds"))
    # a_add is DQ-fed already: its shortcut (the stem's ReLU) also feeds Conv a1, which shares the Q/DQ pair
    assert "'a_add'" not in next(f for f in res.failures if f.startswith("residual_adds"))


@pytest.mark.parametrize("which", ["activation", "weight"])
def test_lint_fails_a_conv_that_is_not_dq_fed(trt_int8: Path, tmp_path: Path, which: str) -> None:
    model = onnx.load(str(trt_int8))
    prod = _producers(model.graph)
    conv = next(n for n in model.graph.node if n.name == "b1")
    i = 0 if which == "activation" else 1
    dq = prod[conv.input[i]]
    if which == "weight":  # a float weight instead of the quantized one
        from onnx import numpy_helper

        w = np.ones((8, 4, 3, 3), np.float16)
        model.graph.initializer.append(numpy_helper.from_array(w, "b1_float_w"))
        conv.input[1] = "b1_float_w"
    else:
        conv.input[0] = prod[dq.input[0]].input[0]  # bypass the activation's Q/DQ pair
    onnx.save(model, str(tmp_path / "bad.onnx"))
    res = lint_tensorrt_qdq(tmp_path / "bad.onnx")
    assert not res.passed
    assert res.failures[0].startswith("dq_inputs: 1 ") and f"'b1 ({which})'" in res.failures[0]


def test_lint_fails_fp32_tensors_between_pairs(trt_int8: Path, tmp_path: Path) -> None:
    # an fp32 island between two Q/DQ pairs (Cast up and back around one ReLU) is what an fp32 base looks like
    model = onnx.load(str(trt_int8))
    relu = next(n for n in model.graph.node if n.name == "b1_r")
    src = relu.input[0]
    model.graph.node.insert(list(model.graph.node).index(relu),
                            onnx.helper.make_node("Cast", [src], ["b1_up"], to=TensorProto.FLOAT, name="up"))
    relu.input[0] = "b1_up"
    out = relu.output[0]
    relu.output[0] = "b1_r32"
    model.graph.node.insert(list(model.graph.node).index(relu) + 1,
                            onnx.helper.make_node("Cast", ["b1_r32"], [out], to=TensorProto.FLOAT16, name="down"))
    onnx.save(model, str(tmp_path / "island.onnx"))
    res = lint_tensorrt_qdq(tmp_path / "island.onnx")
    assert [f.split(":")[0] for f in res.failures] == ["fp16_between_pairs"]
    assert "2 float32 tensors" in res.failures[0] and "'b1_up'" in res.failures[0]
