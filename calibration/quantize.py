"""INT8 Q/DQ quantization calibrated on SAR/optical patches (onnxruntime.quantization, or NVIDIA ModelOpt).

Two artefacts come from one fp32 ONNX (DESIGN.md "INT8: explicit quantization first"):

* ``target="tensorrt"``: symmetric int8 activations (zero point 0 -- TensorRT rejects anything else),
  per-channel symmetric int8 weights, float bias (TensorRT has no int32 DequantizeLinear), built later as a
  strongly typed network. Q/DQ on the inputs of Conv/Gemm/MatMul and on the residual input of every residual
  Add, no op output quantized; on an fp16 base (fp16 between the Q/DQ pairs, fp16 scales, opset 19, float32
  model I/O through Casts: :mod:`~mosaic_edge.calibration.trt_qdq`), checked by
  :mod:`~mosaic_edge.calibration.trt_lint`.
* ``target="cpu"``: asymmetric uint8 activations and 7-bit weights, Conv outputs quantized so ONNX Runtime
  fuses QLinearConv; the heads' outputs stay float.

Where the Q/DQ go, and why, is :mod:`mosaic_edge.calibration.placement`.

Calibration runs ONCE per call through :func:`calibrate`; the same ranges feed the Q/DQ model (handed to
``quantize_static`` as its calibration cache) and the per-tensor amax the TensorRT calibration cache is
written from (:mod:`mosaic_edge.trt_calib_cache`), so the two cannot disagree. The run covers every
tensor of the graph (not only the quantized ones): the legacy implicit-INT8 path needs a range for each
tensor TensorRT may run in INT8, Conv outputs included.

Why not ``quantize_static(calibrate_method=Entropy)`` with its defaults: ``quantize_static`` passes no bin
counts to the entropy calibrator, which then uses 128 histogram bins and 128 quantized bins -- the KL search
has exactly one candidate threshold, the full range, i.e. MinMax. We build the calibrator ourselves with more
histogram bins than quantized bins so the search has candidates: 512 / 128 give 193 candidate thresholds.
TensorRT's own calibrator uses 2048 bins, but ORT's search is pure Python and its cost grows with the bin count
(benchmarks/calib_methods.py; times in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.calibration.placement import placement_for, residual_adds
from mosaic_edge.calibration.trt_qdq import drop_conv_branch_qdq, name_nodes, to_fp16_base
from mosaic_edge.errors import UserError
from mosaic_edge.optional import available, require

METHODS = ("entropy", "percentile", "minmax")
TARGETS = ("tensorrt", "cpu")
BACKENDS = ("auto", "onnxruntime", "modelopt")


@dataclass(frozen=True)
class CalibConfig:
    """How activation ranges are calibrated.

    Attributes:
        method: "entropy" (KL divergence, TensorRT's EntropyCalibration2), "percentile" or "minmax".
        num_bins: Histogram bins of entropy/percentile (TensorRT uses 2048; see the module doc for cost).
        num_quantized_bins: Quantized bins of the entropy search (128 for int8).
        percentile: Percentile of |x| kept by the percentile method.
        batch_size: Calibration batch fed to ONNX Runtime per step.
    """

    method: str = "entropy"
    num_bins: int = 512
    num_quantized_bins: int = 128
    percentile: float = 99.99
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"calibration method must be one of {METHODS}, got {self.method!r}")
        if self.num_bins < 2 * self.num_quantized_bins:
            # fewer bins leave the KL search a single candidate (the MinMax range)
            raise UserError(
                f"num_bins ({self.num_bins}) must be >= 2 * num_quantized_bins ({self.num_quantized_bins})"
            )
        if not 0.0 < self.percentile <= 100.0:
            raise UserError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Calibration:
    """Result of one calibration run.

    Attributes:
        method: Calibration method used.
        symmetric: Whether ranges were made symmetric around 0.
        ranges: Tensor name -> (lowest, highest).
        tensors_data: The onnxruntime ``TensorsData`` the ranges came from (fed to ``quantize_static``).
    """

    method: str
    symmetric: bool
    ranges: dict[str, tuple[float, float]]
    tensors_data: Any = field(repr=False, default=None)

    @property
    def amax(self) -> dict[str, float]:
        """Tensor name -> max(|lowest|, |highest|): what TensorRT's scale is ``amax / 127`` of."""
        return {k: max(abs(lo), abs(hi)) for k, (lo, hi) in self.ranges.items()}


@dataclass(frozen=True)
class QuantResult:
    """What :func:`quantize_qdq` wrote.

    Attributes:
        path: The Q/DQ ONNX.
        method / target / backend: How it was made.
        amax: Per-tensor activation amax of the calibration run (for the TensorRT cache).
        num_quantize_nodes: QuantizeLinear nodes in the output.
    """

    path: Path
    method: str
    target: str
    backend: str
    amax: dict[str, float]
    num_quantize_nodes: int


class _OneBatch:
    """``CalibrationDataReader`` yielding a single batch.

    The calibrators merge histograms / ranges across ``collect_data`` calls, so feeding one batch per call
    keeps memory at one batch of activations and avoids ORT stacking ragged batches (a smaller last batch)
    into one array.
    """

    def __init__(self, batch: dict[str, np.ndarray]):
        self._batch: dict[str, np.ndarray] | None = batch

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch, self._batch = self._batch, None
        return batch


def _batches(calib: Mapping[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in calib.items()}
    n = len(next(iter(arrays.values())))
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in arrays.items()}


def _check_calib(calib: Mapping[str, np.ndarray], model_inputs: list[str]) -> None:
    if sorted(calib) != sorted(model_inputs):
        raise UserError(f"calibration set has inputs {sorted(calib)}, the model wants {sorted(model_inputs)}")
    sizes = {len(v) for v in calib.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise UserError(f"calibration inputs disagree on (or have no) samples: {sorted(sizes)}")


def calibrate(
    fp32_onnx: str | Path,
    calib: Mapping[str, np.ndarray],
    config: CalibConfig | None = None,
    symmetric: bool = True,
) -> Calibration:
    """Run the model on the calibration set and compute per-tensor activation ranges.

    Args:
        fp32_onnx: The float model; tensor names of the result are its tensor names.
        calib: Input name -> float32 ``[N, ...]`` (e.g. from :func:`sample_calibration_set`).
        config: Method and histogram settings.
        symmetric: Symmetric ranges (TensorRT) or the observed [lowest, highest] (asymmetric uint8).
    """
    config = config or CalibConfig()
    onnx = require("onnx")
    require("onnxruntime.quantization")
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    model = onnx.load(str(fp32_onnx), load_external_data=False)
    _check_calib(
        calib, [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    )
    method = {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }[config.method]
    options: dict[str, Any] = {"symmetric": symmetric}
    if config.method == "entropy":
        options.update(num_bins=config.num_bins, num_quantized_bins=config.num_quantized_bins)
    elif config.method == "percentile":
        options.update(num_bins=config.num_bins, percentile=config.percentile)
    op_types = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
    with tempfile.TemporaryDirectory(prefix="mosaic-calib-") as tmp:
        calibrator = create_calibrator(
            Path(fp32_onnx),
            op_types,
            str(Path(tmp) / "augmented.onnx"),
            calibrate_method=method,
            extra_options=options,
        )
        for batch in _batches(calib, config.batch_size):
            calibrator.collect_data(_OneBatch(batch))
        tensors_data = calibrator.compute_data()
        del calibrator
    ranges = {}
    for name, td in tensors_data.items():
        lo, hi = td.range_value
        ranges[name] = (float(np.min(lo)), float(np.max(hi)))
    return Calibration(config.method, symmetric, ranges, tensors_data)


def calibrated_amax(
    fp32_onnx: str | Path, calib: Mapping[str, np.ndarray], config: CalibConfig | None = None
) -> dict[str, float]:
    """Per-tensor symmetric amax, computed as :func:`quantize_qdq` computes the TensorRT artefact's."""
    return calibrate(fp32_onnx, calib, config, symmetric=True).amax


def _quantize_ort(fp32_onnx: Path, out_onnx: Path, cal: Calibration, target: str) -> None:
    quant = require("onnxruntime.quantization")
    onnx = require("onnx")
    from onnxruntime.quantization.calibrate import CalibrationMethod, save_tensors_data

    model = onnx.load(str(fp32_onnx), load_external_data=False)
    graph = model.graph
    outputs = {o.name for o in graph.output}
    place = placement_for(
        target,
        {n.op_type for n in graph.node},
        {n.op_type for n in graph.node if outputs.intersection(n.output)},
    )
    method = {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }[cal.method]
    op_types, nodes, residual = list(place.op_types), None, {}
    if target == "tensorrt":
        # Only the weighted ops and the residual Adds (ORT quantizes both Add inputs; the Conv branch's pair
        # goes again below), chosen by node name.
        residual = residual_adds(name_nodes(model).graph)
        nodes = [n.name for n in graph.node if n.op_type in place.op_types] + sorted(residual)
        op_types += ["Add"] if residual else []
    with tempfile.TemporaryDirectory(prefix="mosaic-quant-") as tmp:
        cache = Path(tmp) / "ranges.json"
        # Hand our ranges to quantize_static as its calibration cache: one calibration run, no second pass.
        save_tensors_data(cal.tensors_data, cache)
        src = fp32_onnx
        if nodes is not None:
            src = Path(tmp) / "named.onnx"
            onnx.save(model, str(src))
        quant.quantize_static(
            str(src),
            str(out_onnx),
            calibration_data_reader=None,
            quant_format=quant.QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            nodes_to_quantize=nodes,
            per_channel=True,
            reduce_range=place.reduce_range,
            activation_type=getattr(quant.QuantType, place.activation_type),
            weight_type=getattr(quant.QuantType, place.weight_type),
            calibrate_method=method,
            extra_options=dict(place.extra),
            calibration_cache_path=str(cache),
        )
    if residual:
        quantized = onnx.load(str(out_onnx))
        drop_conv_branch_qdq(quantized, residual)
        onnx.save(quantized, str(out_onnx))


def _quantize_modelopt(fp32_onnx: Path, out_onnx: Path, calib: Mapping[str, np.ndarray], method: str) -> None:
    mq = require("modelopt.onnx.quantization", extra="export")
    if method == "percentile":
        raise UserError("ModelOpt int8 supports calibration methods entropy and minmax (max), not percentile")
    mq.quantize(
        onnx_path=str(fp32_onnx),
        quantize_mode="int8",
        calibration_data={k: np.ascontiguousarray(v, dtype=np.float32) for k, v in calib.items()},
        calibration_method="entropy" if method == "entropy" else "max",
        calibration_eps=["cpu"],
        # ModelOpt's default: an fp16 base between the Q/DQ pairs (what a strongly typed network runs fast)
        high_precision_dtype="fp16",
        output_path=str(out_onnx),
    )


def quantize_qdq(
    fp32_onnx: str | Path,
    out_onnx: str | Path,
    calib: Mapping[str, np.ndarray],
    method: str = "entropy",
    target: str = "tensorrt",
    backend: str = "onnxruntime",
    config: CalibConfig | None = None,
    calibration: Calibration | None = None,
) -> QuantResult:
    """Write a Q/DQ INT8 ONNX calibrated on ``calib``.

    Args:
        fp32_onnx: Float model (inputs named like the keys of ``calib``).
        out_onnx: Output path.
        calib: Input name -> float32 ``[N, ...]`` preprocessed exactly as at runtime.
        method: "entropy", "percentile" or "minmax".
        target: "tensorrt" (symmetric int8, zero points 0) or "cpu" (asymmetric uint8 activations).
        backend: "onnxruntime", "modelopt" (NVIDIA ModelOpt; tensorrt target only) or "auto" (ModelOpt when
            importable and the target is tensorrt).
        config: Histogram settings; ``config.method`` is overridden by ``method``.
        calibration: A :func:`calibrate` result of the same model, data and method to reuse (entropy
            ranges are symmetric either way, so one entropy run can serve both targets); None runs a
            fresh calibration.

    Returns:
        :class:`QuantResult` with the calibration run's per-tensor amax.
    """
    if target not in TARGETS:
        raise UserError(f"target must be one of {TARGETS}, got {target!r}")
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {BACKENDS}, got {backend!r}")
    base = config or CalibConfig()
    config = CalibConfig(method, base.num_bins, base.num_quantized_bins, base.percentile, base.batch_size)
    if backend == "auto":
        backend = "modelopt" if target == "tensorrt" and available("modelopt") else "onnxruntime"
    if backend == "modelopt" and target != "tensorrt":
        raise UserError("the ModelOpt backend only makes TensorRT-style (symmetric) Q/DQ models")
    fp32_onnx, out_onnx = Path(fp32_onnx), Path(out_onnx)
    if not fp32_onnx.is_file():
        raise UserError(f"fp32 ONNX not found: {fp32_onnx}")
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    cal = calibration or calibrate(fp32_onnx, calib, config, symmetric=(target == "tensorrt"))
    if cal.method != method:
        raise UserError(f"calibration was run with {cal.method!r}, quantization asked for {method!r}")
    if method != "entropy" and cal.symmetric != (target == "tensorrt"):
        # entropy ranges are symmetric whatever was asked; minmax/percentile ranges depend on it
        raise UserError(
            f"a {'symmetric' if cal.symmetric else 'asymmetric'} {method} calibration cannot make "
            f"the {target} artefact; calibrate again"
        )
    if backend == "modelopt":
        _quantize_modelopt(fp32_onnx, out_onnx, calib, method)
    else:
        _quantize_ort(fp32_onnx, out_onnx, cal, target)
    # The quantizer may tie a tensor to a neighbour's range (Conv output -> the following Relu's); the cache
    # must carry what the Q/DQ model actually uses, so those tensors take the model's scale (read while the
    # scales are still float32).
    amax = cal.amax
    if target == "tensorrt":
        amax |= {k.removesuffix("_QuantizeLinear_Input"): v for k, v in qdq_activation_amax(out_onnx).items()}
        if backend == "onnxruntime":  # ModelOpt writes its fp16 base itself
            onnx = require("onnx")
            onnx.save(to_fp16_base(onnx.load(str(out_onnx))), str(out_onnx))
    _copy_metadata(
        fp32_onnx,
        out_onnx,
        {"mosaic_edge.quantization": json.dumps({"method": method, "target": target, "backend": backend})},
    )
    return QuantResult(out_onnx, method, target, backend, amax, count_ops(out_onnx, "QuantizeLinear"))


def _copy_metadata(src: Path, dst: Path, extra: Mapping[str, str]) -> None:
    """Carry the fp32 model's metadata_props (the contract) into the quantized model, plus ``extra``."""
    onnx = require("onnx")
    src_meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    model = onnx.load(str(dst))
    meta = {p.key: p.value for p in model.metadata_props} | src_meta | dict(extra)
    del model.metadata_props[:]
    for key, value in sorted(meta.items()):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))


def count_ops(onnx_path: str | Path, op_type: str) -> int:
    """Number of nodes of ``op_type`` in the main graph."""
    onnx = require("onnx")
    return sum(n.op_type == op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def qdq_params(onnx_path: str | Path) -> list[dict[str, Any]]:
    """Scale and zero point of every QuantizeLinear/DequantizeLinear node (for checks and reports).

    Returns:
        One dict per node: ``op``, ``name``, ``input``, ``source`` (``input`` read back through Cast nodes: the
        fp16 base quantizes the fp16 Cast of a float32 graph input), ``scale`` (ndarray), ``zero_point``
        (ndarray or None), ``axis`` (int or None), ``dtype`` (zero point's numpy dtype name or None).
    """
    onnx = require("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:  # some exporters keep constants as Constant nodes
        if node.op_type == "Constant" and node.attribute:
            inits[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    casts = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast"}

    def source(name: str) -> str:
        while name in casts:
            name = casts[name]
        return name

    rows = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        rows.append(
            {
                "op": node.op_type,
                "name": node.name,
                "input": node.input[0],
                "source": source(node.input[0]),
                "scale": inits.get(node.input[1]),
                "zero_point": zp,
                "axis": axis,
                "dtype": None if zp is None else zp.dtype.name,
            }
        )
    return rows


def qdq_activation_amax(qdq_onnx: str | Path, qmax: int = 127) -> dict[str, float]:
    """Activation amax (scale * ``qmax``) per quantized tensor of a symmetric Q/DQ model (e.g. ModelOpt's)."""
    return {
        r["source"]: float(np.asarray(r["scale"]).reshape(-1)[0]) * qmax
        for r in qdq_params(qdq_onnx)
        if r["op"] == "QuantizeLinear" and r["scale"] is not None
    }
