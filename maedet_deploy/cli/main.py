"""Entry point: registers the commands and turns user errors into one line + exit 2."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from ..errors import MaedetError
from . import calibrate_cmd, deploy_cmds, export_cmd, pipeline_cmd, profile_cmd, search_cmd, structure_cmds
from .common import command_help, err_console, usual_metavars

app = typer.Typer(
    name="maedet-deploy",
    help="Design detection backbones for a latency budget (MAE-DET zero-shot search) and ship them "
         "as ONNX Runtime / TensorRT engines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (structure_cmds.info, structure_cmds.zoo, search_cmd.search, profile_cmd.profile, export_cmd.export,
                deploy_cmds.build, deploy_cmds.bench, deploy_cmds.compare, calibrate_cmd.calibrate,
                pipeline_cmd.pipeline):
    app.command(help=command_help(command))(command)


def run() -> None:
    """Console entry: click handles usage errors (exit 2); ours get one line, exit 2."""
    try:
        usual_metavars(typer.main.get_command(app))()
    except MaedetError as exc:
        err_console.print("[bold red]error:[/]", escape(exc.for_cli()), highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
