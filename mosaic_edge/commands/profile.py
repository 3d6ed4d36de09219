"""CLI commands of the profile stage (registered on the main app by :func:`register`)."""

from __future__ import annotations

from pathlib import Path

import typer


def _ints(text: str) -> tuple[int, ...]:
    from mosaic_edge.errors import UserError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise UserError(f"--batch wants comma-separated integers like 1,4,16, got {text!r}") from exc


def profile(
    model: Path = typer.Argument(..., help="Export directory (manifest.json) or one .onnx file."),
    runner: str = typer.Option("ort", "--runner", help="trt, ort or auto."),
    batch: str = typer.Option("1,4,16", "--batch", help="Batch sizes (tiles) to sweep, comma-separated."),
    precision: str = typer.Option("fp32", "--precision",
                                  help="Artefact precisions side by side, e.g. fp32,fp16,int8."),
    iterations: int = typer.Option(50, "--iterations", help="Timed batches per configuration."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed batches before timing."),
    rounds: int = typer.Option(5, "--rounds", help="Interleave the configurations in this many rounds."),
    tiles: Path | None = typer.Option(None, "--tiles", help="Folder of tiles (default: synthetic)."),
    threads: int | None = typer.Option(None, "--threads", help="ONNX Runtime intra-op threads."),
    out: Path = typer.Option(Path("profile"), "--out", help="Writes profile.json and profile.png here."),
    fallback: bool = typer.Option(True, "--fallback/--no-fallback",
                                  help="Also measure INT8 with its borderline fallback (share re-run, cost)."),
    fallback_margin: float | None = typer.Option(None, "--fallback-margin",
                                                 help="Fallback margin in logits (default: the export's policy)."),
) -> None:
    """Per-stage latency (p50 and p10-p90) and throughput of the runtime, per precision and batch size."""
    from mosaic_edge.edge_runtime.profile_run import ProfileConfig, profile_to_dir

    config = ProfileConfig(model=model, runner=runner, batches=_ints(batch),
                           precisions=tuple(p.strip() for p in precision.split(",") if p.strip()),
                           iterations=iterations, warmup=warmup, rounds=rounds, tiles=tiles, threads=threads,
                           fallback=fallback, fallback_margin=fallback_margin)
    _doc, table = profile_to_dir(config, out)
    typer.echo(table)
    typer.echo(f"wrote {out / 'profile.json'}")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""
    app.command(name="profile")(profile)
