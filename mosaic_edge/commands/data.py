"""CLI commands of the data stage (registered on the main app by :func:`register`)."""

from __future__ import annotations

from pathlib import Path

import typer


def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (official BigEarthNet v2 layout)."),
    seed: int = typer.Option(0, "--seed", help="Master seed of the synthetic benchmark."),
    n_train: int = typer.Option(2000, "--n-train", help="Train patches."),
    n_val: int = typer.Option(500, "--n-val", help="Validation patches."),
    n_test: int = typer.Option(500, "--n-test", help="Test patches."),
    cloud_fraction: float = typer.Option(0.4, "--cloud-fraction", help="Fraction of S2 patches with clouds."),
) -> None:
    """Write the synthetic MoSAiC benchmark as BigEarthNet v2 files (tiffs + metadata.parquet)."""
    from mosaic_edge.data.synthetic import SyntheticConfig, write_benv2_layout

    config = SyntheticConfig(
        seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, cloud_fraction=cloud_fraction
    )
    root = write_benv2_layout(config, out)
    typer.echo(f"wrote {n_train + n_val + n_test} synthetic pairs to {root} (seed={seed})")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""
    app.command(name="synth")(synth)
