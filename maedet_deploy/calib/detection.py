"""Detection agreement between a reference (float) model and a changed (quantized) one:
a metric for `compare`'s comparator.

COCO evaluation (faster-coco-eval): the float model's detections above a confidence
threshold are the ground truth for the changed model's detections, which needs no
labels; with a COCO annotation file, both models' true mAP as well.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import MaedetError
from ..inputs import Batch, ImageMeta
from .decoders import DecodeSettings, Decoder, Detections


def _coco_boxes(det: Detections) -> list[list[float]]:
    boxes = np.asarray(det.boxes, dtype=np.float64)
    return [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes]


def coco_map(images: Sequence[tuple[int, int, int]], truth: Mapping[int, Detections],
             predictions: Mapping[int, Detections], category_of=lambda c: int(c) + 1,
             categories: Sequence[int] | None = None) -> dict[str, float | None]:
    """mAP@0.5 and mAP@0.5:0.95 of `predictions` against `truth` (image id -> detections;
    truth scores are ignored). `images` are (id, height, width). None when truth is empty."""
    from faster_coco_eval import COCO

    gt_annotations = []
    for image_id, det in truth.items():
        for box, cls in zip(_coco_boxes(det), det.classes):
            gt_annotations.append({"id": len(gt_annotations) + 1, "image_id": image_id, "bbox": box,
                                   "area": box[2] * box[3], "category_id": category_of(cls), "iscrowd": 0})
    if not gt_annotations:
        return {"map50": None, "map50_95": None, "truth_boxes": 0}
    results = [{"image_id": image_id, "bbox": box, "score": float(score), "category_id": category_of(cls)}
               for image_id, det in predictions.items()
               for box, score, cls in zip(_coco_boxes(det), det.scores, det.classes)]
    used = categories or sorted({a["category_id"] for a in gt_annotations} | {r["category_id"] for r in results})
    gt = COCO({"images": [{"id": i, "height": h, "width": w} for i, h, w in images],
               "annotations": gt_annotations, "categories": [{"id": c, "name": str(c)} for c in used]},
              print_function=lambda *a, **k: None)
    return {**_evaluate(gt, results), "truth_boxes": len(gt_annotations)}


def _evaluate(gt, results: list[dict], image_ids: Sequence[int] | None = None) -> dict[str, float | None]:
    from faster_coco_eval import COCOeval_faster

    dt = gt.loadRes(results) if results else gt.loadRes([])
    evaluator = COCOeval_faster(gt, dt, "bbox", print_function=lambda *a, **k: None)
    if image_ids is not None:
        evaluator.params.imgIds = list(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    map50_95, map50 = float(evaluator.stats[0]), float(evaluator.stats[1])
    return {"map50": map50 if map50 >= 0 else None, "map50_95": map50_95 if map50_95 >= 0 else None}


def class_names(model) -> list[str] | None:
    """Class names from ONNX metadata: Paddle's `character` (one per line), Ultralytics'
    `names` (a dict literal), or a `classes`/`labels` list."""
    if model is None:
        return None
    props = {p.key: p.value for p in model.metadata_props}
    for key in ("names", "classes", "labels", "character"):
        value = props.get(key)
        if not value:
            continue
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, dict):
            return [str(parsed[k]) for k in sorted(parsed)]
        if isinstance(parsed, (list, tuple)):
            return [str(v) for v in parsed]
        separator = "\n" if "\n" in value else ","
        lines = [part.strip() for part in value.split(separator) if part.strip()]
        if lines:
            return lines
    return None


class CocoTruth:
    """A COCO annotation file, matched to our images by file name and to model
    classes by name (when the model carries class names) or by sorted category id."""

    def __init__(self, path: str | os.PathLike, names: list[str] | None = None) -> None:
        from faster_coco_eval import COCO

        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MaedetError(f"cannot read COCO annotations {path}: {exc}") from None
        if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
            raise MaedetError(f"{path} is not a COCO detection file (needs images, annotations, categories)")
        self.path = path
        self.coco = COCO(data, print_function=lambda *a, **k: None)
        self.by_name = {}
        for image in data["images"]:
            self.by_name.setdefault(Path(image["file_name"]).as_posix(), image["id"])
            self.by_name.setdefault(Path(image["file_name"]).name, image["id"])
        categories = sorted(data["categories"], key=lambda c: c["id"])
        by_category_name = {c["name"]: c["id"] for c in categories}
        if names and all(n in by_category_name for n in names):
            self.category_ids = [by_category_name[n] for n in names]
            self.class_mapping = "by name"
        else:
            self.category_ids = [c["id"] for c in categories]
            self.class_mapping = "by sorted category id"

    def image_id(self, path: str) -> int | None:
        posix = Path(path).as_posix()
        for key, image_id in self.by_name.items():
            if posix == key or posix.endswith("/" + key):
                return image_id
        return None

    def category(self, cls: int) -> int:
        return self.category_ids[cls] if 0 <= cls < len(self.category_ids) else -1

    def both_maps(self, metas: Mapping[int, ImageMeta | None], reference: Mapping[int, Detections],
                  candidate: Mapping[int, Detections]) -> dict[str, Any]:
        """True mAP of both models on the images this file annotates (matched by file name)."""
        found = {i: coco_id for i, meta in metas.items() if meta is not None
                 and (coco_id := self.image_id(meta.path)) is not None}
        out: dict[str, Any] = {"file": str(self.path), "images_matched": len(found), "class_mapping": self.class_mapping}
        for key, dets in (("float", reference), ("candidate", candidate)):
            out[key] = self.evaluate({coco_id: Detections(metas[i].to_original(dets[i].boxes), dets[i].scores,
                                                          dets[i].classes) for i, coco_id in found.items()}) \
                if found else None
        return out

    def evaluate(self, predictions: Mapping[int, Detections]) -> dict[str, float | None]:
        """`predictions`: COCO image id -> detections in original-image pixels."""
        results = [{"image_id": image_id, "bbox": box, "score": float(score), "category_id": self.category(int(c))}
                   for image_id, det in predictions.items()
                   for box, score, c in zip(_coco_boxes(det), det.scores, det.classes)
                   if self.category(int(c)) >= 0]
        return _evaluate(self.coco, results, sorted(predictions))


@dataclass
class DetectionAgreement:
    """The comparator metric: both models' outputs decoded alike, per image the float
    detections above `truth_threshold` as truth and the candidate's as predictions."""

    decoder: Decoder
    settings: DecodeSettings
    truth_threshold: float
    input_hw: tuple[int, int]
    outputs: Sequence[str]  # the model's own outputs (what the decoder reads)
    images: list[tuple[int, ImageMeta | None]] = field(default_factory=list)
    reference: dict[int, Detections] = field(default_factory=dict)
    candidate: dict[int, Detections] = field(default_factory=dict)

    def add(self, batch: Batch, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> None:
        ref = self.decoder({k: reference[k] for k in self.outputs}, self.settings)[:batch.valid]
        pairs = zip(ref, self.decoder({k: candidate[k] for k in self.outputs}, self.settings))
        for position, (ref, got) in enumerate(pairs):
            image_id = len(self.images) + 1
            self.images.append((image_id, batch.metas[position]))
            self.reference[image_id], self.candidate[image_id] = ref, got

    def result(self, truth: "CocoTruth | None" = None) -> dict[str, Any]:
        height, width = self.input_hw
        expected = {i: d.above(self.truth_threshold) for i, d in self.reference.items()}
        agreement = coco_map([(i, height, width) for i, _ in self.images], expected, self.candidate)
        out: dict[str, Any] = {
            "decoder": self.decoder.name,
            "settings": {**asdict(self.settings), "truth_threshold": self.truth_threshold},
            "float_detections": sum(len(d) for d in expected.values()),
            "candidate_detections": sum(len(d.above(self.truth_threshold)) for d in self.candidate.values()),
            "agreement": {"map50": agreement["map50"], "map50_95": agreement["map50_95"]}}
        if truth is not None:
            out["annotations"] = truth.both_maps(dict(self.images), self.reference, self.candidate)
        return out
