"""CLI commands of the export stage (registered on the main app by :func:`register`)."""

from __future__ import annotations

from pathlib import Path

import typer


# ---- export (ONNX fp32/fp16, INT8 Q/DQ, report, manifest) --------------------------------------------------
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint written by `mosaic-edge train` (model.pt)."),
    out: Path = typer.Option(Path("export"), "--out", "-o", help="Output directory."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write model.fp16.onnx (fp32 I/O)."),
    int8: bool = typer.Option(False, "--int8", help="Also write INT8 Q/DQ models + calib files."),
    calib_method: str = typer.Option("minmax", "--calib-method", help="minmax | entropy | percentile."),
    calib_size: int = typer.Option(256, "--calib-size", help="Calibration patches (training split or --calib-data)."),
    calib_file: Path | None = typer.Option(None, "--calib-file", help="Reuse this calib.npz."),
    calib_data: list[str] = typer.Option([], "--calib-data", help="Calibrate on this data root, 'synthetic' or "
                                         "folder of spool tiles instead of the training split (repeatable)."),
    data: str | None = typer.Option(None, "--data", help="Data to check against: synthetic or a dataset root "
                                    "(default: what the checkpoint was trained on)."),
    eval_data: list[str] = typer.Option([], "--eval-data", help="Extra labelled root (repeatable)."),
    eval_limit: int = typer.Option(512, "--eval-limit", help="Most gate patches (validation+test; 0: all)."),
    max_map_drop: float = typer.Option(1.0, "--max-map-drop", help="INT8 gate: max macro-mAP drop, pts."),
    target_agreement: float = typer.Option(0.995, "--target-agreement",
                                           help="INT8 fallback: decision agreement with fp32 to reach."),
    quant_backend: str = typer.Option("onnxruntime", "--quant-backend", help="onnxruntime|modelopt|auto"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (>= 17)."),
    input_form: str = typer.Option("raw", "--input-form", help="raw: artefacts take physical units and "
                                   "standardise in the graph | standardised: the host standardises."),
) -> None:
    """Export a checkpoint to ONNX (+ fp16, + INT8), parity-check it, write report.md and manifest.json."""
    from mosaic_edge.export.pipeline import ExportConfig, run_export

    config = ExportConfig(fp16=fp16, int8=int8, calib_method=calib_method, calib_size=calib_size,
                          calib_file=str(calib_file) if calib_file else None, calib_data=tuple(calib_data),
                          data=data, eval_data=tuple(eval_data), eval_limit=eval_limit or None,
                          max_map_drop_pts=max_map_drop, target_agreement=target_agreement,
                          quant_backend=quant_backend, opset=opset, input_form=input_form)
    result = run_export(checkpoint, out, config, progress=lambda line: typer.echo(line, err=True))
    for line in result.warnings:
        typer.echo(f"warning: {line}", err=True)
    for name, art in result.manifest.artefacts.items():
        typer.echo(f"{out / name}  {art.precision:<4}  target={art.target}")
    typer.echo(f"report: {out / 'report.md'}  manifest: {out / 'manifest.json'}")
# ---- end export --------------------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""
    app.command(name="export")(export)
    register_trt(app)


# ---- build-engine (TensorRT) ----------------------------------------------------------------------------------
def build_engine_cmd(
    model: Path = typer.Argument(..., help="Export directory, an ONNX it lists, or any ONNX with --precision."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Engine (default <onnx>.<precision>.engine)."),
    precision: str | None = typer.Option(None, "--precision",
                                         help="fp32|fp16|int8 (default: the manifest's; required otherwise)."),
    min_batch: int = typer.Option(1, "--min-batch", help="Optimization profile: smallest batch."),
    opt_batch: int = typer.Option(8, "--opt-batch", help="Optimization profile: batch tuned for."),
    max_batch: int = typer.Option(32, "--max-batch", help="Optimization profile: largest batch."),
    workspace_mb: int = typer.Option(1024, "--workspace-mb", help="Builder workspace (Jetson: shared DRAM)."),
    timing_cache: Path | None = typer.Option(None, "--timing-cache", help="Timing cache, read and updated."),
    calib_cache: Path | None = typer.Option(None, "--calib-cache", help="TensorRT < 11: legacy INT8 cache."),
    verbose: bool = typer.Option(False, "--verbose", help="TensorRT log at INFO."),
) -> None:
    """Build a TensorRT engine on this device (writes the engine and <engine>.json with its manifest)."""
    import contextlib

    from mosaic_edge.edge_runtime.cuda_adapter import CudaAdapter, CudaError, open_cuda_adapter
    from mosaic_edge.errors import OptionalDependencyError
    from mosaic_edge.export.trt import build_engine, resolve_artefact, trt_version_of
    from mosaic_edge.optional import require

    art = resolve_artefact(model, precision, calib_cache, trt_version_of(require("tensorrt", extra="trt")))
    engine = out or art.path.with_name(f"{art.path.stem}.{art.precision}.engine")
    cuda: CudaAdapter | None = None
    with contextlib.suppress(OptionalDependencyError, CudaError):  # no bindings / no device: "unknown" GPU
        cuda = open_cuda_adapter()
    try:
        with cuda.current() if cuda is not None else contextlib.nullcontext():  # build in the primary context
            device = cuda.device_info().to_dict() if cuda is not None else None
            m = build_engine(art.path, engine, precision=art.precision, onnx_precision=art.onnx_precision,
                             min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                             workspace_mb=workspace_mb, timing_cache=timing_cache, calib_cache=art.calib_cache,
                             device=device, verbose=verbose)
    finally:
        if cuda is not None:
            cuda.close()
    typer.echo(f"{engine}  TensorRT {m.trt_version}  {m.precision} (from {art.path.name}, {m.onnx_precision})  "
               f"gpu={m.gpu_name}  {m.build_seconds:.1f}s")


def register_trt(app: typer.Typer) -> None:
    """Add ``build-engine``."""
    app.command(name="build-engine")(build_engine_cmd)
