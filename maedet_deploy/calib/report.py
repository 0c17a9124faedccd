"""The accuracy report: a changed model (INT8, FP16) against its float original
on held-out data, through ONNX Runtime.

Per output (and, for graphs ending in NonMaxSuppression, the raw boxes/scores
going into it): cosine, SQNR (dB), max abs error. For detectors (a decoder from
`decoders` fits the outputs): detection agreement, the mAP@0.5 and
mAP@0.5:0.95 of the changed model's detections with the float model's
detections above `truth_threshold` as ground truth; with a COCO annotation
file, the true mAP of both.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import onnx

from ..atomic import write_text
from ..backends import load_runner
from .data import Batch, DataSource
from .decoders import DecodeSettings, Detections, pick_decoder
from .graph import expose, load_model, measure_points
from .metrics import CocoTruth, TensorAgreement, class_names, coco_map

REPORT_FORMAT = "maedet-calib-report/1"
Progress = Callable[[str, int, int], None]


class Evaluator:
    """Runs a float model once over held-out data and keeps what comparisons need
    (its measured tensors and detections), so many candidates compare cheaply.
    The data is read again for each comparison (it must iterate the same way)."""

    def __init__(self, reference: str | os.PathLike | bytes | onnx.ModelProto, data: DataSource,
                 decoder: str = "auto", settings: DecodeSettings | None = None, truth_threshold: float = 0.3,
                 annotations: str | os.PathLike | None = None, progress: Progress | None = None) -> None:
        self.model = load_model(reference)
        self.data = data
        self.settings = settings or DecodeSettings()
        self.truth_threshold = truth_threshold
        self.points = measure_points(self.model)
        self.output_names = [o.name for o in self.model.graph.output]
        self.names = class_names(self.model)
        self.truth = CocoTruth(annotations, self.names) if annotations else None
        self.decoder_name = decoder
        self.decoder = None
        # per batch: the measured tensors and detections (feeds are re-read, not kept)
        self.batches: list[tuple[dict[str, np.ndarray], list[Detections]]] = []
        runner = load_runner(expose(self.model, self.points.values()).SerializeToString(), "onnxruntime")
        total = len(data)
        for index, batch in enumerate(data):
            outputs = runner.infer(batch.feed)
            if index == 0:
                self.input_hw = _input_hw(batch)
                self.decoder = pick_decoder({k: outputs[k] for k in self.output_names}, self.input_hw,
                                            self.model, decoder)
            measured = {label: outputs[name] for label, name in self.points.items()}
            self.batches.append((measured, self._detect(outputs, batch)))
            if progress:
                progress("reference", index + 1, total)
        runner.close()

    def _detect(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[Detections]:
        if self.decoder is None:
            return []
        return self.decoder({k: outputs[k] for k in self.output_names}, self.settings)[:batch.valid]

    @property
    def is_detector(self) -> bool:
        return self.decoder is not None

    def compare(self, candidate: str | os.PathLike | bytes | onnx.ModelProto, progress: Progress | None = None,
                label: str = "candidate") -> dict[str, Any]:
        """Tensor and detection agreement of `candidate` with the reference."""
        model = load_model(candidate)
        points = {k: v for k, v in measure_points(model).items() if k in self.points}
        runner = load_runner(expose(model, points.values()).SerializeToString(), "onnxruntime")
        stats = {k: TensorAgreement() for k in points}
        truth, predictions, ref_dets, images = {}, {}, {}, []
        for index, (batch, (reference, ref_detections)) in enumerate(zip(self.data, self.batches)):
            outputs = runner.infer(batch.feed)
            for key, name in points.items():
                ref, got = reference[key], outputs[name]
                if ref.ndim and ref.shape[0] == len(batch.metas) and got.shape[0] == len(batch.metas):
                    ref, got = ref[:batch.valid], got[:batch.valid]
                stats[key].add(ref, got)
            if self.decoder is not None:
                for position, (ref_det, det) in enumerate(zip(ref_detections, self._detect(outputs, batch))):
                    image_id = len(images) + 1
                    images.append((image_id, *self.input_hw, batch.metas[position]))
                    truth[image_id] = ref_det.above(self.truth_threshold)
                    predictions[image_id] = det
                    ref_dets[image_id] = ref_det
            if progress:
                progress(label, index + 1, len(self.batches))
        runner.close()
        report: dict[str, Any] = {"outputs": {k: s.to_dict() for k, s in stats.items()}}
        if self.decoder is not None:
            agreement = coco_map([(i, h, w) for i, h, w, _ in images], truth, predictions)
            report["detection"] = {
                "decoder": self.decoder.name,
                "settings": {**asdict(self.settings), "truth_threshold": self.truth_threshold},
                "float_detections": sum(len(d) for d in truth.values()),
                "candidate_detections": sum(len(d.above(self.truth_threshold)) for d in predictions.values()),
                "agreement": {"map50": agreement["map50"], "map50_95": agreement["map50_95"]},
            }
            if self.truth is not None:
                report["detection"]["annotations"] = self._true_map(images, ref_dets, predictions)
        report["_stats"] = stats
        return report

    def _true_map(self, images, ref_dets, predictions) -> dict[str, Any]:
        assert self.truth is not None
        mapped = {i: self.truth.image_id(meta.path) for i, _, _, meta in images if meta is not None}
        found = {i: coco_id for i, coco_id in mapped.items() if coco_id is not None}
        out: dict[str, Any] = {"file": str(self.truth.path), "images_matched": len(found),
                               "class_mapping": self.truth.class_mapping}
        if not found:
            return {**out, "float": None, "candidate": None}
        metas = {i: meta for i, _, _, meta in images}
        for key, dets in (("float", ref_dets), ("candidate", predictions)):
            original = {coco_id: Detections(metas[i].to_original(dets[i].boxes), dets[i].scores, dets[i].classes)
                        for i, coco_id in found.items()}
            out[key] = self.truth.evaluate(original)
        return out


def _input_hw(batch: Batch) -> tuple[int, int]:
    """Network input height and width: from the image metadata when present, else the
    first 4-D float feed read as NCHW."""
    for array in batch.feed.values():
        if array.ndim == 4 and np.issubdtype(array.dtype, np.floating):
            return int(array.shape[2]), int(array.shape[3])
    return 0, 0


def agreement_score(report: dict[str, Any]) -> tuple[str, float]:
    """The number a target applies to: detection agreement mAP@0.5 for detectors,
    else the lowest output cosine."""
    detection = report.get("detection")
    if detection is not None and detection["agreement"]["map50"] is not None:
        return "map50", float(detection["agreement"]["map50"])
    cosines = [v["cosine"] for v in report["outputs"].values() if v["cosine"] is not None]
    return "cosine", float(min(cosines)) if cosines else 1.0


def accuracy_report(reference: str | os.PathLike | bytes | onnx.ModelProto,
                    candidate: str | os.PathLike | bytes | onnx.ModelProto, data: DataSource, *,
                    decoder: str = "auto", settings: DecodeSettings | None = None, truth_threshold: float = 0.3,
                    annotations: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                    extra: dict[str, Any] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Compare `candidate` (quantized) with `reference` (float) on held-out `data`;
    the JSON report is written atomically to `out` when given."""
    evaluator = Evaluator(reference, data, decoder, settings, truth_threshold, annotations, progress)
    report = finish_report(evaluator, evaluator.compare(candidate, progress, "compare"), extra)
    if out is not None:
        write_report(report, out)
    return report


def finish_report(evaluator: Evaluator, comparison: dict[str, Any], extra: dict[str, Any] | None = None) -> dict:
    comparison = {k: v for k, v in comparison.items() if not k.startswith("_")}
    metric, value = agreement_score(comparison)
    return {"format": REPORT_FORMAT, "held_out": evaluator.data.num_samples,
            "held_out_names": evaluator.data.names(), **comparison,
            "agreement": {"metric": metric, "value": value}, **(extra or {})}


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    write_text(path, json.dumps(report, indent=2, default=str) + "\n")
