"""Calibration test helpers: a tiny two-input conv ONNX (onnx.helper) and heavy-tailed data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mosaic_edge.contract import Contract

PATCH = 8


def tiny_contract() -> Contract:
    return Contract(patch_size=PATCH)


def build_tiny_onnx(path: Path, num_classes: int = 19, seed: int = 0) -> Path:
    """sar/optical -> Conv+Relu per modality -> GAP -> concat -> Gemm logits (opset 17, dynamic batch)."""
    rng = np.random.default_rng(seed)

    def init(name: str, arr: np.ndarray) -> TensorProto:
        return numpy_helper.from_array(arr.astype(np.float32), name)

    inits = [
        init("w_sar", rng.normal(0, 0.5, (4, 2, 3, 3))),
        init("b_sar", rng.normal(0, 0.1, 4)),
        init("w_opt", rng.normal(0, 0.3, (6, 12, 3, 3))),
        init("b_opt", rng.normal(0, 0.1, 6)),
        init("w_fc", rng.normal(0, 0.5, (num_classes, 10))),
        init("b_fc", rng.normal(0, 0.1, num_classes)),
    ]
    nodes = [
        helper.make_node("Conv", ["sar", "w_sar", "b_sar"], ["c_sar"], name="conv_sar", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c_sar"], ["r_sar"], name="relu_sar"),
        helper.make_node("GlobalAveragePool", ["r_sar"], ["p_sar"], name="gap_sar"),
        helper.make_node(
            "Conv", ["optical", "w_opt", "b_opt"], ["c_opt"], name="conv_opt", pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c_opt"], ["r_opt"], name="relu_opt"),
        helper.make_node("GlobalAveragePool", ["r_opt"], ["p_opt"], name="gap_opt"),
        helper.make_node("Concat", ["p_sar", "p_opt"], ["cat"], name="concat", axis=1),
        helper.make_node("Flatten", ["cat"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "w_fc", "b_fc"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("sar", TensorProto.FLOAT, ["N", 2, PATCH, PATCH]),
            helper.make_tensor_value_info("optical", TensorProto.FLOAT, ["N", 12, PATCH, PATCH]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
        inits,
    )
    return _save(graph, path)


def heavy_tailed_calib(n: int = 48, seed: int = 1) -> dict[str, np.ndarray]:
    """Laplace inputs with rare large outliers: entropy clips them, minmax cannot."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, c in (("sar", 2), ("optical", 12)):
        x = rng.laplace(0.0, 1.0, (n, c, PATCH, PATCH)).astype(np.float32)
        mask = rng.random(x.shape) < 1e-3
        x[mask] *= 12.0
        out[name] = x
    return out


def build_residual_onnx(path: Path, num_classes: int = 19, seed: int = 0) -> Path:
    """A two-block ResNet on ``sar`` (identity and downsampling shortcut) + a Conv on ``optical``.

    Also holds Adds that are NOT residual: the sum of two Gemm heads (no Conv backbone) and ``c + relu(c)``
    (both sides from the same Conv). Opset 17, dynamic batch, contract in the metadata.
    """
    rng = np.random.default_rng(seed)
    inits: list[TensorProto] = []

    def w(name: str, *shape: int) -> str:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.4, shape).astype(np.float32), name))
        return name

    def conv(x: str, out: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> Any:
        p = k // 2
        return helper.make_node("Conv", [x, w(f"{out}_w", cout, cin, k, k), w(f"{out}_b", cout)], [out],
                                name=out, pads=[p] * 4, strides=[stride] * 2)

    relu = lambda x, out: helper.make_node("Relu", [x], [out], name=out)  # noqa: E731
    nodes = [
        conv("sar", "stem", 2, 4), relu("stem", "stem_r"),
        # block a: identity shortcut from the stem's ReLU
        conv("stem_r", "a1", 4, 4), relu("a1", "a1_r"), conv("a1_r", "a2", 4, 4),
        helper.make_node("Add", ["a2", "stem_r"], ["a_add"], name="a_add"), relu("a_add", "a_out"),
        # block b: downsampling shortcut (1x1 stride-2 Conv)
        conv("a_out", "b1", 4, 8, stride=2), relu("b1", "b1_r"), conv("b1_r", "b2", 8, 8),
        conv("a_out", "b_down", 4, 8, k=1, stride=2),
        helper.make_node("Add", ["b2", "b_down"], ["b_add"], name="b_add"), relu("b_add", "b_out"),
        # not residual: the same Conv on both sides
        conv("b_out", "c", 8, 8), relu("c", "c_r"),
        helper.make_node("Add", ["c", "c_r"], ["c_add"], name="c_add"),
        helper.make_node("GlobalAveragePool", ["c_add"], ["p_sar"], name="gap_sar"),
        conv("optical", "o", 12, 6), relu("o", "o_r"),
        helper.make_node("GlobalAveragePool", ["o_r"], ["p_opt"], name="gap_opt"),
        helper.make_node("Concat", ["p_sar", "p_opt"], ["cat"], name="concat", axis=1),
        helper.make_node("Flatten", ["cat"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", w("h1_w", num_classes, 14), w("h1_b", num_classes)], ["h1"],
                         name="head1", transB=1),
        helper.make_node("Gemm", ["flat", w("h2_w", num_classes, 14), w("h2_b", num_classes)], ["h2"],
                         name="head2", transB=1),
        # not residual: two Gemm heads, no Conv backbone
        helper.make_node("Add", ["h1", "h2"], ["logits"], name="heads_add"),
    ]
    graph = helper.make_graph(
        nodes, "residual",
        [helper.make_tensor_value_info("sar", TensorProto.FLOAT, ["N", 2, PATCH, PATCH]),
         helper.make_tensor_value_info("optical", TensorProto.FLOAT, ["N", 12, PATCH, PATCH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])], inits)
    return _save(graph, path)


def _save(graph: Any, path: Path) -> Path:
    """Save ``graph`` as an opset-17 model carrying the tiny contract's metadata (checked first)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, tiny_contract().to_metadata())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
