"""A backbone built from a structure, returning stage features (timm's features_only).

Stages end where `structure.stage_ends` says (before every stride-2 block and at
the end); `out_indices` picks stages by 0-based index, so the default (2, 3, 4)
of a five-stage net is C3, C4, C5. `feature_info` tells necks the channels and
reduction of each returned stage, so they never hard-code them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import MaedetError
from ..structure import Structure, stage_ends
from ..structure.limits import check_structure
from ..zoo import resolve_structure
from .blocks import build_block, calibrate_batchnorm, init_weights
from .checkpoint import load_weights

DEFAULT_OUT_INDICES = (2, 3, 4)
CALIBRATION_SIZE = 256  # BN statistics barely depend on resolution; keep the one pass cheap


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random weights drawn from `seed`, leaving the caller's global torch RNG as it was: the same
    structure gives the same random-weight model (and ONNX file) in every process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_out_indices(out_indices: Sequence[int], stages: int) -> tuple[int, ...]:
    indices = tuple(int(i) for i in out_indices)
    if not indices or any(not 0 <= i < stages for i in indices) or list(indices) != sorted(set(indices)):
        raise MaedetError(f"out_indices {indices} must be increasing stage indices in 0..{stages - 1} "
                          f"(the structure has {stages} stages)")
    return indices


class Backbone(nn.Module):
    """`forward(x)` returns the features of the stages in `out_indices`, shallow first."""

    def __init__(self, structure: Structure, out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
                 seed: int = 0) -> None:
        super().__init__()
        check_structure(structure)
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
        with seeded(seed):
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


def create_backbone(spec: str | os.PathLike | Structure, out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
                    pretrained_checkpoint: str | os.PathLike | None = None, seed: int = 0) -> Backbone:
    """The one entry point: a zoo name, a structure file or a Structure; weights
    from a backbone checkpoint or a detector's (its 'backbone.' keys). Without
    one, random weights are drawn from `seed` and BN statistics are calibrated so
    they behave like trained ones."""
    structure = resolve_structure(spec)
    backbone = Backbone(structure, out_indices, seed)
    if pretrained_checkpoint is None:
        return calibrate_batchnorm(backbone, backbone.in_channels, CALIBRATION_SIZE)
    load_weights(backbone, pretrained_checkpoint, prefix="backbone.")
    return backbone.eval()
