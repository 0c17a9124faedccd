"""What the measurer is asked to time: a block at its input size, or a whole network in a scope,
each named by a cache item that is the same in every process and on every device."""

from __future__ import annotations

import hashlib
import json
from typing import NamedTuple, Sequence

from ..structure import Block, Structure

NECK_CHANNELS = 128      # the detector's PAN width (export_structure_onnx's default), fixed across candidates
YARDSTICKS = (("maedet-seed", 224), ("maedet-seed", 160))   # zoo backbones timed beside every CPU window


class Request(NamedTuple):
    """One thing to measure: its cache item, and what to export."""

    item: str
    structure: Structure
    image_size: tuple[int, int]
    scope: str


def block_item(block: Block, height: int, width: int) -> str:
    return "block:" + ":".join(str(v) for v in block.key()) + f"@{height}x{width}"


def network_item(structure: Structure, scope: str, image_size: tuple[int, int]) -> str:
    digest = hashlib.sha256(json.dumps(structure.to_dicts(), sort_keys=True).encode()).hexdigest()[:20]
    return f"{scope}:{digest}@{image_size[0]}x{image_size[1]}"


def block_requests(placed: Sequence[tuple[Block, int, int]]) -> list[Request]:
    return [Request(block_item(b, h, w), Structure((b,)), (h, w), "backbone") for b, h, w in placed]


def network_requests(structures: Sequence[Structure], image_size: tuple[int, int], scope: str) -> list[Request]:
    return [Request(network_item(s, scope, image_size), s, image_size, scope) for s in structures]


def yardstick_requests() -> list[Request]:
    """The fixed networks whose latency, timed in every window beside its things, tells how fast the
    host runs at the moment (see `window`); their own items never collide with a search's."""
    from ..zoo import get_structure

    out = []
    for name, size in YARDSTICKS:
        structure = get_structure(name)
        out.append(Request("yardstick:" + network_item(structure, "backbone", (size, size)), structure, (size, size),
                           "backbone"))
    return out
