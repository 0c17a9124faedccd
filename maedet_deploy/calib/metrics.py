"""Agreement between a reference (float) model and a changed (quantized) one.

Tensor metrics, accumulated over all held-out images of an output:
cosine similarity, SQNR in dB (10 log10 of signal energy over error energy) and
the largest absolute error. Detection metrics use COCO evaluation
(faster-coco-eval): the float model's detections above a confidence threshold
are the ground truth for the quantized model's detections, which needs no
labels; with a COCO annotation file, both models' true mAP.
"""

from __future__ import annotations

import ast
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import MaedetError
from .decoders import Detections


@dataclass
class TensorAgreement:
    """Running sums for one output over many batches."""

    dot: float = 0.0
    ref_energy: float = 0.0
    got_energy: float = 0.0
    noise_energy: float = 0.0
    max_abs_error: float = 0.0
    count: int = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        ref = np.asarray(ref, dtype=np.float64).ravel()
        got = np.asarray(got, dtype=np.float64).ravel()
        if ref.shape != got.shape:
            raise MaedetError(f"output shapes differ: {ref.size} vs {got.size} values")
        diff = ref - got
        self.dot += float(ref @ got)
        self.ref_energy += float(ref @ ref)
        self.got_energy += float(got @ got)
        self.noise_energy += float(diff @ diff)
        if diff.size:
            self.max_abs_error = max(self.max_abs_error, float(np.abs(diff).max()))
        self.count += ref.size

    @property
    def cosine(self) -> float:
        if self.ref_energy == 0 or self.got_energy == 0:
            return 1.0 if self.ref_energy == self.got_energy else 0.0
        return self.dot / math.sqrt(self.ref_energy * self.got_energy)

    @property
    def sqnr_db(self) -> float:
        if self.noise_energy == 0:
            return math.inf
        if self.ref_energy == 0:
            return -math.inf
        return 10.0 * math.log10(self.ref_energy / self.noise_energy)

    @property
    def noise_ratio(self) -> float:
        """Error energy over signal energy (linear; what SQNR is the inverse of)."""
        return self.noise_energy / self.ref_energy if self.ref_energy else (0.0 if self.noise_energy == 0 else math.inf)

    def to_dict(self) -> dict[str, float | None]:
        return {"cosine": _finite(self.cosine), "sqnr_db": _finite(self.sqnr_db),
                "max_abs_error": self.max_abs_error, "values": self.count}


def _finite(value: float) -> float | None:
    """JSON has no inf: +inf SQNR (identical outputs) is reported as null."""
    return value if math.isfinite(value) else None


def combined_sqnr_db(stats: Mapping[str, TensorAgreement]) -> float:
    """One number for several outputs: the SQNR of their mean error-to-signal ratio."""
    ratios = [s.noise_ratio for s in stats.values()]
    mean = sum(ratios) / len(ratios) if ratios else 0.0
    return math.inf if mean == 0 else -10.0 * math.log10(mean)


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

    def evaluate(self, predictions: Mapping[int, Detections]) -> dict[str, float | None]:
        """`predictions`: COCO image id -> detections in original-image pixels."""
        results = [{"image_id": image_id, "bbox": box, "score": float(score), "category_id": self.category(int(c))}
                   for image_id, det in predictions.items()
                   for box, score, c in zip(_coco_boxes(det), det.scores, det.classes)
                   if self.category(int(c)) >= 0]
        return _evaluate(self.coco, results, sorted(predictions))
