"""Where the Q/DQ nodes go, per target: the ``quantize_static`` options of the TensorRT and CPU artefacts.

TensorRT (``target="tensorrt"``) -- NVIDIA's placement, as ModelOpt's ``modelopt.onnx.quantization`` int8 mode
and TensorRT's "Q/DQ layer-placement recommendations" prescribe:

* quantize the INPUTS of the weighted ops (Conv / ConvTranspose / Gemm / MatMul: activation and weights),
  never their outputs. TensorRT fuses Conv+BN+ReLU(+Add) into one kernel; a Q/DQ on a Conv output is an
  extra rounding in the middle of that fusion (of the pre-activation, with its negative half) and a second
  one on the ReLU output after it. ModelOpt sets ``OpTypesToExcludeOutputQuantization`` to every op type of
  the graph and drops Relu/Concat/Sigmoid/... from ORT's QDQ registry -- the same as quantizing only the
  weighted ops with no output Q.
* residual ``Add``: Q/DQ on the residual (shortcut) input only, never on the Conv branch, so TensorRT fuses
  Conv + Add (+ ReLU) and the following Quantize into one INT8 kernel (TensorRT's Q/DQ placement guide,
  "quantize the residual input of the add"). Which input is which follows ModelOpt's
  ``build_non_residual_input_map`` (:func:`residual_adds`): an Add of two activations where at least one
  side is a Conv "backbone" (Conv followed only by BatchNormalization / bias / ReLU); the input on the longer
  path back to the two inputs' lowest common ancestor is the Conv branch. ORT quantizes both inputs of an Add;
  :mod:`mosaic_edge.calibration.trt_qdq` then removes the pair on the Conv branch, as ModelOpt's
  ``remove_partial_input_qdq`` does.
* final outputs (logits, the L2-normalised embeddings, the sigmoid applied by the runtime) stay float: no op
  output is quantized at all.

The accuracy of each placement is in benchmarks/RESULTS.md ("Export", "INT8 for TensorRT").

CPU (``target="cpu"``) -- ONNX Runtime's CPU kernels are fast only for fused ``DQ -> Conv -> Q`` groups
(QLinearConv), so Conv (and Add/MaxPool/...) outputs ARE quantized, uint8 asymmetric, with the ReLU folded
into the Conv output's range. The heads (Gemm / MatMul) and every graph output stay float. Weights are
quantized with ``reduce_range`` (7 bit): without VNNI (x86 AVX2) ORT's u8s8 kernels
use ``vpmaddubsw``, which saturates on 8-bit per-channel weights -- ORT's own ``quantize_static`` guidance
recommends ``reduce_range=True`` there; on VNNI/ARM it costs one bit of weight precision and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Weighted ops: TensorRT runs these in INT8 when their activation and weight inputs come through Q/DQ.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# CPU artefact: ops ORT runs as fused QLinear kernels (Relu only to fold it into the Conv output's range).
CPU_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Relu", "MaxPool", "AveragePool",
           "GlobalAveragePool")
# Heads of the CPU artefact: kept float at the output so logits/embeddings are never rounded to 8 bits.
CPU_FLOAT_OUTPUT_OPS = ("Gemm", "MatMul")


@dataclass(frozen=True)
class Placement:
    """``quantize_static`` arguments that decide where Q/DQ go and with which types.

    Attributes:
        op_types: ``op_types_to_quantize``.
        activation_type / weight_type: ``QuantType`` member names.
        reduce_range: 7-bit weights (see the module doc).
        extra: ``extra_options``.
    """

    op_types: tuple[str, ...]
    activation_type: str
    weight_type: str
    reduce_range: bool
    extra: dict[str, Any] = field(default_factory=dict)


def placement_for(target: str, graph_op_types: Iterable[str], output_op_types: Iterable[str]) -> Placement:
    """Q/DQ placement of ``target`` for a graph with these op types.

    Args:
        target: "tensorrt" or "cpu".
        graph_op_types: Op types present in the graph.
        output_op_types: Op types of the nodes producing the graph outputs (their outputs stay float).
    """
    ops = set(graph_op_types)
    if target == "tensorrt":
        return Placement(
            op_types=tuple(o for o in WEIGHTED_OPS if o in ops),
            activation_type="QInt8",
            weight_type="QInt8",
            reduce_range=False,
            extra={
                "ActivationSymmetric": True,  # zero point 0: TensorRT rejects anything else
                "WeightSymmetric": True,
                "QuantizeBias": False,  # TensorRT has no int32 DequantizeLinear; it folds float bias itself
                "OpTypesToExcludeOutputQuantization": sorted(ops),  # inputs only, as ModelOpt does
                # Conv weights [Cout, Cin, k, k] per output channel; Gemm/MatMul use ORT's default axis.
                "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
            },
        )
    return Placement(
        op_types=tuple(o for o in CPU_OPS if o in ops),
        activation_type="QUInt8",
        weight_type="QInt8",
        reduce_range=True,
        extra={
            "ActivationSymmetric": False,
            "WeightSymmetric": True,
            "OpTypesToExcludeOutputQuantization": sorted(set(CPU_FLOAT_OUTPUT_OPS) | set(output_op_types)),
        },
    )


# ---- residual Adds (ModelOpt's rule) --------------------------------------------------------------------------
# Ops that only move data, skipped when walking back from an Add input to its Conv (ModelOpt's ``get_copy_ops``;
# the walk follows one data input, so a multi-input Concat/Split ends it).
_COPY_OPS = ("Flatten", "Transpose", "Concat", "Split", "Squeeze", "Expand", "ReverseSequence", "Reshape", "Tile",
             "Gather", "Slice", "GatherElements", "GatherND", "ScatterElements", "ScatterND", "OneHot")
# ModelOpt's ``get_fusible_backbone`` path types, walked backwards from the Add input, without the Conv and the
# optional bias Add / constant Mul (which may sit anywhere next to the Conv): TensorRT fuses these into the Conv.
_FUSIBLE_PATHS: tuple[list[str], ...] = ([], ["Relu"], ["BatchNormalization"], ["Relu", "BatchNormalization"],
                  ["MaxPool", "Relu", "BatchNormalization"], ["Mul", "Sigmoid", "BatchNormalization"])


def _graph_view(graph: Any) -> tuple[dict[str, Any], set[str]]:
    """(tensor -> producing node, constant tensor names), read through Q/DQ pairs.

    A Q/DQ of a constant (a quantized weight) is a constant; the output of an activation's DequantizeLinear
    counts as produced by whatever produced the QuantizeLinear's input, so a quantized graph has the residual
    Adds of the float graph it came from.
    """
    producers = {out: n for n in graph.node for out in n.output}
    consts = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    for n in graph.node:  # topological order: a weight's Q feeds its DQ
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] in consts:
            consts.add(n.output[0])
    for n in graph.node:
        if n.op_type != "DequantizeLinear" or n.output[0] in consts:
            continue
        q = producers.get(n.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            src = producers.get(q.input[0])
            if src is None:
                del producers[n.output[0]]  # a quantized graph input
            else:
                producers[n.output[0]] = src
    return producers, consts


def _backbone(node: Any, producers: dict[str, Any], consts: set[str]) -> Any:
    """The Conv whose output reaches ``node``'s output through fusible ops only, else None."""
    chain: list[str] = []
    cur = node
    while cur is not None:
        if cur.op_type in ("Conv", "ConvTranspose"):
            return cur if chain in _FUSIBLE_PATHS else None
        data = [i for i in cur.input if i and i not in consts]
        if cur.op_type in ("Add", "Mul") and len(data) < len(cur.input):
            cur = producers.get(data[0]) if len(data) == 1 else None  # bias add / constant scale
            continue
        if cur.op_type == "Mul" and len(data) == 2:  # SiLU: x * Sigmoid(x)
            sig = [i for i in data if producers.get(i) is not None and producers[i].op_type == "Sigmoid"]
            rest = [i for i in data if i not in sig]
            if len(sig) != 1 or len(rest) != 1 or producers[sig[0]].input[0] != rest[0]:
                return None
            chain += ["Mul", "Sigmoid"]
            cur = producers.get(rest[0])
            continue
        if cur.op_type not in _COPY_OPS:
            chain.append(cur.op_type)
        cur = producers.get(data[0]) if len(data) == 1 else None
    return None


def _ancestors(node: Any, producers: dict[str, Any], consts: set[str]) -> dict[str, int]:
    """Node name -> shortest distance (in nodes) from ``node`` back to it, ``node`` itself at 0."""
    dist = {node.name: 0}
    frontier = [node]
    while frontier:
        nxt = []
        for cur in frontier:
            for tensor in cur.input:
                parent = None if tensor in consts else producers.get(tensor)
                if parent is not None and parent.name not in dist:
                    dist[parent.name] = dist[cur.name] + 1
                    nxt.append(parent)
        frontier = nxt
    return dist


def residual_adds(graph: Any) -> dict[str, int]:
    """Residual Adds of an ONNX graph: Add node name -> index of its residual (shortcut) input.

    ModelOpt's ``build_non_residual_input_map``: an Add of two tensors that nodes produce (no constant, no graph
    input) where at least one side has a Conv backbone. With two different backbones, the input on the longer
    path back to the lowest common ancestor is the Conv branch (input 1 when the two share no ancestor, as
    ModelOpt decides); with one backbone, that side is the Conv branch unless the backbone is itself the common
    ancestor (then the Add is not residual). Q/DQ pairs are read through (:func:`_graph_view`), so the lint finds
    the same Adds in the quantized artefact. Nodes need unique names
    (:func:`~mosaic_edge.calibration.trt_qdq.name_nodes`).
    """
    producers, consts = _graph_view(graph)
    found: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        if any(i in consts or i not in producers for i in node.input):
            continue
        p0, p1 = producers[node.input[0]], producers[node.input[1]]
        b0, b1 = _backbone(p0, producers, consts), _backbone(p1, producers, consts)
        a0, a1 = _ancestors(p0, producers, consts), _ancestors(p1, producers, consts)
        common = set(a0) & set(a1)
        lca = min(common, key=lambda n: a0[n]) if common else None
        if b0 is not None and b1 is not None:
            if b0.name == b1.name:
                continue
            conv_branch = 0 if lca is not None and a0[lca] > a1[lca] else 1
        elif b0 is not None or b1 is not None:
            backbone = b0 if b0 is not None else b1
            if lca == backbone.name:
                continue  # ConvNeXt-like: the Conv feeds both sides, not a residual connection
            conv_branch = 0 if b0 is not None else 1
        else:
            continue
        found[node.name] = 1 - conv_branch
    return found
