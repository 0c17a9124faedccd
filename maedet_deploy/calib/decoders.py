"""Detections from a model's raw outputs, chosen by the output layout.

A decoder turns one inference's outputs into per-image detections: xyxy boxes in
network-input pixels, scores and class indices. Each is small and registered in
DECODERS with a `match` that looks at the (float) model's actual output arrays,
so a new layout is one class:

- `end_to_end`: num_dets / det_boxes / det_scores / det_classes, what our
  exporter writes with NMS in the graph (and YOLO-style end-to-end exports);
- `boxes_scores`: boxes [B,N,4] xyxy + scores [B,N,C] (our exporter without NMS);
- `gfl`: GFL/PicoDet heads exported per level: scores [B,N_l,C] (probabilities or
  logits) and box distributions [B,N_l,4*(R+1)] (softmax over R+1 bins, expected
  distance in strides from the cell centre at (i+0.5)*stride).

The decoder is picked once from the float model's outputs and reused for the
quantized model, so both are decoded identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ..errors import MaedetError


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


def multiclass_nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float,
                   max_detections: int, pre_nms: int = 1000) -> Detections:
    """boxes [N,4], scores [N,C] -> class-aware NMS detections (best `max_detections`)."""
    cells, classes = np.nonzero(scores > score_threshold)
    if cells.size == 0:
        return Detections.empty()
    values = scores[cells, classes]
    if values.size > pre_nms * max(1, scores.shape[1] // 4):
        top = np.argsort(-values, kind="stable")[:pre_nms * max(1, scores.shape[1] // 4)]
        cells, classes, values = cells[top], classes[top], values[top]
    # offsetting each class's boxes apart makes one NMS call class-aware
    span = float(np.abs(boxes).max()) + 1.0
    shifted = boxes[cells] + (classes * 2 * span)[:, None]
    keep = nms(shifted, values, iou_threshold, max_detections)
    return Detections(boxes[cells[keep]].astype(np.float32), values[keep].astype(np.float32),
                      classes[keep].astype(np.int64))


@dataclass
class DecodeSettings:
    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    max_detections: int = 100


class EndToEnd:
    name = "end_to_end"
    NAMES = ("num_dets", "det_boxes", "det_scores", "det_classes")

    @classmethod
    def match(cls, outputs: Mapping[str, np.ndarray], input_hw, model) -> "EndToEnd | None":
        return cls() if all(n in outputs for n in cls.NAMES) else None

    def __call__(self, outputs, settings: DecodeSettings) -> list[Detections]:
        num, boxes, scores, classes = (np.asarray(outputs[n]) for n in self.NAMES)
        out = []
        for b in range(boxes.shape[0]):
            count = int(np.asarray(num[b]).reshape(-1)[0])
            det = Detections(boxes[b, :count].astype(np.float32), scores[b, :count].astype(np.float32),
                             classes[b, :count].astype(np.int64))
            out.append(det.above(settings.score_threshold))
        return out


class BoxesScores:
    name = "boxes_scores"

    @classmethod
    def match(cls, outputs, input_hw, model) -> "BoxesScores | None":
        boxes, scores = outputs.get("boxes"), outputs.get("scores")
        if boxes is None or scores is None or boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.ndim != 3:
            return None
        return cls() if boxes.shape[:2] == scores.shape[:2] else None

    def __call__(self, outputs, settings: DecodeSettings) -> list[Detections]:
        boxes, scores = np.asarray(outputs["boxes"], np.float32), np.asarray(outputs["scores"], np.float32)
        return [multiclass_nms(boxes[b], scores[b], settings.score_threshold, settings.iou_threshold,
                               settings.max_detections) for b in range(boxes.shape[0])]


STRIDES = (4, 8, 16, 32, 64, 128)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class GFL:
    """Per-level (scores, distributions) pairs; strides from the cell counts."""

    name = "gfl"

    def __init__(self, levels: list[tuple[str, str, int, int, int]], logits: bool, cell_offset: float = 0.5):
        self.levels = levels  # (score output, distribution output, stride, grid h, grid w)
        self.logits = logits
        self.cell_offset = cell_offset

    @classmethod
    def match(cls, outputs, input_hw, model) -> "GFL | None":
        height, width = input_hw
        rank3 = {k: v for k, v in outputs.items() if np.asarray(v).ndim == 3 and np.issubdtype(v.dtype, np.floating)}
        by_cells: dict[int, list[str]] = {}
        for key, value in rank3.items():
            by_cells.setdefault(value.shape[1], []).append(key)
        levels, classes, bins = [], set(), set()
        for cells, names in by_cells.items():
            if len(names) != 2:
                return None
            pair = cls._score_and_distribution(names, rank3)
            if pair is None:
                return None
            score, dist = pair
            grid = [(s, math.ceil(height / s), math.ceil(width / s)) for s in STRIDES
                    if math.ceil(height / s) * math.ceil(width / s) == cells]
            if len(grid) != 1:
                return None
            levels.append((score, dist, *grid[0]))
            classes.add(rank3[score].shape[2])
            bins.add(rank3[dist].shape[2])
        if not levels or len(classes) != 1 or len(bins) != 1:
            return None
        levels.sort(key=lambda level: level[2])
        scores = np.concatenate([np.asarray(outputs[s]).ravel() for s, *_ in levels])
        return cls(levels, logits=bool(scores.min() < 0 or scores.max() > 1))

    @staticmethod
    def _score_and_distribution(names: list[str], arrays) -> tuple[str, str] | None:
        """Which of a level's two outputs holds the box distribution: the one whose last
        dim is 4 x bins; if both could be, the one that is not a probability map."""
        fits = [n for n in names if arrays[n].shape[2] % 4 == 0 and arrays[n].shape[2] // 4 >= 2]
        if len(fits) == 2:
            fits = [n for n in names if arrays[n].min() < 0 or arrays[n].max() > 1]
        if len(fits) != 1:
            return None
        dist = fits[0]
        return next(n for n in names if n != dist), dist

    def __call__(self, outputs, settings: DecodeSettings) -> list[Detections]:
        batch = np.asarray(outputs[self.levels[0][0]]).shape[0]
        all_boxes, all_scores = [], []
        for score_name, dist_name, stride, grid_h, grid_w in self.levels:
            scores = np.asarray(outputs[score_name], np.float32)
            if self.logits:
                scores = 1.0 / (1.0 + np.exp(-scores))
            dist = np.asarray(outputs[dist_name], np.float32)
            bins = dist.shape[-1] // 4
            dist = _softmax(dist.reshape(batch, -1, 4, bins), -1) @ np.arange(bins, dtype=np.float32) * stride
            ys, xs = np.meshgrid((np.arange(grid_h) + self.cell_offset) * stride,
                                 (np.arange(grid_w) + self.cell_offset) * stride, indexing="ij")
            centres = np.stack([xs.ravel(), ys.ravel()], 1)[None].astype(np.float32)
            all_boxes.append(np.concatenate([centres - dist[..., :2], centres + dist[..., 2:]], -1))
            all_scores.append(scores)
        boxes, scores = np.concatenate(all_boxes, 1), np.concatenate(all_scores, 1)
        return [multiclass_nms(boxes[b], scores[b], settings.score_threshold, settings.iou_threshold,
                               settings.max_detections) for b in range(batch)]


Decoder = Callable[[Mapping[str, np.ndarray], DecodeSettings], list[Detections]]
DECODERS = {cls.name: cls for cls in (EndToEnd, BoxesScores, GFL)}


def pick_decoder(outputs: Mapping[str, np.ndarray], input_hw: tuple[int, int], model=None,
                 name: str = "auto") -> Decoder | None:
    """The decoder for these outputs: `name` forces one (error if it does not fit);
    'auto' tries each; None when the model is not a detector we can decode; 'none' skips."""
    if name == "none":
        return None
    if name != "auto":
        if name not in DECODERS:
            raise MaedetError(f"unknown decoder {name!r} (choose from auto, none, {', '.join(DECODERS)})")
        decoder = DECODERS[name].match(outputs, input_hw, model)
        if decoder is None:
            raise MaedetError(f"the model's outputs ({', '.join(outputs)}) do not fit the {name} decoder")
        return decoder
    for cls in DECODERS.values():
        decoder = cls.match(outputs, input_hw, model)
        if decoder is not None:
            return decoder
    return None
