"""What every command shares: the console, JSON printing, option parsing helpers, and how help
text and option types are shown."""

from __future__ import annotations

import inspect
import json
import sys
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console

from ..errors import MaedetError
from ..format import human  # noqa: F401  (re-exported for the commands)

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no rich markup), so it pipes into jq."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def parse_image_size(text: str) -> tuple[int, int]:
    """`480` or `480x640` (height x width), as (height, width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise MaedetError(f"must look like 480 or 480x640, got {text!r}", "image_size")
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def format_image_size(size: tuple[int, int]) -> str:
    """The inverse of `parse_image_size`: '480' for a square, else 'HxW'."""
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def command_help(command: Callable) -> str:
    """A command's docstring as help text. Typer keeps a docstring's line breaks, so a paragraph
    wrapped in the source would be wrapped again by the terminal mid-sentence: a paragraph's lines
    are joined and the terminal wraps it; a paragraph whose lines are all indented (example
    commands) keeps its lines."""
    paragraphs = []
    for paragraph in inspect.cleandoc(command.__doc__ or "").split("\n\n"):
        lines = paragraph.splitlines()
        indented = all(line.startswith(" ") for line in lines)
        paragraphs.append(paragraph if indented else " ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


_USUAL_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "bool": ""}


def _usual_type(shown: str) -> str:
    """`<int>` -> INTEGER, `<list[str]>` -> TEXT (a repeatable option), `<bool>` -> nothing."""
    label = shown.strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    return _USUAL_TYPES.get(label, label.upper())


def usual_metavars(command: Any) -> Any:
    """Show option types as click and typer always did (TEXT, INTEGER, FLOAT, PATH; nothing for an
    on/off flag) where typer >= 0.2x shows `<str>`, `<bool>`. Older typer already does: untouched."""
    for sub in getattr(command, "commands", {}).values():
        usual_metavars(sub)
    context = typer.Context(command)
    for param in command.get_params(context):  # with the help option

        shown = getattr(param, "display_type", None)
        if shown is None or param.metavar is not None:
            continue
        usual = "" if getattr(param, "is_flag", False) else _usual_type(shown(context))
        if param.param_type_name == "option":
            param.metavar = usual
        else:  # an argument's metavar would replace its name: replace only the type shown
            param.display_type_rich = lambda ctx, usual=usual: usual
    return command


# Options shared by every command that measures latency (search, profile, pipeline).
LatencyCacheOption = Annotated[Optional[str], typer.Option(
    help="Latency cache (SQLite); default $MAEDET_LATENCY_CACHE or ~/.cache/maedet-deploy/latency.sqlite.")]
LatencyThreadsOption = Annotated[Optional[int], typer.Option(
    help="ONNX Runtime intra-op threads for latency (default: one per usable physical core).")]
QuietWaitOption = Annotated[float, typer.Option(
    help="Extra seconds a batch of measurements spends on visits in which no other program takes CPU time, "
         "for the things still short of them (0: never wait).")]
RoundOption = Annotated[float, typer.Option(
    help="Seconds each visit times a thing for (at least 3 calls; 5 visits, the lowest median kept). Shorter "
         "rounds measure faster and noisier.")]
VerifyTopOption = Annotated[int, typer.Option(
    help="Best candidates measured whole at the end of the search; the winner is the best-scoring one within the "
         "budget.")]
LatencyCheckEveryOption = Annotated[int, typer.Option(
    help="Search batches between guard checks (the best members measured whole, predictor corrected).")]
WalksOption = Annotated[int, typer.Option(
    help="Mutation walks from the seed the latency predictor is fitted on, each measured whole and block by block.")]
FarmOption = Annotated[Optional[str], typer.Option(
    metavar="HOST:PORT",
    help="Measure latency on the Ray device farm whose head is at this address (devices join it with "
         "`maedet-deploy worker`; needs the [farm] extra); default: on this machine.")]
DeviceOption = Annotated[Optional[str], typer.Option(
    help="Which device kind of the --farm measures, when it holds several (their names as `worker --device` gave "
         "them).")]
