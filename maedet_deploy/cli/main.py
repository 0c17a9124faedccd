"""Entry point: registers the commands and turns user errors into one line + exit 2."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from ..errors import MaedetError
from . import (calibrate_cmd, deploy_cmds, export_cmd, pipeline_cmd, profile_cmd, search_cmd, structure_cmds,
               worker_cmd)
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
                pipeline_cmd.pipeline, worker_cmd.worker):
    app.command(help=command_help(command))(command)


def run() -> None:
    """Console entry. Every error the user can fix, ours and click's usage errors alike, is one line
    on stderr and exit code 2; anything else is a bug and keeps its traceback."""
    try:
        code = usual_metavars(typer.main.get_command(app)).main(standalone_mode=False)
    except MaedetError as exc:
        _error(exc.for_cli())
        sys.exit(2)
    except Exception as exc:
        if _kind(exc) == "Abort":
            _error("aborted")
            sys.exit(1)
        if _kind(exc) != "ClickException":
            raise
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            hint = f" (see {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) is not None else ""
            _error(f"{exc.format_message()}{hint}")
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _kind(exc: Exception) -> str | None:
    """Click's usage errors and aborts, by class name: typer >= 0.26 vendors click, older typer uses
    the click package, so neither module's classes can be imported for every version."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return next((name for name in ("ClickException", "Abort") if name in names), None)


def _error(message: str) -> None:
    err_console.print("[bold red]error:[/]", escape(" ".join(message.split())), highlight=False, soft_wrap=True)


if __name__ == "__main__":
    run()
