"""The export stage end to end: checkpoint -> fp32/fp16 ONNX (parity-checked) -> INT8 -> report -> manifest.

Output directory (see :func:`run_export`)::

    model.onnx            fp32, target "any"          parity vs torch (FP32_TOLERANCE), enforced
    model.fp16.onnx       fp16, fp32 I/O, "any"       parity vs torch (FP16_TOLERANCE), enforced   (--fp16)
    model.int8.onnx       Q/DQ, symmetric, "tensorrt" accuracy gate (report.py)                    (--int8)
    model.int8-cpu.onnx   Q/DQ, uint8 acts, "cpu"     accuracy gate                                (--int8)
    calib.npz, calib.cache                            calibration set and TensorRT legacy cache    (--int8)
    report.json, report.md                            accuracy of every artefact vs fp32
    manifest.json                                     written last, only when every check passed

A failed check raises a :class:`~mosaic_edge.errors.UserError` after writing the report, and leaves no
manifest: the runtime refuses a directory without one, so a model that failed its gate cannot be deployed by
accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mosaic_edge.contract import Contract
from mosaic_edge.data.sources import SYNTHETIC, DataSpec
from mosaic_edge.errors import UserError
from mosaic_edge.export import parity as par
from mosaic_edge.export.fp16 import convert_fp16
from mosaic_edge.export.onnx_export import DEFAULT_OPSET, export_onnx, io_signature
from mosaic_edge.export.report import (
    DEFAULT_MAX_MAP_DROP_PTS,
    Evaluated,
    build_report,
    check_gate,
    write_report,
)
from mosaic_edge.manifest import MANIFEST_NAME, Manifest

FP32, FP16, INT8_TRT, INT8_CPU = "model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"
CALIB_NPZ, CALIB_CACHE = "calib.npz", "calib.cache"
EVAL_SPLITS = ("train", "validation", "test")


class ParityError(UserError):
    """An fp32/fp16 artefact differs from torch by more than its precision's tolerance."""


@dataclass(frozen=True)
class ExportConfig:
    """Options of :func:`run_export` (defaults are the CLI's).

    Attributes:
        fp16 / int8: Also write the fp16 / the two INT8 artefacts.
        calib_method: "entropy", "percentile" or "minmax".
        calib_size: Patches in the calibration set (sampled from the training split of ``data``).
        calib_seed: Seed of the calibration sampling.
        calib_file: Use this saved ``calib.npz`` instead of sampling one.
        quant_backend: "onnxruntime", "modelopt" or "auto" for the TensorRT artefact (the CPU one is ORT).
        data: "synthetic" or a dataset root; None: the data the checkpoint was trained on (its recorded
            :class:`~mosaic_edge.data.sources.DataSpec`). Its test split is the gate set, its train split the
            calibration pool.
        eval_data: Further labelled roots evaluated on all their splits (e.g. the real BigEarthNet v2 sample).
        eval_limit: Cap on test-split samples evaluated (None: all).
        parity_limit: Samples of each set used for the torch parity checks.
        max_map_drop_pts: INT8 accuracy gate, percentage points of macro mAP below fp32.
        opset / exporter: See :func:`~mosaic_edge.export.onnx_export.export_onnx`.
        trt_version: TensorRT version written into the calibration cache header.
    """

    fp16: bool = False
    int8: bool = False
    calib_method: str = "entropy"
    calib_size: int = 256
    calib_seed: int = 0
    calib_file: str | None = None
    quant_backend: str = "onnxruntime"
    data: str | None = None
    eval_data: tuple[str, ...] = ()
    eval_limit: int | None = 512
    parity_limit: int = 64
    max_map_drop_pts: float = DEFAULT_MAX_MAP_DROP_PTS
    opset: int = DEFAULT_OPSET
    exporter: str = "legacy"
    trt_version: str = "10.3.0"

    def __post_init__(self) -> None:
        if self.calib_size < 1:
            raise UserError(f"--calib-size must be >= 1, got {self.calib_size}")
        if self.max_map_drop_pts < 0:
            raise UserError(f"--max-map-drop must be >= 0, got {self.max_map_drop_pts}")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`run_export` wrote and measured."""

    out_dir: Path
    manifest: Manifest
    report: dict[str, Any]
    parity: tuple[par.ParityResult, ...] = field(default_factory=tuple)


def export_data(checkpoint_extra: Mapping[str, Any], contract: Contract, override: str | None) -> DataSpec:
    """The data an export checks against: ``override`` (``--data``) or what the checkpoint was trained on.

    An overriding synthetic benchmark is generated at the model's patch size.

    Raises:
        UserError: no override and the checkpoint records no data source.
    """
    if override is not None:
        return DataSpec(override, {"patch_size": contract.patch_size} if override == SYNTHETIC else {})
    recorded = checkpoint_extra.get("data_spec")
    if recorded is None:
        raise UserError("the checkpoint records no data source (written by an older mosaic-edge?); "
                        "pass --data synthetic or --data /path/to/dataset")
    return DataSpec.from_dict(recorded)


def _sources(spec: DataSpec, splits: tuple[str, ...], contract: Contract, everything: bool = False) -> list[Any]:
    """The non-empty ``splits`` of ``spec``; ``everything``: an evaluation root keeps its snowy/cloudy pairs."""
    from mosaic_edge.data.benv2 import SNOW_CLOUD_METADATA

    kind = spec.kind  # a wrong path fails here with its own message, not as "no samples"
    extra = ({"include_snow_cloud": True}
             if everything and kind == "benv2" and (Path(spec.data) / SNOW_CLOUD_METADATA).is_file() else {})
    found = []
    for split in splits:
        try:
            src = spec.open(split, **extra)
        except UserError:
            continue  # a root without this split
        if tuple(src.classes) != tuple(contract.classes):
            raise UserError(f"{spec.data}: its {len(src.classes)} classes differ from the model's "
                            f"{contract.num_classes} (or their order does)")
        if len(src):
            found.append(src)
    if not found:
        raise UserError(f"{spec.data}: no samples in splits {list(splits)}")
    return found


def _set_name(spec: DataSpec, split: str | None) -> str:
    return f"{spec.name}-{split}" if split else spec.name


def _int8_artefacts(out: Path, contract: Contract, cfg: ExportConfig, data: DataSpec) -> dict[str, dict[str, Any]]:
    """Calibration set, the TensorRT and CPU Q/DQ models and the TensorRT cache; returns manifest notes."""
    from mosaic_edge.calibration import (
        load_calibration_set,
        sample_calibration_set,
        save_calibration_set,
        write_calib_cache,
    )
    from mosaic_edge.calibration.quantize import CalibConfig, calibrate, quantize_qdq

    if cfg.calib_file:
        calib = load_calibration_set(cfg.calib_file, contract)
    else:
        (train,) = _sources(data, ("train",), contract)
        calib = sample_calibration_set(train, contract, size=cfg.calib_size, seed=cfg.calib_seed)
    save_calibration_set(out / CALIB_NPZ, calib, contract)
    n = len(calib["sar"])
    # Entropy thresholds are symmetric whichever target asks (ORT's KL search runs on a histogram centred on
    # 0), so one entropy run -- the slow, pure-Python part of the export -- serves both artefacts.
    shared = (calibrate(out / FP32, calib, CalibConfig("entropy"), symmetric=True)
              if cfg.calib_method == "entropy" else None)
    trt = quantize_qdq(out / FP32, out / INT8_TRT, calib, method=cfg.calib_method, target="tensorrt",
                       backend=cfg.quant_backend, calibration=shared)
    cpu = quantize_qdq(out / FP32, out / INT8_CPU, calib, method=cfg.calib_method, target="cpu",
                       backend="onnxruntime", calibration=shared)
    write_calib_cache(out / CALIB_CACHE, trt.amax, trt_version=cfg.trt_version)
    return {INT8_TRT: {"calib_method": trt.method, "backend": trt.backend, "calib_samples": n},
            INT8_CPU: {"calib_method": cpu.method, "backend": cpu.backend, "calib_samples": n}}


def run_export(checkpoint: str | Path, out_dir: str | Path,
               config: ExportConfig | None = None) -> ExportResult:
    """Export ``checkpoint`` into ``out_dir`` (see the module docstring for what is written).

    Raises:
        ParityError: fp32 or fp16 ONNX out of tolerance against torch.
        AccuracyGateError: an INT8 artefact lost more than ``config.max_map_drop_pts`` macro mAP.
    """
    from mosaic_edge.train.checkpoint import load_checkpoint, read_checkpoint

    cfg = config or ExportConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # never leave a stale manifest next to new files
    model, contract = load_checkpoint(checkpoint)
    data = export_data(read_checkpoint(checkpoint).get("extra") or {}, contract, cfg.data)

    # Evaluation sets: the test split of the export data (the gate set) and every extra labelled root.
    gate_set = _set_name(data, "test")
    srcs = _sources(data, ("test",), contract)
    sets = {gate_set: par.collect_samples(gate_set, srcs, contract, cfg.eval_limit)}
    for root in cfg.eval_data:
        spec = DataSpec(root)
        name = _set_name(spec, None)
        srcs = _sources(spec, EVAL_SPLITS, contract, everything=True)
        sets[name] = par.collect_samples(name, srcs, contract, cfg.eval_limit)

    export_onnx(model, contract, out / FP32, opset=cfg.opset, exporter=cfg.exporter)
    artefacts: dict[str, tuple[str, str]] = {FP32: ("fp32", "any")}
    notes: dict[str, dict[str, Any]] = {FP32: {"exporter": cfg.exporter}}
    if cfg.fp16:
        convert_fp16(out / FP32, out / FP16)
        artefacts[FP16] = ("fp16", "any")
        notes[FP16] = {"io": "float32"}
    lint = None
    if cfg.int8:
        from mosaic_edge.calibration.trt_lint import lint_tensorrt_qdq

        notes.update(_int8_artefacts(out, contract, cfg, data))
        artefacts[INT8_TRT] = ("int8", "tensorrt")
        artefacts[INT8_CPU] = ("int8", "cpu")
        lint = lint_tensorrt_qdq(out / INT8_TRT)  # would TensorRT run it as fused INT8 on an fp16 base?

    # Parity against torch on the first samples of every set; fp32/fp16 are enforced, INT8 is recorded (its
    # binding check is the accuracy gate below).
    results = []
    for samples in sets.values():
        sub = par.Samples(samples.name, {k: v[: cfg.parity_limit] for k, v in samples.inputs.items()},
                          samples.labels[: cfg.parity_limit], samples.ids[: cfg.parity_limit])
        ref = par.run_torch(model, sub.inputs)
        for name, (precision, _) in artefacts.items():
            results.append(par.check_parity(ref, out / name, sub, contract, precision))
    for res in results:
        notes[res.artefact][f"parity_{res.samples}"] = {"max_abs_logit_diff": res.max_abs_logit_diff,
                                                        "flip_fraction": res.flip_fraction}

    evaluated = {}
    for set_name, samples in sets.items():
        runs = [Evaluated(name, prec, target, par.run_onnx(out / name, samples.inputs)["logits"])
                for name, (prec, target) in artefacts.items()]
        evaluated[set_name] = (samples.labels, runs)
    report = build_report(evaluated, contract, reference=FP32, gate_set=gate_set,
                          max_map_drop_pts=cfg.max_map_drop_pts,
                          extra={"config": asdict(cfg), "data": data.to_dict(),
                                 "parity": [r.to_dict() for r in results],
                                 "trt_lint": lint.to_dict() if lint is not None else None})
    write_report(report, out)
    bad = [r for r in results if r.precision != "int8" and not r.passed]
    if bad:
        raise ParityError("parity check failed: " + "; ".join(r.describe() for r in bad))
    check_gate(report)
    if lint is not None and not lint.passed:
        raise UserError(f"{INT8_TRT} fails the TensorRT placement lint: " + "; ".join(lint.failures))

    manifest = Manifest.create(contract, out)
    for name, (precision, target) in artefacts.items():
        sig = io_signature(out / name)
        manifest = manifest.with_artefact(name, precision, target, opset=sig["opset"], inputs=sig["inputs"],
                                          outputs=tuple(sig["outputs"]), notes=notes[name])
    if cfg.int8:
        manifest = manifest.with_file(CALIB_NPZ, "calibration-set")
        manifest = manifest.with_file(CALIB_CACHE, "tensorrt-calib-cache")
    manifest = manifest.with_file("report.json", "accuracy-report")
    manifest.save()
    return ExportResult(out, manifest, report, tuple(results))
