"""Layouts with separate box and score outputs.

- `end_to_end`: num_dets / det_boxes / det_scores / det_classes, what our exporter
  writes with NMS in the graph (and TensorRT's EfficientNMS-style exports);
- `boxes_scores`: boxes [B, N, 4] xyxy in pixels + scores [B, N, C] (our exporter
  without NMS, DAMO-YOLO);
- `detr`: DETR-style set prediction (RT-DETR, D-FINE): boxes [B, Q, 4] as normalized
  cx, cy, w, h + class logits or probabilities [B, Q, C]; no NMS (one query, one object).
"""

from __future__ import annotations

import numpy as np

from .base import DecodeSettings, Detections, float_arrays, is_probability, multiclass_nms, register, xywh_to_xyxy


@register("end_to_end")
class NmsOutputs:
    NAMES = ("num_dets", "det_boxes", "det_scores", "det_classes")

    @classmethod
    def match(cls, outputs, input_hw, model) -> "NmsOutputs | None":
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


@register("boxes_scores")
class BoxesScores:
    @classmethod
    def match(cls, outputs, input_hw, model) -> "BoxesScores | None":
        boxes, scores = outputs.get("boxes"), outputs.get("scores")
        if boxes is None or scores is None or boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.ndim != 3:
            return None
        return cls() if boxes.shape[:2] == scores.shape[:2] else None

    def __call__(self, outputs, settings: DecodeSettings) -> list[Detections]:
        boxes, scores = np.asarray(outputs["boxes"], np.float32), np.asarray(outputs["scores"], np.float32)
        return [multiclass_nms(boxes[b], scores[b], settings) for b in range(boxes.shape[0])]


@register("detr")
class Detr:
    def __init__(self, boxes: str, scores: str, input_hw: tuple[int, int], logits: bool) -> None:
        self.boxes, self.scores, self.input_hw, self.logits = boxes, scores, input_hw, logits

    @classmethod
    def match(cls, outputs, input_hw, model) -> "Detr | None":
        arrays = float_arrays(outputs, 3)
        if len(arrays) != 2:
            return None
        (first, a), (second, b) = arrays.items()
        boxes, scores = (first, second) if a.shape[2] == 4 else (second, first)
        if arrays[boxes].shape[2] != 4 or a.shape[:2] != b.shape[:2] or arrays[scores].shape[2] == 4:
            return None
        normalized = arrays[boxes].size and float(arrays[boxes].min()) >= -0.05 and float(arrays[boxes].max()) <= 1.05
        return cls(boxes, scores, input_hw, not is_probability(arrays[scores])) if normalized else None

    def __call__(self, outputs, settings: DecodeSettings) -> list[Detections]:
        height, width = self.input_hw
        boxes = xywh_to_xyxy(np.asarray(outputs[self.boxes], np.float32)) * np.float32([width, height, width, height])
        scores = np.asarray(outputs[self.scores], np.float32)
        if self.logits:
            scores = 1.0 / (1.0 + np.exp(-np.clip(scores, -60, 60)))
        out = []
        for image_boxes, image_scores in zip(boxes, scores):
            classes = image_scores.argmax(1)
            best = image_scores[np.arange(len(classes)), classes]
            order = np.argsort(-best, kind="stable")
            order = order[best[order] >= settings.score_threshold][:settings.max_detections]
            out.append(Detections(image_boxes[order], best[order], classes[order].astype(np.int64)))
        return out
