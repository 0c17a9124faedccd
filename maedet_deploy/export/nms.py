"""In-graph post-processing with the standard ONNX NonMaxSuppression op.

EfficientNMS_TRT is deprecated (TensorRT 10.12); the standard op runs in ONNX
Runtime and maps to TensorRT's NMS layer, so one graph serves both, with no
plugins. NonMaxSuppression is class-aware by construction (it runs per batch
item and per class on scores laid out [B, C, N]) and returns a variable number
of (batch, class, box) triples. To get fixed-size outputs without loops, the
selected scores are scattered into a zero [B, C*N] map, padded with K zero
columns so TopK(K) is valid whatever N is; TopK picks the K best per image,
already sorted, and a detection is real where its score is above zero
(NonMaxSuppression only keeps scores above the threshold, which is >= 0).
Padding: boxes and scores 0, classes -1; `num_dets` counts the real ones.
All ops (NonMaxSuppression, Gather, ScatterElements, TopK, GatherElements) are in
TensorRT's ONNX parser.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

OUTPUT_NAMES = ("num_dets", "det_boxes", "det_scores", "det_classes")


class NonMaxSuppression(torch.autograd.Function):
    """Eager: the ONNX op's semantics with torchvision's NMS; export: the ONNX op itself."""

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> torch.Tensor:
        """boxes [B, N, 4] corners, scores [B, C, N] -> selected (batch, class, box) [M, 3] int64."""
        selected = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                candidates = torch.nonzero(scores[b, c] > score_threshold).squeeze(1)
                if candidates.numel() == 0:
                    continue
                keep = torchvision.ops.nms(boxes[b, candidates], scores[b, c, candidates], iou_threshold)
                kept = candidates[keep[:max_per_class]]
                selected.append(torch.stack([torch.full_like(kept, b), torch.full_like(kept, c), kept], 1))
        if not selected:
            return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
        return torch.cat(selected)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
        def const(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op("NonMaxSuppression", boxes, scores, const(max_per_class, torch.int64),
                    const(iou_threshold, torch.float32), const(score_threshold, torch.float32),
                    center_point_box_i=0)


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, max_detections: int, iou_threshold: float,
                score_threshold: float) -> tuple[torch.Tensor, ...]:
    """(boxes [B,N,4], scores [B,N,C]) -> num_dets [B,1], det_boxes [B,K,4], det_scores [B,K], det_classes [B,K]."""
    batch, num_boxes, num_classes = scores.shape
    by_class = scores.transpose(1, 2)  # [B, C, N], the op's layout
    selected = NonMaxSuppression.apply(boxes, by_class, max_detections, iou_threshold, score_threshold)
    # Flat indices into [B, C, N], all non-negative: plain Gather/ScatterElements and
    # truncating division keep the graph free of negative-index and floor-division guards.
    index = (selected[:, 0] * num_classes + selected[:, 1]) * num_boxes + selected[:, 2]
    flat = by_class.flatten()
    kept = torch.zeros_like(flat).scatter(0, index, flat.gather(0, index)).reshape(batch, -1)
    kept = nn.functional.pad(kept, (0, max_detections))
    det_scores, top = kept.topk(max_detections, dim=1)
    valid = det_scores > 0
    det_classes = torch.where(valid, torch.div(top, num_boxes, rounding_mode="trunc"), -1)
    picked = (top % num_boxes).unsqueeze(-1).expand(-1, -1, 4)
    det_boxes = boxes.gather(1, picked) * valid.unsqueeze(-1).to(boxes.dtype)
    num_dets = valid.to(torch.int64).sum(1, keepdim=True)
    return num_dets, det_boxes, det_scores, det_classes


class EndToEnd(nn.Module):
    """A detector followed by NMS: images -> num_dets, det_boxes, det_scores, det_classes."""

    def __init__(self, detector: nn.Module, max_detections: int = 100, iou_threshold: float = 0.6,
                 score_threshold: float = 0.25) -> None:
        super().__init__()
        self.detector = detector
        self.max_detections = max_detections
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        boxes, scores = self.detector(images)
        return postprocess(boxes, scores, self.max_detections, self.iou_threshold, self.score_threshold)
