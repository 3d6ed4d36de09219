"""CLI commands of the data stage: ``synth`` and ``pack`` (registered on the main app by :func:`register`)."""

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


def pack(
    data: str = typer.Argument(..., help="A BigEarthNet v2 root, a SEN12MS root, or 'synthetic'."),
    out: Path = typer.Option(..., "--out", "-o", help="Store folder (created; an unfinished one is resumed)."),
    workers: int | None = typer.Option(None, "--workers", "-j", help="Worker processes (default: all CPUs)."),
    splits: str = typer.Option("train,validation,test", "--splits", help="Comma-separated splits to pack."),
    chunk_size: int = typer.Option(128, "--chunk-size", help="Patches per work item (the unit of resumption)."),
    label_threshold: float | None = typer.Option(
        None, "--label-threshold", help="SEN12MS: area fraction from which a class is a label (default 0.1)."
    ),
    split_file: list[str] = typer.Option(
        [], "--split-file", help="SEN12MS: SPLIT=PATH (a toolbox list, e.g. test=SEN12MS_holdOutScenes.txt) or a "
        "key,split CSV; repeatable."
    ),
    include_snow_cloud: bool = typer.Option(
        False, "--include-snow-cloud", help="BigEarthNet v2: also pack the snowy/cloudy pairs."
    ),
    n_train: int = typer.Option(2000, "--n-train", help="synthetic: train patches."),
    n_val: int = typer.Option(500, "--n-val", help="synthetic: validation patches."),
    n_test: int = typer.Option(500, "--n-test", help="synthetic: test patches."),
    patch_size: int = typer.Option(120, "--patch-size", help="synthetic: patch size (multiple of 6)."),
    seed: int = typer.Option(0, "--seed", help="synthetic: master seed."),
) -> None:
    """Convert a dataset into a memory-mapped training store (parallel, resumable; skipped patches reported)."""
    from mosaic_edge.data.pack import pack_dataset
    from mosaic_edge.data.sources import SYNTHETIC, DataSpec, reader_options
    from mosaic_edge.errors import UserError

    if data == SYNTHETIC:
        from dataclasses import asdict

        from mosaic_edge.data.synthetic import SyntheticConfig

        if label_threshold is not None or split_file or include_snow_cloud:
            raise UserError("--label-threshold, --split-file and --include-snow-cloud do not apply to synthetic "
                            "data")
        config = SyntheticConfig(seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, patch_size=patch_size)
        spec = DataSpec(SYNTHETIC, asdict(config))
    else:
        options = reader_options(data, label_threshold, split_file, include_snow_cloud)
        spec = DataSpec(str(Path(data).resolve()), options)
    summary = pack_dataset(spec, out, workers, tuple(s.strip() for s in splits.split(",") if s.strip()),
                           chunk_size)
    typer.echo(("already complete: " if summary.already_complete else "") + summary.line())


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""
    app.command(name="synth")(synth)
    app.command(name="pack")(pack)
