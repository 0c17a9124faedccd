"""What every decoder shares: detections, settings, NMS, the feature-map grid, and the
registry that picks a decoder from a float model's actual outputs.

A decoder turns one inference's outputs into per-image detections: xyxy boxes in
network-input pixels, scores and class indices. Each layout is one small class that
registers itself with `@register` and has a `match(outputs, input_hw, model)` that
looks at the output arrays (shapes, value ranges) and the model's metadata, so a new
layout is one class in one place (timm's registry idea).
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
import onnx

from ...errors import MaedetError

Outputs = Mapping[str, np.ndarray]
STRIDE_SETS = ((8, 16, 32), (8, 16, 32, 64), (4, 8, 16, 32))  # P3-P5, P3-P6, P2-P5


@dataclass
class Detections:
    boxes: np.ndarray  # [K, 4] xyxy, network-input pixels
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K] int

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def above(self, threshold: float) -> "Detections":
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])


@dataclass
class DecodeSettings:
    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    max_detections: int = 100


class Decoder(Protocol):
    name: str

    def __call__(self, outputs: Outputs, settings: DecodeSettings) -> list[Detections]: ...


Matcher = Callable[[Outputs, tuple[int, int], "onnx.ModelProto | None"], "Decoder | None"]
DECODERS: dict[str, Matcher] = {}  # name -> match, in the order `auto` tries them


def register(name: str) -> Callable:
    """Class decorator: the class's `match` classmethod joins the registry under `name`."""
    def add(cls):
        cls.name = name
        DECODERS[name] = cls.match
        return cls
    return add


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS; indices of the kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        best, rest = order[0], order[1:]
        keep.append(best)
        w = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = w * h
        iou = inter / np.maximum(area[best] + area[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def multiclass_nms(boxes: np.ndarray, scores: np.ndarray, settings: DecodeSettings, pre_nms: int = 1000) -> Detections:
    """boxes [N,4] xyxy, scores [N,C] -> class-aware NMS detections (the best `max_detections`)."""
    cells, classes = np.nonzero(scores > settings.score_threshold)
    if cells.size == 0:
        return Detections.empty()
    values = scores[cells, classes]
    limit = pre_nms * max(1, scores.shape[1] // 4)
    if values.size > limit:
        top = np.argsort(-values, kind="stable")[:limit]
        cells, classes, values = cells[top], classes[top], values[top]
    # offsetting each class's boxes apart makes one NMS call class-aware
    span = float(np.abs(boxes[cells]).max()) + 1.0
    shifted = boxes[cells] + (classes * 2 * span)[:, None]
    keep = nms(shifted, values, settings.iou_threshold, settings.max_detections)
    return Detections(boxes[cells[keep]].astype(np.float32), values[keep].astype(np.float32),
                      classes[keep].astype(np.int64))


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    centre, size = boxes[..., :2], boxes[..., 2:4]
    return np.concatenate([centre - size / 2, centre + size / 2], -1)


def grid_cells(height: int, width: int, strides: Sequence[int]) -> list[tuple[int, int, int]]:
    """(stride, rows, columns) of each level: a stride-s map of an HxW input has ceil(H/s) x ceil(W/s) cells."""
    return [(s, math.ceil(height / s), math.ceil(width / s)) for s in strides]


def cell_count(height: int, width: int, strides: Sequence[int]) -> int:
    return sum(rows * columns for _, rows, columns in grid_cells(height, width, strides))


def level_strides(height: int, width: int, count: int, per_cell: int = 1) -> tuple[int, ...] | None:
    """The stride set whose grid has `count` / `per_cell` cells in all, if one does."""
    for strides in STRIDE_SETS:
        if cell_count(height, width, strides) * per_cell == count:
            return strides
    return None


def grid_centres(height: int, width: int, strides: Sequence[int], offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres [N, 2] (x, y) in pixels, row-major per level, and each cell's stride [N, 1]."""
    centres, steps = [], []
    for stride, rows, columns in grid_cells(height, width, strides):
        ys, xs = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
        centres.append((np.stack([xs.ravel(), ys.ravel()], 1) + offset) * stride)
        steps.append(np.full((rows * columns, 1), stride))
    return np.concatenate(centres).astype(np.float32), np.concatenate(steps).astype(np.float32)


def float_arrays(outputs: Outputs, rank: int | None = None) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in outputs.items()
            if np.issubdtype(np.asarray(v).dtype, np.floating) and (rank is None or np.asarray(v).ndim == rank)}


def is_probability(array: np.ndarray) -> bool:
    return array.size == 0 or (float(array.min()) >= 0 and float(array.max()) <= 1)


def metadata(model: onnx.ModelProto | None) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props} if model is not None else {}


def ultralytics_classes(model: onnx.ModelProto | None) -> int | None:
    """The class count an Ultralytics export declares in its `names` metadata, if any."""
    names = metadata(model).get("names")
    if not names:
        return None
    try:
        parsed = ast.literal_eval(names)
    except (ValueError, SyntaxError):
        return None
    return len(parsed) if isinstance(parsed, (dict, list, tuple)) else None


def pick_decoder(outputs: Outputs, input_hw: tuple[int, int], model: onnx.ModelProto | None = None,
                 name: str = "auto") -> Decoder | None:
    """The decoder for these outputs: `name` forces one (an error if the outputs contradict
    it), `auto` tries each in turn, `none` skips detection. None: no layout fits."""
    if name == "none":
        return None
    if name != "auto":
        if name not in DECODERS:
            raise MaedetError(f"unknown decoder {name!r} (choose from auto, none, {', '.join(DECODERS)})",
                              setting="decoder")
        decoder = DECODERS[name](outputs, input_hw, model)
        if decoder is None:
            shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in outputs.items())
            raise MaedetError(f"the model's outputs ({shapes}) do not fit the {name} layout", setting="decoder")
        return decoder
    for match in DECODERS.values():
        decoder = match(outputs, input_hw, model)
        if decoder is not None:
            return decoder
    return None
