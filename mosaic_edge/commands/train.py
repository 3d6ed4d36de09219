"""CLI commands of the train stage: ``train`` and ``evaluate`` (registered on the main app by :func:`register`).

``train``'s options are built from the fields of :class:`~mosaic_edge.train.config.TrainConfig` (name, type,
default and the help in each field's metadata), so the config is the one place for them; the command adds only
``--resume``. Both commands parse options into a library call (:func:`mosaic_edge.train.loop.train`,
:func:`mosaic_edge.train.evaluate.evaluate_checkpoint`); torch is imported inside the command bodies.
Multi-GPU: ``torchrun --nproc_per_node N -m mosaic_edge train ...``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

# Light (no torch): the fields are read, no config is built at import time.
from mosaic_edge.train.config import TrainConfig


def _cli_type(tp: Any) -> Any:
    """The typer annotation of a config field type (tuples of strings become repeatable options)."""
    if typing.get_origin(tp) is tuple:
        return list[typing.get_args(tp)[0]]  # type: ignore[misc]
    return tp


def config_parameters() -> list[inspect.Parameter]:
    """One keyword parameter with a ``typer.Option`` default per :class:`TrainConfig` field."""
    hints = typing.get_type_hints(TrainConfig)
    params = []
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        factory: Any = f.default_factory
        default = f.default if f.default is not dataclasses.MISSING else factory()
        if isinstance(default, tuple):
            default = list(default)
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        decls = [flag, meta["short"]] if "short" in meta else [flag]
        if hints[f.name] is bool:
            decls = [f"{flag}/--no-{flag[2:]}"]
        help_text = meta["help"]
        opt = typer.Option(default, *decls, help=help_text, show_default=True)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt,
                                        annotation=_cli_type(hints[f.name])))
    return params


def _with_config_options(fn: Callable[..., None]) -> Callable[..., None]:
    """Give ``fn(resume, **config_fields)`` a signature typer can read: the config's fields plus ``--resume``."""
    resume = inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY,
                               default=typer.Option(False, "--resume", help="Continue from <out>/last.pt."),
                               annotation=bool)
    params = [*config_parameters(), resume]
    fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    fn.__annotations__ = {p.name: p.annotation for p in params}
    return fn


def config_from_options(options: dict[str, Any]) -> TrainConfig:
    """Build the config from parsed options; a bad value is a :class:`~mosaic_edge.errors.UserError`."""
    from mosaic_edge.errors import UserError

    values = dict(options)
    if values.get("out") is not None:
        values["out"] = str(values["out"])
    values["split_file"] = tuple(values.get("split_file") or ())
    try:
        return TrainConfig(**values)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


@_with_config_options
def train_cmd(resume: bool = False, **options: Any) -> None:
    """Train MoSAiC (contrastive pre-training, heads, fine-tune); write model.pt, contract, metrics, curves."""
    from mosaic_edge.train.loop import train

    cfg = config_from_options(options)
    result = train(cfg, resume=resume)
    if not result.metrics:  # non-zero torchrun rank
        return
    test = result.metrics["test"]
    typer.echo(
        f"test macro mAP {test['macro_map']:.4f}  micro mAP {test['micro_map']:.4f}  "
        f"macro F1 {test['macro_f1']:.4f}  silhouette (encoder features) {test['silhouette_features']:.4f}"
    )
    for name in ("model.pt", "contract.json", "metrics.jsonl", "curves.png"):
        typer.echo(f"wrote {result.out_dir / name}")


def evaluate_cmd(
    checkpoint: Path = typer.Argument(..., help="model.pt written by `mosaic-edge train`."),
    data: str | None = typer.Option(
        None, "--data", help="Data to evaluate on (default: what it was trained on)."
    ),
    split: str = typer.Option("test", "--split", help="train | validation | test."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Evaluate a checkpoint: micro/macro mAP, F1 at the contract thresholds, per-class AP, silhouette."""
    from mosaic_edge.train.evaluate import evaluate_checkpoint, format_table

    res = evaluate_checkpoint(checkpoint, data=data, split=split, device=device)
    if json_out:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in res.items()}
        typer.echo(json.dumps(clean, sort_keys=True))
    else:
        typer.echo(format_table(res))


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""
    app.command(name="train")(train_cmd)
    app.command(name="evaluate")(evaluate_cmd)
