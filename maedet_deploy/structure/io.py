"""Reading and writing structures: our JSON, and the reference tool's literal text.

The reference writes `{'best_structures': [[{...}, ...]], 'space_arch': 'CnnNet'}`
as a Python literal; it is parsed with `ast.literal_eval`, which accepts
literals only and never executes code.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

from ..atomic import write_text
from .blocks import Structure, StructureError
from .limits import Limits, check_block_count, check_file_size, check_structure, check_text

FORMAT = "maedet-structure/1"


def parse_structure(text: str, source: str = "structure") -> Structure:
    """Parse JSON (ours, or a bare list of blocks) or the reference's literal format. The text's size
    and nesting are checked first, and the structure's sizes after (see `limits`)."""
    check_text(text, source)
    try:
        data: Any = json.loads(text)
    except ValueError as json_error:  # JSONDecodeError, or an integer too long to convert
        try:
            data = ast.literal_eval(text.strip())
        except Exception:  # literal_eval raises ValueError, TypeError, SyntaxError, MemoryError, ...
            where = (f"line {json_error.lineno}: {json_error.msg}" if isinstance(json_error, json.JSONDecodeError)
                     else str(json_error).splitlines()[0])
            raise StructureError(f"{source}: not JSON ({where}) nor the reference tool's literal format") from None
    return structure_from_data(data, source)


def structure_from_data(data: Any, source: str = "structure") -> Structure:
    """A checked Structure from parsed data: blocks valid, sizes within `Limits.from_env()`."""
    if isinstance(data, dict):
        if "blocks" in data:
            data = data["blocks"]
        elif "best_structures" in data:
            best = data["best_structures"]
            if not isinstance(best, (list, tuple)) or not best:
                raise StructureError(f"{source}: 'best_structures' must be a non-empty list")
            data = best[0]
        else:
            raise StructureError(f"{source}: expected a 'blocks' or 'best_structures' key")
    if not isinstance(data, (list, tuple)):
        raise StructureError(f"{source}: expected a list of blocks, got {type(data).__name__}")
    limits = Limits.from_env()
    check_block_count(len(data), source, limits)
    try:
        structure = Structure.from_dicts(data)
        check_structure(structure, limits)
    except StructureError as exc:
        raise StructureError(f"{source}: {exc}") from None
    return structure


def load_structure(path: str | os.PathLike) -> Structure:
    path = Path(path)
    try:
        check_file_size(path.stat().st_size, str(path))
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StructureError(f"cannot read structure {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_structure(text, source=str(path))


def structure_to_json(structure: Structure, **extra: Any) -> str:
    payload = {"format": FORMAT, **extra, "blocks": structure.to_dicts()}
    return json.dumps(payload, indent=2) + "\n"


def structure_to_reference_text(structure: Structure) -> str:
    """The reference tool's text format, so its tooling can read our results."""
    rows = ",\n    ".join(repr(block) for block in structure.to_dicts())
    return f"{{'best_structures': [[\n    {rows}]],\n 'space_arch': 'CnnNet'}}\n"


def save_structure(path: str | os.PathLike, structure: Structure, **extra: Any) -> None:
    text = (structure_to_reference_text(structure) if str(path).endswith(".txt")
            else structure_to_json(structure, **extra))
    write_text(path, text)
