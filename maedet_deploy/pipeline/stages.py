"""Resumable stages: a stage whose outputs exist and whose settings are unchanged
is not run again.

Each stage writes `<out>/<name>/stage.json` last, after its outputs, holding a
hash of the settings it ran with; the marker is the proof the stage finished.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..atomic import write_text

MARKER = "stage.json"
FORMAT = 2  # bump when a stage's summary changes shape: older markers then never match


@dataclass(frozen=True)
class StageResult:
    name: str
    directory: Path
    data: dict[str, Any]
    reused: bool
    seconds: float


def settings_hash(settings: dict[str, Any]) -> str:
    text = json.dumps({"format": FORMAT, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_stage(out: Path, name: str, settings: dict[str, Any],
              work: Callable[[Path], dict[str, Any]]) -> StageResult:
    """Run `work(stage_dir)` unless a finished run with the same settings exists.

    `work` returns a JSON-able summary; it is stored in the marker and returned
    again, unchanged, when the stage is reused."""
    directory = Path(out) / name
    marker = directory / MARKER
    digest = settings_hash(settings)
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            saved = {}
        if saved.get("settings_hash") == digest:
            return StageResult(name, directory, saved["summary"], True, saved.get("seconds", 0.0))
    directory.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    started = time.perf_counter()
    summary = work(directory)
    seconds = time.perf_counter() - started
    write_text(marker, json.dumps({"stage": name, "settings": settings, "settings_hash": digest,
                                   "seconds": seconds, "summary": summary}, indent=2, default=str) + "\n")
    return StageResult(name, directory, summary, False, seconds)
