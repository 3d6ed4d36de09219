"""Where the Q/DQ nodes go, per target: the ``quantize_static`` options of the TensorRT and CPU artefacts.

TensorRT (``target="tensorrt"``) -- NVIDIA's placement, as ModelOpt's ``modelopt.onnx.quantization`` int8 mode
and TensorRT's "Q/DQ layer-placement recommendations" prescribe:

* quantize the INPUTS of the weighted ops (Conv / ConvTranspose / Gemm / MatMul: activation and weights),
  never their outputs. TensorRT fuses Conv+BN+ReLU(+Add) into one kernel; a Q/DQ on a Conv output is an
  extra rounding in the middle of that fusion (of the pre-activation, with its negative half) and a second
  one on the ReLU output after it. ModelOpt sets ``OpTypesToExcludeOutputQuantization`` to every op type of
  the graph and drops Relu/Concat/Sigmoid/... from ORT's QDQ registry -- the same as quantizing only the
  weighted ops with no output Q.
* residual ``Add``: not quantized. Its inputs then stay in float (the INT8 Conv writes a float output the
  Add reads; not verified on TensorRT here, no TensorRT on this machine).
  ModelOpt additionally puts a Q/DQ on the residual branch only (never on the Conv branch);
  ORT quantizes both inputs of an Add or neither; "both" puts a Q/DQ on the Conv branch, which TensorRT's
  guide shows splitting the Conv from the Add, so "neither" is the better of the two ORT can express.
* final outputs (logits, the L2-normalised embeddings, the sigmoid applied by the runtime) stay float: no op
  output is quantized at all.

Measured on the tiny demo checkpoint (``mosaic-edge export --int8`` reports, benchmarks/RESULTS.md "Export"):
quantizing every op output (ORT's default) cost 2.46 macro-mAP points with entropy calibration, mostly from
the clipped logits and the Conv-output roundings; this placement costs 0.03.

CPU (``target="cpu"``) -- ONNX Runtime's CPU kernels are fast only for fused ``DQ -> Conv -> Q`` groups
(QLinearConv), so Conv (and Add/MaxPool/...) outputs ARE quantized, uint8 asymmetric, with the ReLU folded
into the Conv output's range. The heads (Gemm / MatMul) and every graph output stay float. Weights are
quantized with ``reduce_range`` (7 bit): without VNNI (x86 AVX2, e.g. this machine) ORT's u8s8 kernels
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
