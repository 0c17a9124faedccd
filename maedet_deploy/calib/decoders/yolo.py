"""The YOLO family's single-tensor layouts.

- `ultralytics`: YOLOv8/YOLO11 `[B, 4+C, N]` (or `[B, N, 4+C]`): cx, cy, w, h in
  input pixels, then C class probabilities; one row per grid cell of strides 8/16/32.
- `yolov5`: YOLOv5/YOLOv7 `[B, N, 5+C]` decoded in the graph: cx, cy, w, h, objectness,
  class probabilities (score = objectness x class); three anchors per cell (or one,
  as YOLOX and YOLOv6 exports that decode in the graph).
- `yolox`: YOLOX `[B, N, 5+C]` left raw (the grid decode happens outside the model):
  cell offsets, log sizes in strides, objectness, class probabilities.
- `end_to_end_rows`: end-to-end exports `[B, K, 6]` (YOLOv10, Ultralytics `nms=True`):
  x1, y1, x2, y2, score, class per kept detection.

Telling `[B, N, 5+C]` layouts apart: the row count says anchors per cell (3 or 1), and
decoded centres span the image while raw cell offsets stay within a few units.
"""

from __future__ import annotations

import numpy as np

from .base import (DecodeSettings, Detections, Outputs, float_arrays, grid_centres, is_probability, level_strides,
                   metadata, multiclass_nms, register, ultralytics_classes, xywh_to_xyxy)


class SingleOutput:
    """A layout of one rank-3 output: `match` finds the model's only one, `fits` says
    whether this layout reads it (and how)."""

    def __init__(self, output: str) -> None:
        self.output = output

    @classmethod
    def match(cls, outputs: Outputs, input_hw: tuple[int, int], model) -> "SingleOutput | None":
        arrays = float_arrays(outputs, 3)
        return cls.fits(*next(iter(arrays.items())), input_hw, model) if len(arrays) == 1 else None

    @classmethod
    def fits(cls, name: str, rows: np.ndarray, input_hw: tuple[int, int], model) -> "SingleOutput | None":
        raise NotImplementedError


def looks_raw(rows: np.ndarray, input_hw: tuple[int, int]) -> bool:
    """Cell offsets (raw) rather than centres in pixels (decoded)."""
    return float(np.percentile(np.abs(rows[..., :2]), 95)) < min(input_hw) / 16


def _nms_per_image(boxes: np.ndarray, scores: np.ndarray, settings: DecodeSettings) -> list[Detections]:
    return [multiclass_nms(boxes[b], scores[b], settings) for b in range(boxes.shape[0])]


@register("ultralytics")
class Ultralytics(SingleOutput):
    def __init__(self, output: str, transposed: bool) -> None:
        super().__init__(output)
        self.transposed = transposed

    @classmethod
    def fits(cls, name, rows, input_hw, model) -> "Ultralytics | None":
        declared = ultralytics_classes(model)
        for transposed in (False, True):
            count, width = (rows.shape[1], rows.shape[2]) if transposed else (rows.shape[2], rows.shape[1])
            if width < 5 or level_strides(*input_hw, count) is None:
                continue
            if (declared is None and transposed) or (declared is not None and width != 4 + declared):
                continue  # [B, N, 4+C] without Ultralytics metadata reads as YOLOv5's [B, N, 5+C] just as well
            table = rows if transposed else rows.transpose(0, 2, 1)
            if is_probability(table[..., 4:]):
                return cls(name, transposed)
        return None

    def __call__(self, outputs, settings: DecodeSettings) -> list[Detections]:
        rows = np.asarray(outputs[self.output], np.float32)
        table = rows if self.transposed else rows.transpose(0, 2, 1)
        return _nms_per_image(xywh_to_xyxy(table[..., :4]), table[..., 4:], settings)


@register("yolov5")
class Yolov5(SingleOutput):
    @classmethod
    def fits(cls, name, rows, input_hw, model) -> "Yolov5 | None":
        if rows.shape[2] < 6 or looks_raw(rows, input_hw) or not is_probability(rows[..., 4:]):
            return None
        per_cell = [a for a in (3, 1) if level_strides(*input_hw, rows.shape[1], a) is not None]
        return cls(name) if per_cell else None

    def __call__(self, outputs, settings: DecodeSettings) -> list[Detections]:
        rows = np.asarray(outputs[self.output], np.float32)
        return _nms_per_image(xywh_to_xyxy(rows[..., :4]), rows[..., 4:5] * rows[..., 5:], settings)


@register("yolox")
class Yolox(SingleOutput):
    def __init__(self, output: str, input_hw: tuple[int, int], strides: tuple[int, ...]) -> None:
        super().__init__(output)
        self.centres, self.strides = grid_centres(*input_hw, strides, offset=0.0)

    @classmethod
    def fits(cls, name, rows, input_hw, model) -> "Yolox | None":
        strides = level_strides(*input_hw, rows.shape[1])
        if rows.shape[2] < 6 or strides is None or not looks_raw(rows, input_hw):
            return None
        return cls(name, input_hw, strides) if is_probability(rows[..., 4:]) else None

    def __call__(self, outputs, settings: DecodeSettings) -> list[Detections]:
        rows = np.asarray(outputs[self.output], np.float32)
        centres = rows[..., :2] * self.strides + self.centres
        sizes = np.exp(np.minimum(rows[..., 2:4], 20.0)) * self.strides
        boxes = xywh_to_xyxy(np.concatenate([centres, sizes], -1))
        return _nms_per_image(boxes, rows[..., 4:5] * rows[..., 5:], settings)


@register("end_to_end_rows")
class EndToEndRows(SingleOutput):
    @classmethod
    def fits(cls, name, rows, input_hw, model) -> "EndToEndRows | None":
        if rows.shape[2] != 6 or level_strides(*input_hw, rows.shape[1], 3) or level_strides(*input_hw, rows.shape[1]):
            return None
        classes = rows[..., 5]
        if not np.array_equal(classes, np.round(classes)) or not is_probability(rows[..., 4]):
            return None
        declared = metadata(model).get("end2end")
        return None if declared == "False" else cls(name)

    def __call__(self, outputs, settings: DecodeSettings) -> list[Detections]:
        rows = np.asarray(outputs[self.output], np.float32)
        out = []
        for image in rows:
            keep = image[:, 4] >= settings.score_threshold
            kept = image[keep][np.argsort(-image[keep][:, 4], kind="stable")][:settings.max_detections]
            out.append(Detections(kept[:, :4].copy(), kept[:, 4].copy(), kept[:, 5].astype(np.int64)))
        return out
