"""Typed results the stages hand each other and the report: each is read out of the stage's
own report exactly once (`from_report`), and stored in the stage marker as a dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


class Record:
    """A dataclass stored in a stage marker: `to_dict()` there, `from_dict()` back."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return cls(**{f.name: data[f.name] for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class SearchResult(Record):
    best: dict[str, Any]          # the winner as the search reports it: score, params, flops, layers, blocks
    candidates: int
    target: str                   # where latency was measured, e.g. onnxruntime/fp32/b1/t1
    seed_ms: float                # the seed structure, measured
    winner: dict[str, Any]        # rank, score, predicted_ms, measured_ms, error_pct
    measured: int                 # new measurements
    cached: int                   # measurements found in the latency cache
    time_s: dict[str, float | None]

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> "SearchResult":
        latency = report["latency"]
        return cls(report["best"], report["candidates"], latency["settings"]["target"], latency["seed_measured_ms"],
                   latency["winner"], latency["measurements"]["measured"], latency["measurements"]["cached"],
                   {key: latency["time_s"].get(key) for key in ("profile", "scoring", "predicting", "measuring")})


@dataclass(frozen=True)
class Backbone(Record):
    """A backbone's figures at the run's input size."""

    name: str
    score: float
    params: int
    flops: int
    layers: int


@dataclass(frozen=True)
class ExportResult(Record):
    detector: str                 # file names in the export folder
    baseline: str
    detector_report: dict[str, Any]
    baseline_report: dict[str, Any]
    baseline_backbone: dict[str, Any]

    @property
    def baseline_figures(self) -> Backbone:
        return Backbone.from_dict(self.baseline_backbone)


@dataclass(frozen=True)
class CalibrationResult(Record):
    """The calibrate stage's figures, from calib's typed result (`from_calibration`)."""

    int8: str                     # file name in the calibrate folder
    method: str
    placement: str | None
    calibration_images: int
    holdout_images: int
    quantized_layers: int | None
    float_layers: int | None
    int8_mac_share: float | None  # of the conv MACs, in INT8 layers
    raw_min_cosine: float | None  # before NMS: errors there are smooth, after it one box can swap
    raw_min_sqnr_db: float | None
    map50: float | None
    map50_95: float | None

    @classmethod
    def from_calibration(cls, int8_file: str, result: Any) -> "CalibrationResult":
        """From `calib.CalibrationResult`; the raw outputs' figures are the NMS inputs' (all outputs
        when the graph has no NMS)."""
        from ..calib.graph import is_nms_input

        outputs = result.report.get("outputs") or {}
        raw = [o for name, o in outputs.items() if is_nms_input(name)] or list(outputs.values())
        lowest = lambda key: min((o[key] for o in raw if o.get(key) is not None), default=None)  # noqa: E731
        return cls(int8_file, result.method, result.placement, len(result.calibration_images),
                   len(result.held_out_images), result.quantized_layers, result.float_layers, result.int8_mac_share,
                   lowest("cosine"), lowest("sqnr_db"), result.map50, result.map50_95)


@dataclass(frozen=True)
class BenchLine(Record):
    """One bench row: a model's network (up to the NMS inputs) or end to end, against the baseline."""

    model: str
    part: str
    median_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float
    cv: float
    speedup_vs_baseline: float
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)   # the bench's whole row


@dataclass(frozen=True)
class BenchSummary(Record):
    lines: list[BenchLine]
    baseline: str                 # the baseline's model name
    seconds: float
    rounds: int
    warnings: list[str]
    fingerprint: dict[str, Any]

    @classmethod
    def from_bench(cls, data: dict[str, Any], baseline: str, seconds: float, separator: str) -> "BenchSummary":
        """From a bench result whose runners are named '<model><separator><part>'."""
        rows = data["results"]
        split = [row["runner"].split(separator) for row in rows]
        reference = {part: row["median_ms"] for (model, part), row in zip(split, rows) if model == baseline}
        lines = [BenchLine(model, part, row["median_ms"], row["p90_ms"], row["p99_ms"], row["images_per_s"],
                           row["cv"], reference[part] / row["median_ms"], list(row.get("warnings", [])), row)
                 for (model, part), row in zip(split, rows)]
        return cls(lines, baseline, seconds, data["settings"]["rounds"], list(data.get("warnings", [])),
                   data["fingerprint"])

    def line(self, model: str, part: str) -> BenchLine:
        return next(line for line in self.lines if (line.model, line.part) == (model, part))
