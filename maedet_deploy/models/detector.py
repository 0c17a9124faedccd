"""A complete single-stage anchor-free detector around a structure backbone.

backbone (C3..C5) -> PAN neck -> GFL-style head shared across levels -> decoded
boxes. The neck sizes itself from `backbone.feature_info`; the head predicts, at
every grid point, class logits and a discrete distribution over the four
distances to the box sides (GFL's distribution focal loss form: softmax over
`reg_max + 1` bins, expectation, times a learnable per-level scale applied to the
logits, times the stride). Output is NMS-free: `export` adds the standard ONNX
NonMaxSuppression when asked, so the same module serves training-side
evaluation and deployment.

Every shape is read from tensors at run time (never from the constructor's image
size), so the module traces to ONNX with dynamic batch and height/width.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MaedetError
from ..structure import ImageSize, Structure, as_hw, stage_ends
from ..structure.limits import Limits, check_input_size
from ..zoo import resolve_structure
from .backbone import CALIBRATION_SIZE, Backbone, seeded
from .blocks import ConvBN, calibrate_batchnorm, init_weights
from .checkpoint import load_weights

PRIOR_PROBABILITY = 0.01


class PAN(nn.Module):
    """Top-down FPN then a bottom-up path (PANet), every level at `channels`."""

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        levels = len(in_channels)
        self.lateral = nn.ModuleList(ConvBN(c, channels, 1) for c in in_channels)
        self.top_down = nn.ModuleList(ConvBN(channels, channels, 3) for _ in range(levels - 1))
        self.down = nn.ModuleList(ConvBN(channels, channels, 3, stride=2) for _ in range(levels - 1))
        self.bottom_up = nn.ModuleList(ConvBN(channels, channels, 3) for _ in range(levels - 1))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral, features)]
        top = [laterals[-1]]
        for i in range(len(laterals) - 2, -1, -1):
            # size= rather than scale_factor: odd inputs give ceil-halved maps.
            up = F.interpolate(top[0], size=laterals[i].shape[-2:], mode="nearest")
            top.insert(0, self.top_down[i](laterals[i] + up))
        outs = [top[0]]
        for i in range(1, len(top)):
            outs.append(self.bottom_up[i - 1](top[i] + self.down[i - 1](outs[-1])))
        return outs


class Head(nn.Module):
    """Shared cls and box towers; per-level learnable scale; decodes to xyxy pixels."""

    def __init__(self, channels: int, num_classes: int, strides: Sequence[int], convs: int = 2,
                 reg_max: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        self.reg_max = reg_max
        self.cls_tower = nn.Sequential(*(ConvBN(channels, channels, 3) for _ in range(convs)))
        self.reg_tower = nn.Sequential(*(ConvBN(channels, channels, 3) for _ in range(convs)))
        self.cls_out = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        self.register_buffer("bins", torch.arange(reg_max + 1, dtype=torch.float32), persistent=False)

    def init_priors(self) -> None:
        """Start every class at a 1% probability so the loss is not swamped by negatives."""
        nn.init.normal_(self.cls_out.weight, std=0.01)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))
        nn.init.normal_(self.reg_out.weight, std=0.01)
        nn.init.zeros_(self.reg_out.bias)

    def forward(self, features: list[torch.Tensor], images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = images.shape[-2:]
        # [w, h, w, h] as a tensor built by arithmetic, so tracing keeps it dynamic.
        one = images.new_ones(1)
        limits = torch.cat([one * width, one * height]).repeat(2)
        boxes, scores = [], []
        for level, (x, stride) in enumerate(zip(features, self.strides)):
            batch = x.shape[0]
            h, w = x.shape[-2:]
            logits = self.cls_out(self.cls_tower(x))
            dist = self.reg_out(self.reg_tower(x)) * self.scales[level]
            dist = dist.reshape(batch, 4, self.reg_max + 1, -1).softmax(2)
            dist = (dist * self.bins.view(1, 1, -1, 1)).sum(2).transpose(1, 2) * stride  # [B, HW, 4]
            ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) * stride
            xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) * stride
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points = torch.stack([grid_x, grid_y], -1).reshape(1, -1, 2)
            boxes.append(torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1))
            scores.append(logits.flatten(2).transpose(1, 2).sigmoid())
        boxes_all = torch.minimum(torch.cat(boxes, 1).clamp(min=0), limits)
        return boxes_all, torch.cat(scores, 1)


class Detector(nn.Module):
    """`forward(images [B,3,H,W])` -> (boxes [B,N,4] xyxy pixels, scores [B,N,classes] in 0..1)."""

    def __init__(self, structure: Structure, num_classes: int = 80, image_size: ImageSize = 640,
                 neck_channels: int = 128, head_convs: int = 2, out_indices: Sequence[int] | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        _check_head(num_classes, neck_channels, head_convs)
        check_input_size(structure, image_size)
        stages = len(stage_ends(structure))
        if out_indices is None:
            if stages < 3:
                raise MaedetError(f"a detector needs at least 3 backbone stages; the structure has {stages}")
            out_indices = tuple(range(stages - 3, stages))
        self.image_size = as_hw(image_size)
        self.num_classes = num_classes
        self.in_channels = structure.blocks[0].cin
        self.backbone = Backbone(structure, out_indices, seed)
        info = self.backbone.feature_info
        with seeded(seed + 1):
            self.neck = PAN([f["num_chs"] for f in info], neck_channels)
            self.head = Head(neck_channels, num_classes, [f["reduction"] for f in info], head_convs)
            init_weights(self.neck)
            init_weights(self.head)
            self.head.init_priors()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.neck(self.backbone(images)), images)


def _check_head(num_classes: int, neck_channels: int, head_convs: int) -> None:
    limits = Limits()
    for setting, value, low, high in (("num_classes", num_classes, 1, limits.channels),
                                      ("neck_channels", neck_channels, 1, limits.channels),
                                      ("head_convs", head_convs, 0, limits.depth)):
        if not low <= value <= high:
            raise MaedetError(f"must be in {low}..{high:,}, got {value:,}", setting)


def create_detector(spec: str | os.PathLike | Structure, num_classes: int = 80, image_size: ImageSize = 640,
                    neck_channels: int = 128, checkpoint: str | os.PathLike | None = None,
                    head_convs: int = 2, seed: int = 0) -> Detector:
    """The one entry point: a zoo name, structure file or Structure, plus optional
    trained weights (a state_dict file, strictly matched). Without weights, BN
    statistics are calibrated (`calibrate_batchnorm`) so the random-weight model
    has realistic activations for export checks, latency and INT8 calibration.
    Random weights are drawn from `seed`. Returned in eval mode."""
    detector = Detector(resolve_structure(spec), num_classes, image_size, neck_channels, head_convs, seed=seed)
    if checkpoint is None:
        size = tuple(min(s, CALIBRATION_SIZE) for s in detector.image_size)
        return calibrate_batchnorm(detector, detector.in_channels, size)
    load_weights(detector, checkpoint)
    return detector.eval()
