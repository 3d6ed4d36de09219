"""fp32 ONNX -> fp16 ONNX with float32 inputs and outputs (``keep_io_types``).

The conversion is onnxruntime's copy of onnxconverter-common's ``convert_float_to_float16``
(``onnxruntime.transformers.float16``), so no extra dependency is needed. The runtime and the contract keep
float32 I/O; Cast nodes at the graph edges convert. The L2 normalisation of the embeddings stays in fp32: its
sum of squares can exceed the fp16 range (65504) for un-normalised 128-d features, and it costs nothing.
"""

from __future__ import annotations

from pathlib import Path

from mosaic_edge.calibration.trt_qdq import FP32_OPS, topological_sort
from mosaic_edge.optional import require


def convert_fp16(src: str | Path, dst: str | Path, keep_ops: tuple[str, ...] = FP32_OPS) -> Path:
    """Write an fp16 copy of the ONNX model ``src`` to ``dst``; inputs/outputs stay float32.

    Args:
        src: fp32 ONNX file (its metadata, including the contract, is carried over).
        dst: Destination file.
        keep_ops: Op types left in fp32.

    Returns:
        ``dst``; the file passed ``onnx.checker.check_model``.
    """
    onnx = require("onnx")
    float16 = require("onnxruntime.transformers.float16", extra="export")
    proto = onnx.load(str(src))
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_ops))
    half = float16.convert_float_to_float16(proto, keep_io_types=True, op_block_list=block)
    topological_sort(half.graph)
    onnx.checker.check_model(half, full_check=True)
    dst = Path(dst)
    onnx.save(half, str(dst))
    return dst
