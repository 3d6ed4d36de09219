"""Calibration test helpers: a tiny two-input conv ONNX (onnx.helper) and heavy-tailed data."""

from __future__ import annotations

from pathlib import Path

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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, tiny_contract().to_metadata())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


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
