"""The export stage end to end: checkpoint -> fp32/fp16 ONNX (parity-checked) -> INT8 -> report -> manifest.

Output directory (see :func:`run_export`)::

    model.onnx            fp32, target "any"          parity vs torch (FP32_TOLERANCE), enforced
    model.fp16.onnx       fp16, fp32 I/O, "any"       parity vs torch (FP16_TOLERANCE), enforced   (--fp16)
    model.int8.onnx       Q/DQ, symmetric, "tensorrt" accuracy gate (gate.py), fallback margin (--int8)
    model.int8-cpu.onnx   Q/DQ, uint8 acts, "cpu"     accuracy gate, fallback margin              (--int8)
    calib.npz, calib.cache                            calibration set and TensorRT legacy cache    (--int8)
    report.json, report.md, fallback.png              accuracy of every artefact vs fp32, INT8 safety net
    manifest.json                                     written last, only when every check passed

The data everything is checked against is the checkpoint's own (its recorded
:class:`~mosaic_edge.data.sources.DataSpec`) unless ``--data`` overrides it: the gate set is its validation +
test splits, topped up with synthetic patches to :data:`~mosaic_edge.export.gate.GATE_MIN_PATCHES` when the
source is small; the calibration set comes from its training split, or from ``--calib-data`` sources cut into
the runtime's windows. With INT8, the manifest carries the calibration envelope and, per INT8 artefact, the
calibrated tensor ranges and the borderline-fallback margin chosen on the validation data (and on held-out
windows of each ``--calib-data`` source).

A failed check raises a :class:`~mosaic_edge.errors.UserError` after writing the report, and leaves no
manifest: the runtime refuses a directory without one, so a model that failed its gate cannot be deployed by
accident.

Steps of :func:`run_export`, each one function so a stage can be added between two of them:
:func:`_float_artefacts` (fp32, fp16), :func:`_int8_artefacts` (calibration set, envelope, Q/DQ models),
:func:`~mosaic_edge.export.eval_sets.evaluation_sets`, :func:`_parity`, :func:`_evaluate`,
:func:`~mosaic_edge.export.safety.fallback_section`, :func:`_report`, :func:`_write_manifest`. Every artefact
is registered in one ``artefacts`` dict (name -> (precision, target)) that the later steps iterate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.calibration.trt_lint import LintResult, lint_tensorrt_qdq
from mosaic_edge.contract import INPUT_FORMS, Contract
from mosaic_edge.data.sources import SYNTHETIC, DataSpec
from mosaic_edge.envelope import Envelope
from mosaic_edge.errors import UserError
from mosaic_edge.export import parity as par
from mosaic_edge.export.eval_sets import EvalSets, evaluation_sets
from mosaic_edge.export.fp16 import convert_fp16
from mosaic_edge.export.onnx_export import DEFAULT_OPSET, export_onnx, io_signature
from mosaic_edge.export.raw_inputs import finish_inputs
from mosaic_edge.export.report import DEFAULT_MAX_MAP_DROP_PTS, Evaluated, build_report, check_gate, write_report
from mosaic_edge.export.safety import fallback_section
from mosaic_edge.fallback import DEFAULT_TARGET_AGREEMENT, FallbackPolicy
from mosaic_edge.manifest import MANIFEST_NAME, Manifest

FP32, FP16, INT8_TRT, INT8_CPU = "model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"
CALIB_NPZ, CALIB_CACHE = "calib.npz", "calib.cache"
# Fewer calibration patches than this and the report warns: ranges from a handful of patches miss the extremes.
CALIB_FEW = 64

Progress = Callable[[str], None]


class ParityError(UserError):
    """An fp32/fp16 artefact differs from torch by more than its precision's tolerance."""


@dataclass(frozen=True)
class ExportConfig:
    """Options of :func:`run_export` (defaults are the CLI's).

    Attributes:
        fp16 / int8: Also write the fp16 / the two INT8 artefacts.
        calib_method: "minmax" (default: on the default model it leaves INT8 closest to fp32, so the fallback
            re-runs fewest windows -- benchmarks/RESULTS.md, "INT8 safety net"), "entropy" or "percentile".
        calib_size: Patches in the calibration set.
        calib_seed: Seed of the calibration sampling.
        calib_file: Use this saved ``calib.npz`` instead of sampling one.
        calib_data: Sources of the calibration set (data roots, ``synthetic``, folders of spool tiles), drawn
            across evenly; empty: the training split of ``data``.
        quant_backend: "onnxruntime", "modelopt" or "auto" for the TensorRT artefact (the CPU one is ORT).
        data: "synthetic" or a dataset root; None: the data the checkpoint was trained on (its recorded
            :class:`~mosaic_edge.data.sources.DataSpec`). Its validation + test splits are the gate set.
        eval_data: Further labelled roots evaluated on all their splits (e.g. the real BigEarthNet v2 sample).
        eval_limit: Cap on the gate set (half validation, half test; None: all).
        parity_limit: Samples of each set used for the torch parity checks.
        max_map_drop_pts: INT8 accuracy gate, percentage points of macro mAP below fp32.
        target_agreement: Decision agreement with fp32 the INT8 fallback margin is chosen for.
        opset / exporter: See :func:`~mosaic_edge.export.onnx_export.export_onnx`.
        trt_version: TensorRT version written into the calibration cache header.
    """

    fp16: bool = False
    int8: bool = False
    calib_method: str = "minmax"
    calib_size: int = 256
    calib_seed: int = 0
    calib_file: str | None = None
    calib_data: tuple[str, ...] = ()
    quant_backend: str = "onnxruntime"
    data: str | None = None
    eval_data: tuple[str, ...] = ()
    eval_limit: int | None = 512
    parity_limit: int = 64
    max_map_drop_pts: float = DEFAULT_MAX_MAP_DROP_PTS
    target_agreement: float = DEFAULT_TARGET_AGREEMENT
    opset: int = DEFAULT_OPSET
    exporter: str = "legacy"
    trt_version: str = "10.3.0"
    input_form: str = "raw"  # of the written artefacts (mosaic_edge.export.raw_inputs); checks run standardised

    def __post_init__(self) -> None:
        if self.calib_size < 1:
            raise UserError(f"--calib-size must be >= 1, got {self.calib_size}")
        if self.max_map_drop_pts < 0:
            raise UserError(f"--max-map-drop must be >= 0, got {self.max_map_drop_pts}")
        if self.calib_file and self.calib_data:
            raise UserError("--calib-file and --calib-data exclude each other")
        if not 0.0 < self.target_agreement <= 1.0:
            raise UserError(f"--target-agreement must be in (0, 1], got {self.target_agreement}")
        if self.input_form not in INPUT_FORMS:
            raise UserError(f"--input-form must be one of {list(INPUT_FORMS)}, got {self.input_form!r}")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`run_export` wrote and measured; ``warnings`` are also in the report."""

    out_dir: Path
    manifest: Manifest
    report: dict[str, Any]
    parity: tuple[par.ParityResult, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = ()


@dataclass
class Calibrated:
    """What the INT8 step produced beyond the artefacts: the envelope, provenance and per-artefact facts."""

    envelope: Envelope
    info: dict[str, Any]
    notes: dict[str, dict[str, Any]]
    ranges: dict[str, dict[str, tuple[float, float]]]
    tuning: list[par.Samples]


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


# ---- step 1: fp32 (+ fp16) -----------------------------------------------------------------------------
def _float_artefacts(model: Any, contract: Contract, out: Path,
                     cfg: ExportConfig) -> tuple[dict[str, tuple[str, str]], dict[str, dict[str, Any]]]:
    """Write the fp32 (and fp16) ONNX; return name -> (precision, target) and name -> manifest notes."""
    export_onnx(model, contract, out / FP32, opset=cfg.opset, exporter=cfg.exporter)
    artefacts: dict[str, tuple[str, str]] = {FP32: ("fp32", "any")}
    notes: dict[str, dict[str, Any]] = {FP32: {"exporter": cfg.exporter}}
    if cfg.fp16:
        convert_fp16(out / FP32, out / FP16)
        artefacts[FP16] = ("fp16", "any")
        notes[FP16] = {"io": "float32"}
    return artefacts, notes


# ---- step 2: INT8 --------------------------------------------------------------------------------------
def _int8_artefacts(out: Path, contract: Contract, cfg: ExportConfig, data: DataSpec,
                    progress: Progress | None) -> Calibrated:
    """Calibration set + envelope, the TensorRT and CPU Q/DQ models and the TensorRT cache."""
    from mosaic_edge.calibration import save_calibration_set
    from mosaic_edge.calibration.quantize import CalibConfig, calibrate, quantize_qdq
    from mosaic_edge.envelope import build_envelope, raw_from_normalised
    from mosaic_edge.export.calib_data import calibrated_ranges, calibration_set, tuning_windows
    from mosaic_edge.export.quiet import quiet_quantization
    from mosaic_edge.trt_calib_cache import write_calib_cache

    calib, draws, sources = calibration_set(contract, data, cfg.calib_size, cfg.calib_seed, cfg.calib_file,
                                            cfg.calib_data)
    arrays = {k: calib[k] for k in contract.input_names}
    save_calibration_set(out / CALIB_NPZ, arrays, contract)
    n = len(arrays["sar"])
    envelope = build_envelope(*raw_from_normalised(arrays, contract), contract)
    what = f"INT8: {cfg.calib_method} calibration on {n} patches, TensorRT + CPU Q/DQ models"
    with quiet_quantization(what, progress):
        # Entropy thresholds are symmetric whichever target asks (ORT's KL search runs on a histogram centred
        # on 0), so one entropy run -- the slow, pure-Python part of the export -- serves both artefacts.
        shared = (calibrate(out / FP32, arrays, CalibConfig("entropy"), symmetric=True)
                  if cfg.calib_method == "entropy" else None)
        trt = quantize_qdq(out / FP32, out / INT8_TRT, arrays, method=cfg.calib_method, target="tensorrt",
                           backend=cfg.quant_backend, calibration=shared)
        cpu = quantize_qdq(out / FP32, out / INT8_CPU, arrays, method=cfg.calib_method, target="cpu",
                           backend="onnxruntime", calibration=shared)
    write_calib_cache(out / CALIB_CACHE, trt.amax, trt_version=cfg.trt_version)
    tuning = (tuning_windows(sources, {str(i) for i in calib.get("id", ())}, contract, envelope, cfg.calib_seed)
              if sources else [])
    info = {"n": n, "method": cfg.calib_method, "seed": cfg.calib_seed, "sources": draws,
            "envelope": envelope.to_dict()}
    return Calibrated(
        envelope=envelope, info=info,
        notes={INT8_TRT: {"calib_method": trt.method, "backend": trt.backend, "calib_samples": n},
               INT8_CPU: {"calib_method": cpu.method, "backend": cpu.backend, "calib_samples": n}},
        ranges={INT8_TRT: calibrated_ranges(out / INT8_TRT), INT8_CPU: calibrated_ranges(out / INT8_CPU)},
        tuning=tuning)


# ---- step 3: eval_sets.evaluation_sets; steps 4-5: parity, evaluation ----------------------------------
def _parity(model: Any, out: Path, artefacts: Mapping[str, tuple[str, str]], sets: EvalSets, contract: Contract,
            cfg: ExportConfig, sessions: Mapping[str, Any]) -> list[par.ParityResult]:
    """Parity against torch on the first samples of every labelled set (fp32/fp16 enforced, INT8 recorded)."""
    results = []
    for samples in sets.labelled().values():
        sub = samples.subset(slice(0, cfg.parity_limit))
        ref = par.run_torch(model, sub.inputs)
        for name, (precision, _) in artefacts.items():
            results.append(par.check_parity(ref, out / name, sub, contract, precision, session=sessions[name]))
    return results


def _evaluate(artefacts: Mapping[str, tuple[str, str]], sets: EvalSets, tuning: list[par.Samples],
              sessions: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Fused logits of every artefact on every set: set name -> artefact -> [n, C] (the gate set's are its
    validation and test parts' logits)."""
    runs = {s.name: s for s in (sets.validation, sets.test, *sets.extra.values(), *tuning)}
    logits = {set_name: {name: par.run_onnx(sessions[name], samples.inputs)["logits"] for name in artefacts}
              for set_name, samples in runs.items()}
    logits[sets.gate.name] = {name: np.concatenate([logits[sets.validation.name][name],
                                                    logits[sets.test.name][name]]) for name in artefacts}
    return logits


# ---- step 6: safety.fallback_section; steps 7-8: report, manifest --------------------------------------
def _report(out: Path, contract: Contract, cfg: ExportConfig, data: DataSpec, sets: EvalSets,
            logits: Mapping[str, Mapping[str, np.ndarray]], artefacts: Mapping[str, tuple[str, str]],
            results: list[par.ParityResult], sections: Mapping[str, Any], warnings: list[str],
            lint: LintResult | None) -> dict[str, Any]:
    evaluated = {set_name: (samples.labels, [Evaluated(name, prec, target, logits[set_name][name])
                                             for name, (prec, target) in artefacts.items()])
                 for set_name, samples in sets.labelled().items()}
    report = build_report(evaluated, contract, reference=FP32, gate_set=sets.gate.name,
                          max_map_drop_pts=cfg.max_map_drop_pts, composition=sets.gate.composition(),
                          sections=sections, warnings=warnings,
                          extra={"config": asdict(cfg), "data": data.to_dict(),
                                 "parity": [r.to_dict() for r in results],
                                 "trt_lint": lint.to_dict() if lint is not None else None})
    write_report(report, out)
    return report


def _write_manifest(out: Path, contract: Contract, artefacts: Mapping[str, tuple[str, str]],
                    notes: Mapping[str, Mapping[str, Any]], cal: Calibrated | None,
                    policies: Mapping[str, FallbackPolicy], files: Mapping[str, str]) -> Manifest:
    manifest = Manifest.create(contract, out)
    for name, (precision, target) in artefacts.items():
        sig = io_signature(out / name)
        manifest = manifest.with_artefact(name, precision, target, opset=sig["opset"], inputs=sig["inputs"],
                                          outputs=tuple(sig["outputs"]), notes=notes[name],
                                          calibrated_ranges=cal.ranges.get(name, {}) if cal else {},
                                          fallback=policies.get(name))
    if cal is not None:
        manifest = manifest.with_calibration(cal.envelope, {k: v for k, v in cal.info.items() if k != "envelope"})
    for name, kind in files.items():
        manifest = manifest.with_file(name, kind)
    manifest.save()
    return manifest


def run_export(checkpoint: str | Path, out_dir: str | Path, config: ExportConfig | None = None,
               progress: Progress | None = None) -> ExportResult:
    """Export ``checkpoint`` into ``out_dir`` (see the module docstring for what is written).

    Args:
        progress: Called with one line per long step (the CLI prints them to stderr).

    Raises:
        ParityError: fp32 or fp16 ONNX out of tolerance against torch.
        AccuracyGateError: an INT8 artefact's gate verdict is "failed".
    """
    from mosaic_edge.train.checkpoint import load_checkpoint, read_checkpoint

    cfg = config or ExportConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # never leave a stale manifest next to new files
    model, contract = load_checkpoint(checkpoint)
    data = export_data(read_checkpoint(checkpoint).get("extra") or {}, contract, cfg.data)
    warnings: list[str] = []

    artefacts, notes = _float_artefacts(model, contract, out, cfg)
    cal = _int8_artefacts(out, contract, cfg, data, progress) if cfg.int8 else None
    # Would TensorRT run the INT8 artefact as fused INT8 kernels on an fp16 base? (calibration/trt_lint.py)
    lint = lint_tensorrt_qdq(out / INT8_TRT) if cal is not None else None
    if cal is not None:
        artefacts |= {INT8_TRT: ("int8", "tensorrt"), INT8_CPU: ("int8", "cpu")}
        notes |= cal.notes
        if cal.info["n"] < CALIB_FEW:
            warnings.append(f"calibration set: only {cal.info['n']} patches (INT8 ranges from so few miss the "
                            "extremes; add --calib-data)")
    sets = evaluation_sets(data, contract, cfg.eval_limit, cfg.eval_data, cal.envelope if cal else None, warnings)
    if progress:
        where = ", ".join(f"{n} ({len(s)})" for n, s in sets.labelled().items())
        progress(f"checking {len(artefacts)} artefacts on {where}")

    sessions = {name: par.ort_session(out / name) for name in artefacts}  # each opened once for steps 4-5
    results = _parity(model, out, artefacts, sets, contract, cfg, sessions)
    for res in results:
        notes[res.artefact][f"parity_{res.samples}"] = {"max_abs_logit_diff": res.max_abs_logit_diff,
                                                        "logit_excess": res.logit_excess,
                                                        "max_prob_diff": res.max_prob_diff,
                                                        "flip_fraction": res.flip_fraction}
    logits = _evaluate(artefacts, sets, cal.tuning if cal else [], sessions)
    del sessions

    sections: dict[str, Any] = {}
    policies: dict[str, FallbackPolicy] = {}
    if cal is not None:
        sections["calibration"] = cal.info
        int8 = [name for name, (precision, _) in artefacts.items() if precision == "int8"]
        sections["fallback"], policies = fallback_section(out, sets, cal.tuning, logits, int8, FP32, contract,
                                                          cfg.target_agreement, warnings)
    report = _report(out, contract, cfg, data, sets, logits, artefacts, results, sections, warnings, lint)
    bad = [r for r in results if r.precision != "int8" and not r.passed]
    if bad:
        raise ParityError("parity check failed: " + "; ".join(r.describe() for r in bad))
    check_gate(report)
    if lint is not None and not lint.passed:
        raise UserError(f"{INT8_TRT} fails the TensorRT placement lint: " + "; ".join(lint.failures))

    # Every check passed on the artefacts as written; the manifest hashes them as they are now.
    files = {"report.json": "accuracy-report"}
    if cal is not None:
        files = {CALIB_NPZ: "calibration-set", CALIB_CACHE: "tensorrt-calib-cache", **files}
    manifest = _write_manifest(out, contract, artefacts, notes, cal, policies, files)
    manifest = finish_inputs(manifest, cfg.input_form)  # last: every check above ran on standardised inputs
    return ExportResult(out, manifest, report, tuple(results), tuple(report["warnings"]))
