"""MAE-DET's multi-scale entropy score.

With standard-Gaussian weights and input, and BN and shortcuts removed, a
feature map is Gaussian and its (upper-bound) differential entropy is its log
standard deviation up to a constant. Each conv of fan-in `f` multiplies the std
by `sqrt(f)`, which gives a closed form ("analytic"); the "forward" method runs
the vanilla network instead (see `models.entropy`). Stage `i` scores the
log-std accumulated up to its end plus `log(channels_i)`; the network scores
`sum(alpha_i * H_i)`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

from ..errors import MaedetError
from ..structure import K1KXK1, KXKX, STEM, Block, Structure, stage_ends
from ..structure.cost import ImageSize

DEFAULT_ALPHA = (0.0, 0.0, 1.0, 1.0, 6.0)
METHODS = ("analytic", "forward")


def parse_alpha(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise MaedetError(f"must be comma-separated numbers, got {text!r}", setting="alpha") from None
    if not values:
        raise MaedetError("needs at least one value", setting="alpha")
    return values


@lru_cache(maxsize=1 << 16)
def block_log_std(block: Block) -> float:
    """Sum of the per-unit log-std gains of a block (closed form, O(1) per block)."""
    half = 0.5
    log = math.log
    if block.kind == STEM:
        return half * log(block.cin * block.kernel ** 2)
    k2 = block.kernel ** 2
    if block.kind == K1KXK1:
        body = half * (log(block.btn * k2) + log(block.btn))
    elif block.kind == KXKX:
        body = half * log(block.btn * k2)
        return half * log(block.cin * k2) + (block.depth - 1) * half * log(block.cout * k2) + block.depth * body
    else:  # K1DWK1: the depthwise conv's fan-in is k*k
        body = half * (log(k2) + log(block.btn))
    return half * log(block.cin) + (block.depth - 1) * half * log(block.cout) + block.depth * body


def analytic_stage_entropies(structure: Structure) -> list[float]:
    entropies = []
    accumulated = 0.0
    start = 0
    for end in stage_ends(structure):
        for block in structure.blocks[start:end + 1]:
            accumulated += block_log_std(block)
        start = end + 1
        entropies.append(accumulated + math.log(structure.blocks[end].cout))
    return entropies


def stage_entropies(structure: Structure, method: str = "analytic", image_size: ImageSize = 224,
                    seed: int = 0) -> list[float]:
    if method == "analytic":
        return analytic_stage_entropies(structure)
    if method == "forward":
        from ..models.entropy import forward_stage_entropies
        return forward_stage_entropies(structure, image_size=image_size, seed=seed)
    raise MaedetError(f"unknown score method {method!r} (choose from {', '.join(METHODS)})")


def check_alpha(structure: Structure, alpha: Sequence[float]) -> None:
    stages = len(stage_ends(structure))
    if stages != len(alpha):
        raise MaedetError(f"the structure has {stages} stages but alpha has {len(alpha)} values "
                          f"({','.join(f'{a:g}' for a in alpha)}); give one weight per stage")


def entropy_score(structure: Structure, alpha: Sequence[float] = DEFAULT_ALPHA, method: str = "analytic",
                  image_size: ImageSize = 224, seed: int = 0) -> float:
    """The weighted multi-scale entropy; the stage count must equal len(alpha)."""
    check_alpha(structure, alpha)
    entropies = stage_entropies(structure, method, image_size, seed)
    return float(sum(a * h for a, h in zip(alpha, entropies)))
