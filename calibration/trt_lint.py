"""TensorRT placement lint of the INT8 Q/DQ artefact: would TensorRT run it as INT8 kernels, fused and fp16?

TensorRT's explicit quantization runs a layer in INT8 only when its inputs come through DequantizeLinear, and
in a strongly typed network every tensor keeps the ONNX type. Three rules, each a failure:

1. ``dq_inputs``: every Conv / ConvTranspose / Gemm has its activation (input 0) AND weight (input 1) produced by
   a DequantizeLinear -- otherwise that layer runs in float.
2. ``residual_adds``: every residual Add (:func:`~mosaic_edge.calibration.placement.residual_adds`, read through
   the Q/DQ pairs) has a DQ-fed input -- otherwise TensorRT cannot fuse Conv + Add (+ ReLU) with the next
   Quantize.
3. ``fp16_between_pairs``: no float32 tensor lies between Q/DQ pairs (downstream of a DequantizeLinear and
   upstream of a QuantizeLinear) -- such a tensor makes the layers around it run in fp32.

Heads after the last Q/DQ pair (logits, embeddings) may stay fp32: they lie between no pair.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mosaic_edge.calibration.placement import residual_adds
from mosaic_edge.optional import require

CHECKED_OPS = ("Conv", "ConvTranspose", "Gemm")
MAX_LISTED = 8  # tensors or nodes named per failure line


@dataclass(frozen=True)
class LintResult:
    """Outcome of :func:`lint_tensorrt_qdq`.

    Attributes:
        artefact: File name of the linted model.
        passed: No rule failed.
        checked: Rule -> how many nodes / tensors it looked at.
        failures: One line per failure (empty when passed).
    """

    artefact: str
    passed: bool
    checked: dict[str, int] = field(default_factory=dict)
    failures: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"failures": list(self.failures)}


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(repr(n) for n in names[:MAX_LISTED]) + more


def _float_types(model: Any) -> dict[str, int]:
    """Tensor name -> ONNX elem type, for every typed tensor after shape inference."""
    onnx = require("onnx")
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _between_pairs(graph: Any) -> set[str]:
    """Tensors downstream of a DequantizeLinear (not through a Quantize) and upstream of a QuantizeLinear."""
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    after: set[str] = set()
    todo = [n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"]
    while todo:
        t = todo.pop()
        if t in after:
            continue
        after.add(t)
        for c in consumers.get(t, []):
            if c.op_type != "QuantizeLinear":
                todo += list(c.output)
    before: set[str] = set()
    todo = [n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"]
    while todo:
        t = todo.pop()
        if t in before:
            continue
        before.add(t)
        p = producers.get(t)
        if p is not None and p.op_type != "DequantizeLinear":
            todo += [i for i in p.input if i]
    return after & before


def lint_tensorrt_qdq(path: str | Path) -> LintResult:
    """Check the TensorRT Q/DQ artefact at ``path`` against the three rules of the module docstring."""
    onnx = require("onnx")
    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}

    def dq_fed(tensor: str) -> bool:
        p = producers.get(tensor)
        return p is not None and p.op_type == "DequantizeLinear"

    failures = []
    weighted = [n for n in graph.node if n.op_type in CHECKED_OPS]
    bad = [f"{n.name or n.op_type} ({'activation' if not dq_fed(n.input[0]) else 'weight'})"
           for n in weighted if not (dq_fed(n.input[0]) and len(n.input) > 1 and dq_fed(n.input[1]))]
    if bad:
        failures.append(f"dq_inputs: {len(bad)} Conv/Gemm without DQ-fed activation and weight: {_listed(bad)}")
    residual = residual_adds(graph)
    adds = {n.name: n for n in graph.node if n.name in residual}
    bad = [name for name, n in adds.items() if not any(dq_fed(i) for i in n.input)]
    if bad:
        failures.append(f"residual_adds: {len(bad)} residual Add without a DQ-fed input: {_listed(bad)}")
    between = _between_pairs(graph)
    types = _float_types(model)
    fp32 = sorted(t for t in between if types.get(t) == onnx.TensorProto.FLOAT)
    if fp32:
        failures.append(f"fp16_between_pairs: {len(fp32)} float32 tensors between Q/DQ pairs: {_listed(fp32)}")
    checked = {"dq_inputs": len(weighted), "residual_adds": len(residual), "fp16_between_pairs": len(between)}
    return LintResult(path.name, not failures, checked, tuple(failures))
