"""Graph passes that turn ONNX Runtime's Q/DQ output into the TensorRT artefact: residual placement, fp16 base.

1. :func:`name_nodes` gives every node a unique name, so nodes can be chosen for quantization
   (``quantize_static(nodes_to_quantize=...)``) and residual Adds found by name.
2. ONNX Runtime quantizes both inputs of a residual ``Add``; :func:`drop_conv_branch_qdq` removes the Q/DQ pair
   on the Conv branch, keeping it on the residual input only (ModelOpt's ``remove_partial_input_qdq``), so
   TensorRT can fuse Conv + Add + ReLU with the next Quantize.
3. :func:`to_fp16_base` converts the Q/DQ graph to fp16 the way ModelOpt's ``high_precision_dtype="fp16"`` does:
   opset 19 (the first where QuantizeLinear/DequantizeLinear take fp16 scales), every float tensor and scale in
   fp16, float32 model inputs and outputs through Cast nodes. In a strongly typed TensorRT network the ONNX types
   decide precision: on an fp32 base every layer outside the Q/DQ pairs would run in fp32.

Ops in :data:`FP32_OPS` stay fp32: the sum of squares of the embeddings' L2 norm can exceed fp16's range (65504)
for un-normalised features; they sit after the last Q/DQ pair, so the fp32 island never lies between two pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mosaic_edge.optional import require

# Ops kept in fp32 in every fp16 artefact (model.fp16.onnx and the TensorRT INT8 artefact).
FP32_OPS: tuple[str, ...] = ("ReduceL2", "ReduceSumSquare", "LpNormalization")
# The first opset whose QuantizeLinear / DequantizeLinear accept fp16 scales and data.
FP16_QDQ_OPSET = 19


def name_nodes(model: Any) -> Any:
    """Give unnamed (or duplicate-named) nodes a unique name ``<op>_<index>``, in place; returns ``model``."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
            while node.name in seen:
                node.name += "_"
        seen.add(node.name)
    return model


def topological_sort(graph: Any) -> None:
    """Reorder ``graph.node`` in place so every node follows its producers.

    The fp16 converter appends the input Casts at the end of the node list; onnxruntime sorts on load, but the
    ONNX checker (and TensorRT's parser) need a sorted graph.
    """
    nodes = list(graph.node)
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered, pending = [], nodes
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise ValueError(f"graph has a cycle or dangling inputs at {[n.name for n in rest[:3]]}")
        for n in done:
            ready.update(n.output)
        ordered += done
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    for o in graph.output:
        out.setdefault(o.name, []).append(None)
    return out


def _drop_unused(graph: Any) -> None:
    """Remove nodes whose outputs nobody reads (repeatedly), then initializers nobody reads."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def drop_conv_branch_qdq(model: Any, residual: Mapping[str, int]) -> int:
    """Remove the Q/DQ pair on the Conv-branch input of every residual Add, in place.

    Args:
        model: Q/DQ ModelProto whose residual Adds had both inputs quantized.
        residual: Add node name -> index of its residual input (:func:`~.placement.residual_adds`).

    Returns:
        Number of Add inputs rewired to their float producer.
    """
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    rewired = 0
    for node in graph.node:
        if node.op_type != "Add" or node.name not in residual:
            continue
        conv_branch = 1 - residual[node.name]
        dq = producers.get(node.input[conv_branch])
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        node.input[conv_branch] = q.input[0]
        rewired += 1
    _drop_unused(graph)
    return rewired


def to_fp16_base(model: Any, keep_ops: tuple[str, ...] = FP32_OPS) -> Any:
    """fp16 copy of a Q/DQ model (opset 19, fp16 scales), float32 inputs/outputs through Casts.

    Raises:
        onnx.checker.ValidationError: the result is not a valid model (should not happen; it is checked).
    """
    onnx = require("onnx")
    float16 = require("onnxruntime.transformers.float16", extra="export")
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < FP16_QDQ_OPSET:
        model = version_converter.convert_version(model, FP16_QDQ_OPSET)
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_ops))
    half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    topological_sort(half.graph)
    onnx.checker.check_model(half, full_check=True)
    return half
