"""Heads exported one output per pyramid level (and per branch).

- `gfl`: GFL/PicoDet: scores [B, N_l, C] (probabilities or logits) and box
  distributions [B, N_l, 4*(R+1)] (softmax over R+1 bins, expected distance in
  strides from the cell centre at (i + 0.5) * stride).
- `scrfd`: SCRFD/RetinaFace-style anchor points: scores [B, N_l*A, C] (probabilities),
  distances [B, N_l*A, 4] (left, top, right, bottom in strides from the point at
  i * stride), optional keypoints [B, N_l*A, 2K] (ignored), A anchors per cell.

Levels are told apart by their row counts: a level of stride s at an HxW input has
ceil(H/s) x ceil(W/s) cells.
"""

from __future__ import annotations

import math

import numpy as np

from .base import DecodeSettings, Detections, float_arrays, grid_centres, is_probability, multiclass_nms, register

LEVEL_STRIDES = (4, 8, 16, 32, 64, 128)


def _stride_of(count: int, input_hw: tuple[int, int], per_cell: int) -> int | None:
    height, width = input_hw
    fits = [s for s in LEVEL_STRIDES if math.ceil(height / s) * math.ceil(width / s) * per_cell == count]
    return fits[0] if len(fits) == 1 else None


def _by_rows(outputs) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for name, value in float_arrays(outputs, 3).items():
        groups.setdefault(value.shape[1], []).append(name)
    return groups


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class PerLevel:
    """Decoding shared by per-level heads: each level's (score output, box output, stride)
    becomes boxes and scores (`level`), all levels go through one class-aware NMS."""

    def __init__(self, levels: list[tuple[str, str, int]], input_hw: tuple[int, int]) -> None:
        self.levels = sorted(levels, key=lambda level: level[2])
        self.input_hw = input_hw

    def level(self, scores: np.ndarray, boxes: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __call__(self, outputs, settings: DecodeSettings) -> list[Detections]:
        decoded = [self.level(np.asarray(outputs[score], np.float32), np.asarray(outputs[box], np.float32), stride)
                   for score, box, stride in self.levels]
        boxes, scores = np.concatenate([b for b, _ in decoded], 1), np.concatenate([s for _, s in decoded], 1)
        return [multiclass_nms(boxes[b], scores[b], settings) for b in range(len(boxes))]


@register("gfl")
class GFL(PerLevel):
    """Per-level (scores, distributions) pairs."""

    def __init__(self, levels: list[tuple[str, str, int]], input_hw: tuple[int, int], logits: bool) -> None:
        super().__init__(levels, input_hw)
        self.logits = logits

    @classmethod
    def match(cls, outputs, input_hw, model) -> "GFL | None":
        arrays = float_arrays(outputs, 3)
        levels, classes, bins = [], set(), set()
        for count, names in _by_rows(outputs).items():
            pair = cls._score_and_distribution(names, arrays) if len(names) == 2 else None
            stride = _stride_of(count, input_hw, 1)
            if pair is None or stride is None:
                return None
            levels.append((*pair, stride))
            classes.add(arrays[pair[0]].shape[2])
            bins.add(arrays[pair[1]].shape[2])
        if not levels or len(classes) != 1 or len(bins) != 1:
            return None
        scores = np.concatenate([arrays[score].ravel() for score, _, _ in levels])
        return cls(levels, input_hw, logits=not is_probability(scores))

    @staticmethod
    def _score_and_distribution(names: list[str], arrays) -> tuple[str, str] | None:
        """Which of a level's two outputs holds the box distribution: the one whose last
        dim is 4 x bins; if both could be, the one that is not a probability map."""
        fits = [n for n in names if arrays[n].shape[2] % 4 == 0 and arrays[n].shape[2] // 4 >= 2]
        if len(fits) == 2:
            fits = [n for n in names if not is_probability(arrays[n])]
        if len(fits) != 1:
            return None
        dist = fits[0]
        return next(n for n in names if n != dist), dist

    def level(self, scores: np.ndarray, dist: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
        if self.logits:
            scores = 1.0 / (1.0 + np.exp(-np.clip(scores, -60, 60)))
        bins = dist.shape[-1] // 4
        dist = _softmax(dist.reshape(len(dist), -1, 4, bins), -1) @ np.arange(bins, dtype=np.float32) * stride
        centres = grid_centres(*self.input_hw, (stride,), offset=0.5)[0][None]
        return np.concatenate([centres - dist[..., :2], centres + dist[..., 2:]], -1), scores


@register("scrfd")
class Scrfd(PerLevel):
    """Per-level (scores, distances[, keypoints]) groups with A anchor points per cell."""

    def __init__(self, levels: list[tuple[str, str, int]], input_hw: tuple[int, int], per_cell: int) -> None:
        super().__init__(levels, input_hw)
        self.per_cell = per_cell

    @classmethod
    def match(cls, outputs, input_hw, model) -> "Scrfd | None":
        arrays, groups = float_arrays(outputs, 3), _by_rows(outputs)
        if len(groups) < 2:
            return None
        for per_cell in (1, 2, 3):
            levels = []
            for count, names in groups.items():
                distance = [n for n in names if arrays[n].shape[2] == 4]
                scores = [n for n in names if n not in distance and arrays[n].shape[2] < 4
                          and is_probability(arrays[n])]
                stride = _stride_of(count, input_hw, per_cell)
                if len(distance) != 1 or len(scores) != 1 or stride is None:
                    break
                levels.append((scores[0], distance[0], stride))
            else:
                if len({arrays[score].shape[2] for score, _, _ in levels}) == 1:
                    return cls(levels, input_hw, per_cell)
        return None

    def level(self, scores: np.ndarray, distance: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
        points = np.repeat(grid_centres(*self.input_hw, (stride,), offset=0.0)[0], self.per_cell, axis=0)[None]
        distance = distance * stride
        return np.concatenate([points - distance[..., :2], points + distance[..., 2:]], -1), scores
