"""The zoo: a registry of named structures shipped as package data (timm's idea:
names map to architectures, one lookup, no if/else over names)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from ..errors import MaedetError
from ..structure import Structure, load_structure, structure_from_data


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    structure: Structure


@cache
def _registry() -> dict[str, ZooEntry]:
    entries = {}
    for item in sorted(resources.files(__package__).joinpath("structures").iterdir(), key=lambda p: p.name):
        if item.name.endswith(".json"):
            data = json.loads(item.read_text(encoding="utf-8"))
            entries[data["name"]] = ZooEntry(data["name"], data["description"],
                                             structure_from_data(data, item.name))
    return entries


def list_structures() -> list[ZooEntry]:
    return list(_registry().values())


def get_structure(name: str) -> Structure:
    try:
        return _registry()[name].structure
    except KeyError:
        raise MaedetError(f"unknown zoo structure {name!r} (known: {', '.join(_registry())})") from None


def resolve_structure(spec: str | Path | Structure) -> Structure:
    """A zoo name, a structure file path, or a Structure itself."""
    if isinstance(spec, Structure):
        return spec
    if isinstance(spec, str) and spec in _registry():
        return _registry()[spec].structure
    path = Path(spec)
    if not path.exists():
        raise MaedetError(f"{spec!r} is neither a zoo name ({', '.join(_registry())}) nor an existing file")
    return load_structure(path)
