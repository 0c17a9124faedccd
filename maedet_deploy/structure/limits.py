"""Sanity limits: what a structure, its file and its input size may ask for.

A structure is user data. Without limits, `out: 10**12` reaches the allocator,
`L: 10**9` builds modules for hours, a file nested 10**5 deep overflows the
parser's stack and an image size of 200000 asks for terabytes. Every limit here
is far beyond any real detector (ResNet-50: 25M parameters, 2048 channels, 91
conv layers), and each refusal names the block and field or the total. The
totals are configurable: MAEDET_MAX_PARAMS and MAEDET_MAX_FLOPS in the
environment, or a `Limits` passed in.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from ..errors import MaedetError
from ..format import human
from ..memory import check_memory
from .blocks import Structure, StructureError
from .cost import Cost, ImageSize, as_hw, compute_cost

BYTES_PER_VALUE = 4          # fp32 activations
ACTIVATION_COPIES = 3        # a layer's input and output, plus the exporter's / runtime's own copy
_BRACKETS = re.compile(r"""["'\[\]{}()]""")


@dataclass(frozen=True)
class Limits:
    channels: int = 65_536       # in, out and btn of one block
    depth: int = 1_000           # L: residual units in one block
    kernel: int = 63             # k; the search's kernel caps stop at 63 too
    blocks: int = 1_000
    layers: int = 10_000         # conv layers in all
    params: int = 10**10         # MAEDET_MAX_PARAMS
    flops: int = 10**14          # MACs at the input size; MAEDET_MAX_FLOPS
    text_bytes: int = 1 << 20    # a structure file
    nesting: int = 32            # brackets in a structure file

    @classmethod
    def from_env(cls) -> "Limits":
        """The defaults, with the totals taken from the environment where set."""
        changes = {}
        for field, variable in (("params", "MAEDET_MAX_PARAMS"), ("flops", "MAEDET_MAX_FLOPS")):
            text = os.environ.get(variable)
            if text:
                try:
                    changes[field] = int(float(text))
                except (ValueError, OverflowError):
                    raise MaedetError(f"{variable} must be a number such as 2e10, got {text!r}") from None
        return replace(cls(), **changes)


def check_text(text: str, source: str, limits: Limits | None = None) -> None:
    """Size and bracket nesting of a structure file, checked before any parser sees it
    (JSON and Python's literal parser both recurse once per level)."""
    limits = limits or Limits()
    check_file_size(len(text), source, limits)
    depth = deepest = 0
    quote = None
    for match in _BRACKETS.finditer(text):
        char = match.group()
        if quote is not None:
            if char == quote and not _escaped(text, match.start()):
                quote = None
        elif char in "\"'":
            quote = char
        else:
            depth += 1 if char in "[{(" else -1
            deepest = max(deepest, depth)
    if deepest > limits.nesting:
        raise StructureError(f"{source}: brackets nested {deepest} deep; a structure needs 3, at most "
                             f"{limits.nesting} are read")


def check_file_size(size: int, source: str, limits: Limits | None = None) -> None:
    limits = limits or Limits()
    if size > limits.text_bytes:
        raise StructureError(f"{source}: {human(size)} characters; a structure file is at most "
                             f"{human(limits.text_bytes)}")


def _escaped(text: str, index: int) -> bool:
    slashes = 0
    while index > slashes and text[index - slashes - 1] == "\\":
        slashes += 1
    return slashes % 2 == 1


def check_block_count(count: int, source: str, limits: Limits | None = None) -> None:
    limits = limits or Limits()
    if count > limits.blocks:
        raise StructureError(f"{source}: {count:,} blocks; at most {limits.blocks:,}")


def check_structure(structure: Structure, limits: Limits | None = None) -> Cost:
    """Per-block sizes, then total layers and parameters (they do not depend on the input size)."""
    limits = limits or Limits.from_env()
    check_block_count(len(structure.blocks), "structure", limits)
    for index, block in enumerate(structure.blocks):
        for field, value, cap in (("in", block.cin, limits.channels), ("out", block.cout, limits.channels),
                                  ("btn", block.btn, limits.channels), ("k", block.kernel, limits.kernel),
                                  ("L", block.depth, limits.depth)):
            if value > cap:
                raise StructureError(f"block {index} ({block.kind}): {field}={value:,} is over the limit of {cap:,}")
    if structure.layers > limits.layers:
        raise StructureError(f"{structure.layers:,} conv layers; at most {limits.layers:,}")
    cost = compute_cost(structure, 1)
    if cost.params > limits.params:
        raise StructureError(f"{human(cost.params)} parameters; the limit is {human(limits.params)} "
                             "(MAEDET_MAX_PARAMS raises it)")
    return cost


def check_input_size(structure: Structure, image_size: ImageSize, limits: Limits | None = None) -> Cost:
    """The structure at an input size: the FLOPs cap, and kernels that fit the feature maps they
    slide over. Returns the cost."""
    limits = limits or Limits.from_env()
    height, width = as_hw(image_size)
    if min(height, width) < 1:
        raise MaedetError(f"image size {height}x{width} must be positive", "image_size")
    check_structure(structure, limits)
    cost = compute_cost(structure, (height, width))
    if cost.flops > limits.flops:
        raise MaedetError(f"{human(cost.flops)} MACs at {height}x{width}; the limit is {human(limits.flops)} "
                          "(MAEDET_MAX_FLOPS raises it)", "image_size")
    for index, (block, (in_h, in_w)) in enumerate(zip(structure.blocks, block_input_sizes(cost))):
        if block.kernel // 2 > max(in_h, in_w):
            raise StructureError(f"block {index} ({block.kind}): k={block.kernel} is more than twice as wide as "
                                 f"its {in_h}x{in_w} input at {height}x{width}: most of the kernel would only see "
                                 "padding")
    return cost


def check_activations(structure: Structure, cost: Cost, batch: int = 1) -> None:
    """Refuse a forward pass whose largest layer (input plus output) cannot fit in memory now."""
    peak = max((block.cin + max(block.cout, block.btn)) * in_h * in_w
               for block, (in_h, in_w) in zip(structure.blocks, block_input_sizes(cost)))
    height, width = cost.image_size
    check_memory(peak * batch * BYTES_PER_VALUE * ACTIVATION_COPIES, f"a batch of {batch} at {height}x{width}",
                 "image_size")


def block_input_sizes(cost: Cost) -> list[tuple[int, int]]:
    """Each block's input height and width, from the stage sizes the cost model computed: a stage's
    first block reads the previous stage's output (the image for the stem), the others its own."""
    sizes, previous, first = [], cost.image_size, 0
    for stage in cost.stages:
        for index in range(first, stage.last_block + 1):
            sizes.append(previous if index == first else (stage.height, stage.width))
        previous, first = (stage.height, stage.width), stage.last_block + 1
    return sizes
