"""The architecture description: an immutable, validated list of blocks.

A structure is data, not a torch module: search mutates it thousands of times
per second, the cost model and the score read it, and `models` builds modules
from it. Field names in JSON follow the reference tool (`class`, `in`, `out`,
`s`, `k`, `L`, `btn`) so its results load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable

from ..errors import MaedetError

STEM = "ConvKXBNRELU"
K1KXK1 = "SuperResK1KXK1"
KXKX = "SuperResKXKX"
K1DWK1 = "SuperResK1DWK1"
BLOCK_TYPES = (STEM, K1KXK1, KXKX, K1DWK1)
SUPER_TYPES = (K1KXK1, KXKX, K1DWK1)

# Conv layers per residual unit, as the reference counts them.
CONVS_PER_UNIT = {STEM: 1, K1KXK1: 3, KXKX: 2, K1DWK1: 3}

MIN_BTN = 8


class StructureError(MaedetError):
    """A structure that cannot describe a network; the message names block and field."""


@dataclass(frozen=True, slots=True)
class Block:
    """One block. `depth` (L) and `btn` are 1 and 0 for the single-conv stem."""

    kind: str
    cin: int
    cout: int
    stride: int
    kernel: int
    depth: int = 1
    btn: int = 0

    @property
    def is_super(self) -> bool:
        return self.kind != STEM

    @property
    def layers(self) -> int:
        return CONVS_PER_UNIT[self.kind] * self.depth

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"class": self.kind, "in": self.cin, "out": self.cout,
                                "s": self.stride, "k": self.kernel}
        if self.is_super:
            data.update(L=self.depth, btn=self.btn)
        return data

    def key(self) -> tuple:
        return (self.kind, self.cin, self.cout, self.stride, self.kernel, self.depth, self.btn)


def _check_block(index: int, block: Block) -> None:
    def fail(field: str, value: Any, rule: str) -> None:
        raise StructureError(f"block {index} ({block.kind}): {field}={value} {rule}")

    if block.kind not in BLOCK_TYPES:
        raise StructureError(f"block {index}: unknown class {short_repr(block.kind)} (known: {', '.join(BLOCK_TYPES)})")
    for field in ("cin", "cout", "stride", "kernel", "depth", "btn"):
        if type(getattr(block, field)) is not int:
            fail(_JSON_NAME[field], short_repr(getattr(block, field)), "must be an integer")
    if block.cin < 1:
        fail("in", block.cin, "must be >= 1")
    if block.cout < 1:
        fail("out", block.cout, "must be >= 1")
    if block.stride not in (1, 2):
        fail("s", block.stride, "must be 1 or 2")
    if block.kernel < 1 or block.kernel % 2 == 0:
        fail("k", block.kernel, "must be an odd number >= 1")
    if block.is_super:
        if block.depth < 1:
            fail("L", block.depth, "must be >= 1")
        if block.btn < MIN_BTN:
            fail("btn", block.btn, f"must be >= {MIN_BTN}")
    elif block.depth != 1 or block.btn != 0:
        fail("L/btn", f"{block.depth}/{block.btn}", "are not fields of the stem block")


def short_repr(value: Any, limit: int = 40) -> str:
    """A value from user data, quoted for a one-line message (never pages of it)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


_JSON_NAME = {"kind": "class", "cin": "in", "cout": "out", "stride": "s", "kernel": "k", "depth": "L", "btn": "btn"}


@dataclass(frozen=True, slots=True)
class Structure:
    """A backbone: blocks in network order, stem first, channels chained."""

    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        if not self.blocks:
            raise StructureError("structure has no blocks")
        for index, block in enumerate(self.blocks):
            _check_block(index, block)
            if index and block.cin != self.blocks[index - 1].cout:
                raise StructureError(
                    f"block {index} ({block.kind}): in={block.cin} must equal the previous block's out="
                    f"{self.blocks[index - 1].cout}")

    @classmethod
    def from_dicts(cls, items: Iterable[dict[str, Any]]) -> "Structure":
        return cls(tuple(block_from_dict(i, item) for i, item in enumerate(items)))

    def to_dicts(self) -> list[dict[str, Any]]:
        return [block.to_dict() for block in self.blocks]

    def key(self) -> tuple:
        """Canonical hashable identity, used to dedupe search candidates."""
        return tuple(block.key() for block in self.blocks)

    @property
    def layers(self) -> int:
        return sum(block.layers for block in self.blocks)

    def with_block(self, index: int, **changes: Any) -> "Structure":
        blocks = list(self.blocks)
        blocks[index] = replace(blocks[index], **changes)
        return Structure(tuple(blocks))


def block_from_dict(index: int, item: Any) -> Block:
    """Read one block in the reference tool's dict form; unknown keys other than
    the reference's bookkeeping ones are refused so typos do not pass silently."""
    if not isinstance(item, dict):
        raise StructureError(f"block {index}: expected an object, got {type(item).__name__}")
    allowed = {"class", "in", "out", "s", "k", "L", "btn", "inner_class"}
    unknown = sorted(short_repr(key) for key in set(item) - allowed)
    if unknown:
        raise StructureError(f"block {index}: unknown field(s) {', '.join(unknown)}")
    for field in ("class", "in", "out", "s", "k"):
        if field not in item:
            raise StructureError(f"block {index}: missing field {field!r}")
    kind = item["class"]
    is_super = kind in SUPER_TYPES
    if is_super:
        for field in ("L", "btn"):
            if field not in item:
                raise StructureError(f"block {index} ({kind}): missing field {field!r}")
    block = Block(kind=kind, cin=item["in"], cout=item["out"], stride=item["s"], kernel=item["k"],
                  depth=item.get("L", 1), btn=item.get("btn", 0))
    _check_block(index, block)
    return block
