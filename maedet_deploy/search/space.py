"""The search space: how one candidate is derived from a parent (method.md section 3).

A mutation picks a block uniformly, then what to change (`out`, `k`, `btn`, `L`;
only widths in the fine phase), applies the reference's channel, kernel and
depth rules, re-chains every block's `in` and clamps kernels to the feature map.
Strides never change, so per-position kernel caps are computed once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from ..errors import MaedetError
from ..structure import K1DWK1, K1KXK1, KXKX, STEM, Block, Structure
from ..structure.cost import ImageSize, as_hw
from ..structure.limits import Limits

LIMITS = Limits()   # mutations stay inside what a structure file may hold


def round8(value: float) -> int:
    """Round to a multiple of 8, never below 8 (the reference's smart_round)."""
    return max(8, int(round(value / 8.0)) * 8)


@dataclass(frozen=True)
class Space:
    name: str
    kind: str
    channel_scales: tuple[float, ...] = (1.5, 1.25, 0.8, 0.6, 0.5)
    kernels: tuple[int, ...] = (3, 5)
    depth_steps: tuple[int, ...] = (-2, -1, 1, 2)
    max_channels: int = 2048
    # Bottleneck spaces keep out/10 <= btn <= out; inverted-residual spaces keep
    # btn = ratio * out with the ratio from `expansion_ratios`.
    expansion_ratios: tuple[float, ...] = ()
    first_block_max_depth: int = 3


SPACES = {
    "k1kxk1": Space("k1kxk1", K1KXK1),
    "kxkx": Space("kxkx", KXKX, channel_scales=(2.0, 1.5, 1.25, 0.8, 0.6, 0.5)),
    "k1dwk1": Space("k1dwk1", K1DWK1, channel_scales=(2.0, 1.5, 1.25, 0.8, 0.6, 0.5),
                    expansion_ratios=(1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)),
}


def get_space(name: str, max_channels: int | None = None) -> Space:
    try:
        space = SPACES[name]
    except KeyError:
        raise MaedetError(f"unknown search space {name!r} (choose from {', '.join(SPACES)})") from None
    if max_channels is not None and not 8 <= max_channels <= LIMITS.channels:
        raise MaedetError(f"must be within 8-{LIMITS.channels}, got {max_channels}", setting="max_channels")
    return replace(space, max_channels=max_channels) if max_channels else space


class Mutator:
    """Derives candidates from parents inside one space at one image size."""

    def __init__(self, space: Space, seed_structure: Structure, image_size: ImageSize,
                 max_layers: int | None = None) -> None:
        for index, block in enumerate(seed_structure.blocks):
            if index and block.kind != space.kind:
                raise MaedetError(f"the seed's block {index} is {block.kind}, but space {space.name!r} "
                                  f"searches {space.kind} blocks; pick the space that matches the seed", setting="space")
        if seed_structure.blocks[0].kind != STEM:
            raise MaedetError(f"the seed must start with a {STEM} stem block")
        self.space = space
        self.max_layers = min(max_layers or LIMITS.layers, LIMITS.layers)
        size = float(min(as_hw(image_size)))
        self.kernel_caps = []
        for block in seed_structure.blocks:
            self.kernel_caps.append(max(k for k in range(1, 64, 2) if k * 1.5 <= size or k == 1))
            size /= block.stride

    def _kernel(self, index: int, kernel: int) -> int:
        cap = self.kernel_caps[index]
        return kernel if kernel <= cap else max(1, cap)

    def _scale(self, rng: random.Random, channels: int) -> int:
        return min(self.space.max_channels, round8(rng.choice(self.space.channel_scales) * channels))

    def _bottleneck(self, out: int, btn: int) -> int:
        """Bottleneck spaces: out/10 <= btn <= out."""
        return min(out, max(btn, round8(out / 10)))

    def mutate(self, parent: Structure, rng: random.Random, fine: bool = False) -> Structure:
        blocks = list(parent.blocks)
        index = rng.randrange(len(blocks))
        block = blocks[index]
        nxt = blocks[index + 1] if index + 1 < len(blocks) else None
        if block.kind == STEM:
            out = self._scale(rng, block.cout)
            if nxt is not None:
                out = min(out, nxt.cout)
            blocks[index] = replace(block, cout=out)
        else:
            what = rng.choice(("out", "btn") if fine else ("out", "k", "btn", "L"))
            blocks[index] = self._mutate_super(block, nxt, index, what, rng, parent.layers)
        for position in range(1, len(blocks)):
            previous, current = blocks[position - 1], blocks[position]
            kernel = self._kernel(position, current.kernel)
            if current.cin != previous.cout or kernel != current.kernel:
                blocks[position] = replace(current, cin=previous.cout, kernel=kernel)
        return Structure(tuple(blocks))

    def _mutate_super(self, block: Block, nxt: Block | None, index: int, what: str,
                      rng: random.Random, layers: int) -> Block:
        space = self.space
        if what == "out":
            out = max(block.cin, min(4 * block.cin, self._scale(rng, block.cout)))
            if nxt is not None:
                out = max(min(out, nxt.cout), round8(nxt.cout / 4))
            if space.expansion_ratios:
                btn = round8(out * self._nearest_ratio(block.btn / block.cout))
            else:
                btn = self._bottleneck(out, block.btn)
            return replace(block, cout=out, btn=btn)
        if what == "k":
            choices = [k for k in space.kernels if k != block.kernel] or list(space.kernels)
            return replace(block, kernel=self._kernel(index, rng.choice(choices)))
        if what == "btn":
            if space.expansion_ratios:
                current = self._nearest_ratio(block.btn / block.cout)
                ratio = rng.choice([r for r in space.expansion_ratios if r != current])
                return replace(block, btn=round8(block.cout * ratio))
            return replace(block, btn=self._bottleneck(block.cout, self._scale(rng, block.btn)))
        depth = max(1, min(LIMITS.depth, block.depth + rng.choice(space.depth_steps)))
        if index == 1:
            depth = min(depth, space.first_block_max_depth)
        per_unit = block.layers // block.depth
        room = self.max_layers - (layers - block.layers)
        depth = max(1, min(depth, room // per_unit))
        return replace(block, depth=depth)

    def _nearest_ratio(self, ratio: float) -> float:
        return min(self.space.expansion_ratios, key=lambda r: abs(r - ratio))
