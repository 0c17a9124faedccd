"""The accuracy check: a changed model (INT8, FP16) against its float original on
held-out data, through `compare`'s comparator and ONNX Runtime.

The float model runs once (`AccuracyCheck`); every candidate is then judged against
its kept outputs with two metrics: per output (and, for graphs ending in
NonMaxSuppression, the raw boxes/scores going into it) cosine, SQNR and max abs error;
for detectors (a decoder fits the outputs) detection agreement, the mAP@0.5 and
mAP@0.5:0.95 of the candidate's detections with the float model's detections above
`truth_threshold` as ground truth, and with a COCO annotation file, both models' true mAP.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..atomic import write_text
from ..backends import load_runner
from ..backends.onnx_file import load_model
from ..compare import OutputAgreement, OutputStats, compare_with, finite_or_none, run_reference
from ..progress import Progress
from .data import DataSource
from .decoders import DECODERS, DecodeSettings, pick_decoder
from .detection import CocoTruth, DetectionAgreement, class_names
from .graph import expose, measure_points

REPORT_FORMAT = "maedet-calib-report/1"


@dataclass
class Agreement:
    """How a changed model agrees with the float one on the held-out data."""

    outputs: dict[str, OutputStats]  # measure-point label -> statistics
    detection: dict[str, Any] | None = None
    decoder_note: str = ""  # why detection agreement is missing, when it is

    @property
    def metric(self) -> tuple[str, float]:
        """The number a target applies to: detection agreement mAP@0.5 for detectors,
        else the lowest output cosine."""
        if self.detection is not None and self.detection["agreement"]["map50"] is not None:
            return "map50", float(self.detection["agreement"]["map50"])
        cosines = [s.cosine for s in self.outputs.values() if s.cosine is not None]
        return "cosine", float(min(cosines)) if cosines else 1.0

    @property
    def map50_95(self) -> float | None:
        return self.detection["agreement"]["map50_95"] if self.detection else None

    def to_dict(self) -> dict[str, Any]:
        metric, value = self.metric
        out: dict[str, Any] = {
            "outputs": {label: {"cosine": s.cosine if s.cosine is not None else 0.0, "sqnr_db": finite_or_none(s.sqnr_db),
                                "max_abs_error": s.max_abs, "values": s.elements} for label, s in self.outputs.items()},
            "agreement": {"metric": metric, "value": value}}
        if self.detection is not None:
            out["detection"] = self.detection
        if self.decoder_note:
            out["decoder_note"] = self.decoder_note
        return out


@dataclass
class AccuracyCheck:
    """The float model's outputs on held-out data, kept to judge any number of candidates."""

    model: onnx.ModelProto
    data: DataSource
    decoder_name: str = "auto"
    settings: DecodeSettings = field(default_factory=DecodeSettings)
    truth_threshold: float = 0.3
    annotations: str | os.PathLike | None = None
    progress: Progress | None = None

    def __post_init__(self) -> None:
        self.points = measure_points(self.model)  # label -> tensor
        self.output_names = [o.name for o in self.model.graph.output]
        self.truth = CocoTruth(self.annotations, class_names(self.model)) if self.annotations else None
        with load_runner(expose(self.model, self.points.values()).SerializeToString()) as runner:
            self.reference = run_reference(runner, self.data, self.progress, "float model on held-out data")
        self.input_hw = input_hw(self.data)
        first = {name: self.reference.outputs[0][name] for name in self.output_names}
        self.decoder = pick_decoder(first, self.input_hw, self.model, self.decoder_name)
        self.decoder_note = "" if self.decoder is not None or self.decoder_name == "none" else (
            "no decoder fits the outputs (" + ", ".join(f"{k} {list(np.shape(v))}" for k, v in first.items())
            + f"): detection agreement not measured, outputs compared by cosine/SQNR only; "
              f"known layouts: {', '.join(DECODERS)}")

    def judge(self, candidate: str | os.PathLike | bytes | onnx.ModelProto, progress: Progress | None = None,
              what: str = "compare on held-out data") -> Agreement:
        model = load_model(candidate)
        made = {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.input}
        points = {label: tensor for label, tensor in self.points.items() if tensor in made}
        tensors = OutputAgreement(names=set(points.values()))
        metrics: list = [tensors]
        detection = None
        if self.decoder is not None:
            detection = DetectionAgreement(self.decoder, self.settings, self.truth_threshold, self.input_hw,
                                           self.output_names)
            metrics.append(detection)
        with load_runner(expose(model, points.values()).SerializeToString()) as runner:
            compare_with(self.reference, runner, metrics, progress, what)
        stats = tensors.by_reference_name()
        return Agreement({label: stats[t] for label, t in points.items() if t in stats},
                         detection.result(self.truth) if detection else None, self.decoder_note)


def input_hw(data: DataSource) -> tuple[int, int]:
    """Network input height and width: the image spec's size, else the first 4-D float
    feed read as NCHW."""
    spec = getattr(data, "spec", None)
    if spec is not None and spec.size is not None:
        return tuple(spec.size)  # type: ignore[return-value]
    for array in next(iter(data)).feed.values():
        if array.ndim == 4 and np.issubdtype(array.dtype, np.floating):
            return int(array.shape[2]), int(array.shape[3])
    return 0, 0


def accuracy_report(reference: str | os.PathLike | bytes | onnx.ModelProto,
                    candidate: str | os.PathLike | bytes | onnx.ModelProto, data: DataSource, *,
                    decoder: str = "auto", settings: DecodeSettings | None = None, truth_threshold: float = 0.3,
                    annotations: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> dict:
    """Compare `candidate` (quantized) with `reference` (float) on held-out `data`; the JSON
    report is written atomically to `out` when given."""
    check = AccuracyCheck(load_model(reference), data, decoder, settings or DecodeSettings(), truth_threshold,
                          annotations)
    report = {"format": REPORT_FORMAT, "held_out": data.num_samples, "held_out_names": data.names(),
              **check.judge(candidate).to_dict()}
    if out is not None:
        write_report(report, out)
    return report


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    write_text(path, json.dumps(report, indent=2, default=str) + "\n")
