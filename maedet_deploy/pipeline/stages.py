"""Resumable stages: a stage whose inputs and settings are unchanged, and whose outputs are still
the files it wrote, is not run again.

Each stage owns `<out>/<name>/`. Its marker, `stage.json`, is written last: the
proof the stage finished. It records a hash of the stage's settings (which
include the content digests of its inputs and of the upstream stages' results)
and the sha256 of every file the stage wrote. A stage is reused only when the
settings hash matches and every recorded file is still there, unchanged;
otherwise its folder is emptied (a killed run's partial files go too) and the
stage runs again.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..atomic import write_text
from ..digest import sha256_file, sha256_json
from ..errors import MaedetError

MARKER = "stage.json"
FORMAT = 3  # bump when a stage's summary changes shape: older markers then never match


@dataclass(frozen=True)
class StageResult:
    name: str
    directory: Path
    data: dict[str, Any]
    reused: bool
    seconds: float
    digest: str               # the stage's result: its summary and its files' hashes

    def path(self, name: str) -> Path:
        return self.directory / name


def settings_hash(settings: dict[str, Any]) -> str:
    return sha256_json({"format": FORMAT, **settings})[:16]


def _output_hashes(directory: Path) -> dict[str, str]:
    return {path.relative_to(directory).as_posix(): sha256_file(path)
            for path in sorted(directory.rglob("*")) if path.is_file() and path.name != MARKER}


def _reusable(directory: Path, digest: str) -> dict[str, Any] | None:
    """The marker when the stage finished with these settings and its files are as it left them."""
    try:
        saved = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("settings_hash") != digest:
        return None
    outputs = saved.get("outputs")
    if not isinstance(outputs, dict) or _output_hashes(directory) != outputs:
        return None
    return saved


def _fresh(directory: Path) -> None:
    try:
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
    except OSError as exc:
        raise MaedetError(f"cannot prepare {directory}: {exc.strerror or exc}") from None


def run_stage(out: Path, name: str, settings: dict[str, Any],
              work: Callable[[Path], dict[str, Any]]) -> StageResult:
    """Run `work(stage_dir)` unless a finished run with the same settings and intact outputs exists.

    `work` returns a JSON-able summary; it is stored in the marker and returned again, unchanged,
    when the stage is reused."""
    directory = Path(out) / name
    digest = settings_hash(settings)
    saved = _reusable(directory, digest)
    if saved is not None:
        return StageResult(name, directory, saved["summary"], True, saved.get("seconds", 0.0),
                           sha256_json([saved["summary"], saved["outputs"]]))
    _fresh(directory)
    started = time.perf_counter()
    summary = work(directory)
    seconds = time.perf_counter() - started
    outputs = _output_hashes(directory)
    write_text(directory / MARKER, json.dumps({"stage": name, "settings": settings, "settings_hash": digest,
                                               "seconds": seconds, "summary": summary, "outputs": outputs},
                                              indent=2, default=str) + "\n")
    return StageResult(name, directory, summary, False, seconds, sha256_json([summary, outputs]))
