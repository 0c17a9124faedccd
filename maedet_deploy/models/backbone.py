"""A backbone built from a structure, returning stage features (timm's features_only).

Stages end where `structure.stage_ends` says (before every stride-2 block and at
the end); `out_indices` picks stages by 0-based index, so the default (2, 3, 4)
of a five-stage net is C3, C4, C5. `feature_info` tells necks the channels and
reduction of each returned stage, so they never hard-code them.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

from ..errors import MaedetError
from ..structure import Structure, stage_ends
from ..zoo import resolve_structure
from .blocks import build_block, calibrate_batchnorm, init_weights
from .checkpoint import load_weights

DEFAULT_OUT_INDICES = (2, 3, 4)
CALIBRATION_SIZE = 256  # BN statistics barely depend on resolution; keep the one pass cheap


def _check_out_indices(out_indices: Sequence[int], stages: int) -> tuple[int, ...]:
    indices = tuple(int(i) for i in out_indices)
    if not indices or any(not 0 <= i < stages for i in indices) or list(indices) != sorted(set(indices)):
        raise MaedetError(f"out_indices {indices} must be increasing stage indices in 0..{stages - 1} "
                          f"(the structure has {stages} stages)")
    return indices


class Backbone(nn.Module):
    """`forward(x)` returns the features of the stages in `out_indices`, shallow first."""

    def __init__(self, structure: Structure, out_indices: Sequence[int] = DEFAULT_OUT_INDICES) -> None:
        super().__init__()
        self.structure = structure
        self.in_channels = structure.blocks[0].cin
        ends = stage_ends(structure)
        self.out_indices = _check_out_indices(out_indices, len(ends))
        self.blocks = nn.ModuleList(build_block(block) for block in structure.blocks)
        self._return_at = {ends[i]: i for i in self.out_indices}
        self._last = ends[self.out_indices[-1]]
        reduction, reductions = 1, []
        for index, block in enumerate(structure.blocks):
            reduction *= block.stride
            if index in ends:
                reductions.append(reduction)
        self.feature_info = [{"num_chs": structure.blocks[ends[i]].cout, "reduction": reductions[i],
                              "module": f"blocks.{ends[i]}", "stage": f"C{i + 1}"} for i in self.out_indices]
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self._return_at:
                features.append(x)
            if index == self._last:
                break
        return features


def from_structure(structure: Structure, out_indices: Sequence[int] = DEFAULT_OUT_INDICES) -> Backbone:
    return Backbone(structure, out_indices)


def create_backbone(spec: str | os.PathLike | Structure, out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
                    pretrained_checkpoint: str | os.PathLike | None = None) -> Backbone:
    """The one entry point: a zoo name, a structure file or a Structure; weights
    from a backbone checkpoint or a detector's (its 'backbone.' keys). Without
    one, BN statistics are calibrated so random weights behave like trained ones."""
    structure = resolve_structure(spec)
    backbone = Backbone(structure, out_indices)
    if pretrained_checkpoint is None:
        return calibrate_batchnorm(backbone, backbone.in_channels, CALIBRATION_SIZE)
    load_weights(backbone, pretrained_checkpoint, prefix="backbone.")
    return backbone.eval()
