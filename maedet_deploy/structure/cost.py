"""Analytic cost model: parameters, FLOPs (multiply-accumulates), conv layers and
stages of a structure at any input size, without building a torch module.

Terms follow the reference tool: every conv counts `cin*cout*k*k/groups` MACs per
output pixel plus 2 per output channel and pixel for its BN; ReLUs count one per
element; a stride-2 shortcut's average pool counts one per input element; a
projection shortcut counts its conv, BN and the residual add. Parameters are conv
weights plus BN's weight and bias (two per channel), which is exactly what the
torch modules in `models` hold. Spatial sizes are the real integer sizes
(`ceil(h/stride)`), so at sizes divisible by 32 the FLOPs equal the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .blocks import K1DWK1, K1KXK1, KXKX, STEM, Block, Structure

ImageSize = int | tuple[int, int]


@dataclass(frozen=True, slots=True)
class Stage:
    """A run of blocks ending before the next stride-2 block (C1..C5)."""

    index: int
    last_block: int
    channels: int
    reduction: int
    units: int
    layers: int
    height: int
    width: int

    def to_dict(self) -> dict:
        return {"name": f"C{self.index}", "last_block": self.last_block, "channels": self.channels,
                "reduction": self.reduction, "units": self.units, "layers": self.layers,
                "height": self.height, "width": self.width}


@dataclass(frozen=True, slots=True)
class Cost:
    params: int
    flops: int
    layers: int
    stages: tuple[Stage, ...]
    image_size: tuple[int, int]

    def to_dict(self) -> dict:
        return {"params": self.params, "flops": self.flops, "layers": self.layers,
                "image_size": list(self.image_size), "stages": [s.to_dict() for s in self.stages]}


def as_hw(image_size: ImageSize) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def down(size: int, stride: int) -> int:
    """A feature map's side after a stride (padding (k-1)//2 keeps ceil(size / stride))."""
    return -(-size // stride)


@dataclass(frozen=True, slots=True)
class Conv:
    """One conv (+ BN) of a block: its shape and the pixels (per image) it reads and writes."""

    cin: int
    cout: int
    kernel: int
    stride: int
    groups: int
    pixels_in: int
    pixels_out: int

    @property
    def weights(self) -> int:
        return self.cin * self.cout * self.kernel * self.kernel // self.groups


def unit_layout(kind: str, cin: int, cout: int, btn: int, k: int, stride: int, pix_in: int, pix_out: int,
                unit0: bool) -> tuple[tuple[Conv, ...], bool]:
    """The main path's convs of one residual unit (each followed by BN; a ReLU on each output, the
    last one after the residual add) and whether its shortcut projects (1x1 conv + BN). A stride-2
    shortcut also average-pools. The one description of the units `models.blocks` builds."""
    if kind == K1KXK1:
        convs = (Conv(cin, btn, 1, 1, 1, pix_in, pix_in), Conv(btn, btn, k, stride, 1, pix_in, pix_out),
                 Conv(btn, cout, 1, 1, 1, pix_out, pix_out))
        return convs, unit0
    if kind == KXKX:
        return (Conv(cin, btn, k, 1, 1, pix_in, pix_in), Conv(btn, cout, k, stride, 1, pix_in, pix_out)), cin != cout
    if kind == K1DWK1:   # expand, depthwise, project
        convs = (Conv(cin, btn, 1, 1, 1, pix_in, pix_in), Conv(btn, btn, k, stride, btn, pix_in, pix_out),
                 Conv(btn, cout, 1, 1, 1, pix_out, pix_out))
        return convs, cin != cout
    raise ValueError(f"no unit layout for block class {kind!r}")


def _conv(cin: int, cout: int, k: int, groups: int, pixels: int) -> tuple[int, int]:
    """(params, MACs incl. BN) of a bias-free conv followed by BN."""
    weights = cin * cout * k * k // groups
    return weights + 2 * cout, (weights + 2 * cout) * pixels


def _unit_cost(kind: str, cin: int, cout: int, btn: int, k: int, stride: int,
               pix_in: int, pix_out: int, unit0: bool) -> tuple[int, int]:
    """(params, MACs) of one residual unit."""
    convs, project = unit_layout(kind, cin, cout, btn, k, stride, pix_in, pix_out, unit0)
    parts = [_conv(c.cin, c.cout, c.kernel, c.groups, c.pixels_out) for c in convs]
    params = sum(p for p, _ in parts)
    flops = sum(f for _, f in parts) + sum(c.cout * c.pixels_out for c in convs)
    if stride == 2:
        flops += cin * pix_in
    if project:
        proj_params, proj_flops = _conv(cin, cout, 1, 1, pix_out)
        params += proj_params
        flops += proj_flops + cout * pix_out
    return params, flops


@lru_cache(maxsize=1 << 16)
def block_cost(block: Block, height: int, width: int) -> tuple[int, int, int, int]:
    """(params, MACs, out height, out width) of a block at its input size.

    Cached: search re-evaluates the same blocks at the same sizes constantly."""
    out_h, out_w = down(height, block.stride), down(width, block.stride)
    pix_in, pix_out = height * width, out_h * out_w
    if block.kind == STEM:
        params, flops = _conv(block.cin, block.cout, block.kernel, 1, pix_out)
        return params, flops + block.cout * pix_out, out_h, out_w
    params, flops = _unit_cost(block.kind, block.cin, block.cout, block.btn, block.kernel,
                               block.stride, pix_in, pix_out, True)
    if block.depth > 1:
        rest_params, rest_flops = _unit_cost(block.kind, block.cout, block.cout, block.btn, block.kernel,
                                             1, pix_out, pix_out, False)
        params += (block.depth - 1) * rest_params
        flops += (block.depth - 1) * rest_flops
    return params, flops, out_h, out_w


def block_inputs(structure: Structure, image_size: tuple[int, int]) -> list[tuple[Block, int, int]]:
    """Each block with the input height and width it sees."""
    height, width = image_size
    placed = []
    for block in structure.blocks:
        placed.append((block, height, width))
        height, width = down(height, block.stride), down(width, block.stride)
    return placed


def stage_ends(structure: Structure) -> list[int]:
    """Indices of the last block of every stage: before each stride-2 block
    (except the first block) and at the end, as the reference defines stages."""
    blocks = structure.blocks
    ends = [i - 1 for i in range(1, len(blocks)) if blocks[i].stride == 2]
    ends.append(len(blocks) - 1)
    return ends


def compute_cost(structure: Structure, image_size: ImageSize = 224) -> Cost:
    height, width = as_hw(image_size)
    params = flops = layers = units = 0
    reduction = 1
    ends = set(stage_ends(structure))
    stages: list[Stage] = []
    for index, block in enumerate(structure.blocks):
        block_params, block_flops, height, width = block_cost(block, height, width)
        params += block_params
        flops += block_flops
        layers += block.layers
        units += block.depth
        reduction *= block.stride
        if index in ends:
            stages.append(Stage(len(stages) + 1, index, block.cout, reduction, units, layers, height, width))
    return Cost(params, flops, layers, tuple(stages), as_hw(image_size))
