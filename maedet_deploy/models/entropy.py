"""MAE-DET's "forward" entropy: run the vanilla network and measure log std.

The vanilla network keeps only the main-path convs of every unit (the `body` of
each `ResidualUnit`, the stem's conv): standard-Gaussian weights, a
standard-Gaussian input, no BN, no shortcuts. The stage entropy is the log std
of the stage output plus log(stage channels).

Two choices, both so the forward score measures the same quantity as the
closed form in `search.score` (and can check it):
- ReLU is left out. It only halves the second moment (a constant -log(2)/2 per
  ReLU'd conv), but the number of ReLUs differs between networks of different
  depth, so keeping it would shift scores by depth rather than rank like the
  analytic form, which has no ReLU term either.
- After every conv the activation is divided by its measured std and the log of
  that factor is accumulated in float64. The raw product of sqrt(fan-in) over
  ~100 layers overflows float32; the rescaled run computes the same log std
  stably.
Zero padding at the borders lowers the effective fan-in on small feature maps,
so at small image sizes the forward score sits somewhat below the analytic one;
that is the real network's behaviour, not noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..structure import ImageSize, Structure, as_hw, stage_ends
from ..structure.limits import check_activations, check_input_size
from .blocks import ConvBN, build_block


def _main_path_convs(block: nn.Module) -> list[nn.Conv2d]:
    if isinstance(block, ConvBN):
        return [block.conv]
    return [layer.conv for unit in block for layer in unit.body]


@torch.no_grad()
def forward_stage_entropies(structure: Structure, image_size: ImageSize = 224, seed: int = 0,
                            batch: int = 2) -> list[float]:
    """Per-stage entropies of the vanilla Gaussian network; seeded and deterministic."""
    check_activations(structure, check_input_size(structure, image_size), batch)
    generator = torch.Generator().manual_seed(seed)
    height, width = as_hw(image_size)
    x = torch.randn(batch, structure.blocks[0].cin, height, width, generator=generator)
    ends = set(stage_ends(structure))
    log_std = 0.0
    entropies = []
    for index, block in enumerate(structure.blocks):
        with torch.device("meta"):  # only the conv shapes are needed, not weights
            convs = _main_path_convs(build_block(block))
        for conv in convs:
            weight = torch.randn(conv.weight.shape, generator=generator)
            x = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
            std = float(x.double().std())
            log_std += math.log(std)
            x = x / std
        if index in ends:
            entropies.append(log_std + math.log(block.cout))
    return entropies
