"""The ``mosaic-edge`` command line (typer).

Each command parses options and calls one library function (STYLE.md #1); heavy packages (torch, onnx,
tensorrt) are imported inside the command bodies so ``mosaic-edge --help`` works with only the core installed.
User errors print one line and exit 2.
"""

from __future__ import annotations

import sys

import typer

from mosaic_edge.commands import data as data_cmds
from mosaic_edge.commands import export as export_cmds
from mosaic_edge.commands import profile as profile_cmds
from mosaic_edge.commands import runtime as runtime_cmds
from mosaic_edge.commands import train as train_cmds
from mosaic_edge.errors import UserError

app = typer.Typer(
    name="mosaic-edge",
    help="MoSAiC (S1 SAR + S2 optical, multi-label contrastive): train, export to ONNX/INT8 TensorRT, serve on Jetson.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """MoSAiC edge pipeline: train -> export (ONNX, fp16, INT8) -> serve on Jetson -> profile."""


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Print what is installed and usable: Python, numpy, torch/CUDA, onnx, ORT providers, TensorRT, GPU, Jetson."""
    from mosaic_edge.doctor import collect, render

    info = collect()
    typer.echo(render(info, as_json=json_out))


for _module in (data_cmds, train_cmds, export_cmds, runtime_cmds, profile_cmds):
    _module.register(app)

_USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line on stderr and exit code 2."""
    try:
        app(args=argv, prog_name="mosaic-edge")
    except _USER_ERRORS as exc:
        typer.echo(f"mosaic-edge: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
