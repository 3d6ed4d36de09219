"""CLI commands of the runtime stage: ``serve`` (the spool daemon) and ``predict`` (one-shot).

Both open a runner with :func:`mosaic_edge.edge_runtime.runner.open_runner` and share the per-tile pipeline;
heavy imports happen inside the command bodies.
"""

from __future__ import annotations

from pathlib import Path

import typer

FALLBACK_HELP = ("INT8 only: re-run borderline and drifted windows with the export's fp16 (TensorRT) or fp32 "
                 "(ONNX Runtime) artefact before the tile is committed (default: on when there is one).")
MARGIN_HELP = "Fallback margin in logits around each class threshold (default: the export's policy)."


def serve(
    model: Path = typer.Option(..., "--model", help="Export directory (manifest.json) or an .onnx file."),
    spool: Path = typer.Option(..., "--spool", help="Spool dir (incoming/ done/ failed/ results/)."),
    runner: str = typer.Option("auto", "--runner", help="auto | trt | ort"),
    precision: str = typer.Option(None, "--precision", help="fp32 | fp16 | int8 (default: fp32 on ORT)."),
    batch: int = typer.Option(8, "--batch", help="Most patches per inference batch."),
    max_wait_ms: float = typer.Option(50.0, "--max-wait-ms", help="Longest wait to fill a batch."),
    metrics_port: int = typer.Option(None, "--metrics-port", help="Serve /metrics and /healthz here."),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host", help="Address to bind."),
    settle_s: float = typer.Option(2.0, "--settle-s", help="Take unmarked tiles after this quiet time."),
    partner_timeout_s: float = typer.Option(60.0, "--partner-timeout-s",
                                            help="Wait this long for a missing S1/S2 partner file."),
    poll_s: float = typer.Option(1.0, "--poll-s", help="Rescan interval (inotify wakes earlier)."),
    stride: int = typer.Option(None, "--stride", help="Patch stride (default: patch size)."),
    threads: int = typer.Option(None, "--threads", help="ONNX Runtime intra-op threads (default: usable cores)."),
    readers: int = typer.Option(None, "--readers", help="Tiles read at once (default: half the cores, 1-4)."),
    engine_dir: Path = typer.Option(None, "--engine-dir", envvar="MOSAIC_EDGE_ENGINE_DIR",
                                    help="TensorRT engine cache (default ~/.cache/mosaic-edge/engines)."),
    once: bool = typer.Option(False, "--once", help="Process what is in incoming/ and exit."),
    stall_s: float = typer.Option(300.0, "--stall-s", help="Unhealthy (/healthz 503, no systemd watchdog "
                                  "ping) when tiles wait this long without progress."),
    log_level: str = typer.Option("info", "--log-level"),
    fallback: bool = typer.Option(True, "--fallback/--no-fallback", help=FALLBACK_HELP),
    fallback_margin: float = typer.Option(None, "--fallback-margin", help=MARGIN_HELP),
) -> None:
    """Watch a spool directory and classify incoming S1/S2 tiles (results/<tile>.jsonl, .geojson)."""
    from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig
    from mosaic_edge.edge_runtime.logs import setup_logging
    from mosaic_edge.edge_runtime.runner import open_runner
    from mosaic_edge.edge_runtime.safety import open_safety_net

    setup_logging(log_level)
    config = ServeConfig(batch=batch, max_wait_ms=max_wait_ms, settle_s=settle_s,
                         partner_timeout_s=partner_timeout_s, poll_s=poll_s, stride=stride, once=once,
                         metrics_port=metrics_port, metrics_host=metrics_host, stall_s=stall_s, readers=readers)
    trt_options = {"engine_dir": engine_dir} if engine_dir and runner != "ort" else {}
    r = open_runner(model, kind=runner, precision=precision, threads=threads, **trt_options)
    net = open_safety_net(model, r, fallback, fallback_margin, threads, **trt_options)
    raise typer.Exit(Daemon(r, spool, config, safety=net).run())


def predict(
    files: list[Path] = typer.Argument(..., help="Tiles: .npz files or tile folders."),
    model: Path = typer.Option(..., "--model", help="Export directory (manifest.json) or an .onnx file."),
    out: Path = typer.Option(None, "--out", help="Write JSON Lines here instead of stdout."),
    runner: str = typer.Option("auto", "--runner", help="auto | trt | ort"),
    precision: str = typer.Option(None, "--precision", help="fp32 | fp16 | int8"),
    batch: int = typer.Option(8, "--batch"),
    stride: int = typer.Option(None, "--stride"),
    threads: int = typer.Option(None, "--threads"),
    fallback: bool = typer.Option(True, "--fallback/--no-fallback", help=FALLBACK_HELP),
    fallback_margin: float = typer.Option(None, "--fallback-margin", help=MARGIN_HELP),
) -> None:
    """Classify tiles once and print JSON Lines (same pipeline as serve); exit 1 if any tile failed."""
    import sys

    from mosaic_edge.edge_runtime.pipeline import predict_paths
    from mosaic_edge.edge_runtime.postprocess import to_jsonl
    from mosaic_edge.edge_runtime.runner import open_runner
    from mosaic_edge.edge_runtime.safety import Reruns, open_safety_net

    failed = 0
    sink = open(out, "wb") if out else sys.stdout.buffer  # noqa: SIM115 - closed below
    try:
        with open_runner(model, kind=runner, precision=precision, threads=threads) as r:
            net = open_safety_net(model, r, fallback, fallback_margin, threads)
            reruns = Reruns(net, batch)
            with net:
                for path, records, error in predict_paths(r, files, batch=batch, stride=stride, net=net,
                                                          reruns=reruns):
                    if error is not None:
                        failed += 1
                        typer.echo(f"mosaic-edge: {path}: {error}", err=True)
                    else:
                        sink.write(to_jsonl(records or []))
                        sink.flush()
            if net.envelope is not None or net.fallback:
                typer.echo(f"mosaic-edge: {reruns.summary()}", err=True)
    finally:
        if out:
            sink.close()
    raise typer.Exit(1 if failed else 0)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""
    app.command(name="serve")(serve)
    app.command(name="predict")(predict)
