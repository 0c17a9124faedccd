"""What every command shares: the console, JSON printing, option parsing helpers."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer

from rich.console import Console

from ..errors import MaedetError
from ..format import human  # noqa: F401  (re-exported for the commands)

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no rich markup), so it pipes into jq."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def parse_image_size(text: str) -> int | tuple[int, int]:
    """`480` or `480x640` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise MaedetError(f"image size must look like 480 or 480x640, got {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise MaedetError(f"image size must look like 480 or 480x640, got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


# Options shared by every command that measures latency (search, profile, pipeline).
LatencyCacheOption = Annotated[Optional[str], typer.Option(
    help="Latency cache (SQLite); default $MAEDET_LATENCY_CACHE or ~/.cache/maedet-deploy/latency.sqlite.")]
LatencyThreadsOption = Annotated[Optional[int], typer.Option(
    help="ONNX Runtime intra-op threads for latency (default: one per usable physical core).")]
QuietWaitOption = Annotated[float, typer.Option(
    help="Extra seconds a batch of measurements spends on visits in which no other program takes CPU time, "
         "for the things still short of them (0: never wait).")]
