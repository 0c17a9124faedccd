"""Entry point: registers the commands and turns user errors into one line + exit 2."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from ..errors import MaedetError
from . import calibrate_cmd, deploy_cmds, export_cmd, pipeline_cmd, profile_cmd, search_cmd, structure_cmds, worker_cmd
from .common import err_console

app = typer.Typer(
    name="maedet-deploy",
    help="Design detection backbones for a latency budget (MAE-DET zero-shot search) and ship them "
         "as ONNX Runtime / TensorRT engines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(structure_cmds.info)
app.command()(structure_cmds.zoo)
app.command()(search_cmd.search)
app.command()(profile_cmd.profile)
app.command()(export_cmd.export)
app.command()(deploy_cmds.build)
app.command()(deploy_cmds.bench)
app.command()(deploy_cmds.compare)
app.command()(calibrate_cmd.calibrate)
app.command()(pipeline_cmd.pipeline)
app.command()(worker_cmd.worker)


def run() -> None:
    """Console entry: click handles usage errors (exit 2); ours get one line, exit 2."""
    try:
        app()
    except MaedetError as exc:
        err_console.print("[bold red]error:[/]", escape(exc.for_cli()), highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
