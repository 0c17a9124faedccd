"""One calibration job, end to end, as `maedet-deploy calibrate` and the pipeline run it:
data -> INT8 (Q/DQ) or FP16 model -> optional partial quantization -> accuracy
report, TensorRT calibration cache and latency. Every file is written
atomically, and only after all the work succeeded, so a failed run leaves none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx

from ..errors import MaedetError
from .data import DataSource, ImageData, open_data
from .decoders import DecodeSettings
from .fp16 import FP32_OPS, convert_fp16
from .graph import load_model, resolve_exclusions
from .int8 import METHODS, PLACEMENTS, calibrate, exclusions, prepare, qdq_summary, quantize_qdq, save_model
from .partial import partial_quantize
from .preprocess import PreprocessSpec
from .report import REPORT_FORMAT, Evaluator, finish_report, write_report
from .trt_cache import write_calibration_cache

PRECISIONS = ("int8", "fp16")
Progress = Callable[[str, int, int], None]


@dataclass
class CalibrateSettings:
    model: Path
    images: Path  # an image folder or an .npy/.npz file
    out: Path
    precision: str = "int8"
    method: str = "entropy"
    percentile: float = 99.99
    num_images: int | None = 256
    seed: int = 0
    holdout: int = 0
    spec: PreprocessSpec = field(default_factory=PreprocessSpec)
    exclude: tuple[str, ...] = ()
    default_exclusions: bool = True
    placement: str = "tensorrt"
    per_channel: bool = True
    preprocess_model: bool = True
    target_agreement: float | None = None
    sensitivity_images: int = 2
    report: Path | None = None
    annotations: Path | None = None
    calibration_cache: Path | None = None
    trt_version: str = "8.6.1"
    decoder: str = "auto"
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    truth_threshold: float = 0.3
    latency_seconds: float = 0.0  # > 0: time float and converted models with the bench loop

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise MaedetError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.method not in METHODS:
            raise MaedetError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.placement not in PLACEMENTS:
            raise MaedetError(f"--placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.target_agreement is not None:
            if not 0 < self.target_agreement <= 1:
                raise MaedetError(f"--target-agreement must be in (0, 1], got {self.target_agreement}")
            if self.precision != "int8":
                raise MaedetError("--target-agreement applies to --precision int8")
        if (self.target_agreement is not None or self.annotations is not None) and self.holdout < 1:
            raise MaedetError("--target-agreement and --annotations need held-out images: give --holdout N")
        if self.calibration_cache is not None and self.precision != "int8":
            raise MaedetError("--calibration-cache applies to --precision int8")
        if self.sensitivity_images < 1:
            raise MaedetError("--sensitivity-images must be at least 1")
        if Path(self.out).resolve() == Path(self.model).resolve():
            raise MaedetError("--out must differ from the input model")


def _latency(reference: onnx.ModelProto, candidate: onnx.ModelProto, data: DataSource, seconds: float,
             rounds: int = 2) -> dict[str, Any]:
    """Median latency of both models on one real batch, with the product's bench loop,
    alternating `rounds` times so drift hits both alike."""
    from ..backends import load_runner
    from ..bench import measure

    feed = next(iter(data)).feed
    runners = {"float": load_runner(reference.SerializeToString(), "onnxruntime"),
               "converted": load_runner(candidate.SerializeToString(), "onnxruntime")}
    medians: dict[str, list[float]] = {key: [] for key in runners}
    warnings: list[str] = []
    for _ in range(rounds):
        for key, runner in runners.items():
            stats = measure(runner, feed, duration=seconds / (2 * rounds))
            medians[key].append(stats.median_ms)
            warnings.extend(f"{key}: {w}" for w in stats.warnings)
    for runner in runners.values():
        runner.close()
    float_ms = sum(medians["float"]) / rounds
    converted_ms = sum(medians["converted"]) / rounds
    return {"backend": "onnxruntime", "device": "cpu", "float_median_ms": float_ms,
            "converted_median_ms": converted_ms, "ratio": converted_ms / float_ms,
            "rounds": medians, "warnings": sorted(set(warnings))}


def run_calibration(settings: CalibrateSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Run the job; returns the summary (the report's content, plus output paths)."""
    settings.check()
    started = time.perf_counter()
    original = load_model(settings.model)
    calib_data, held_out = open_data(settings.images, original, settings.spec, settings.num_images,
                                     settings.holdout, settings.seed)
    summary: dict[str, Any] = {
        "model": str(settings.model), "output": str(settings.out), "precision": settings.precision,
        "calibration_samples": calib_data.num_samples, "held_out": held_out.num_samples if held_out else 0,
        "calibration_names": calib_data.names(), "seed": settings.seed,
        "preprocess": calib_data.spec.to_dict() if isinstance(calib_data, ImageData) else None,
    }

    evaluator = None
    if held_out is not None:
        evaluator = Evaluator(original, held_out, settings.decoder, settings.decode, settings.truth_threshold,
                              settings.annotations, progress)

    if settings.precision == "fp16":
        user_blocks = resolve_exclusions(original, settings.exclude)
        result = convert_fp16(original, keep_io_types=True,
                              block_ops=FP32_OPS if settings.default_exclusions else (),
                              block_nodes=user_blocks, optimize=settings.preprocess_model)
        converted = result.model
        summary["fp16"] = {"float32_nodes": result.float32_nodes, "casts": result.casts,
                           "clipped_values": result.clipped_values, "notes": result.notes,
                           "block_ops": list(FP32_OPS) if settings.default_exclusions else []}
        comparison = evaluator.compare(converted, progress, "compare") if evaluator else None
    else:
        prepared = prepare(original, settings.preprocess_model)
        excluded = exclusions(prepared, settings.exclude, settings.default_exclusions)  # fails fast on bad names
        calibration = calibrate(prepared, calib_data, settings.method, settings.percentile, progress)
        if progress:
            progress("quantize", 0, 1)
        converted = quantize_qdq(prepared, calibration, excluded, settings.placement, settings.per_channel)
        if progress:
            progress("quantize", 1, 1)
        comparison = evaluator.compare(converted, progress, "compare") if evaluator else None
        summary["int8"] = {
            "method": settings.method, "percentile": calibration.percentile, "placement": settings.placement,
            "per_channel": settings.per_channel, "preprocessed": prepared.preprocessed, "note": prepared.note,
            "calibrated_tensors": len(calibration.amax), "calibration_seconds": round(calibration.seconds, 2),
            "excluded": excluded,
        }
        if settings.target_agreement is not None:
            assert evaluator is not None
            batches = []
            for batch in calib_data:
                batches.append(batch)
                if len(batches) >= settings.sensitivity_images:
                    break
            partial = partial_quantize(prepared, calibration, evaluator, settings.target_agreement, excluded,
                                       batches, settings.placement, settings.per_channel,
                                       full=(converted, comparison), progress=progress)
            converted, comparison = partial.model, partial.report
            summary["partial"] = partial.to_dict()
        summary["int8"]["qdq"] = qdq_summary(converted)

    if settings.latency_seconds > 0:
        summary["latency"] = _latency(original, converted, held_out or calib_data, settings.latency_seconds)
        if summary.get("partial") is not None:
            summary["partial"]["latency_ratio"] = summary["latency"]["ratio"]

    report = finish_report(evaluator, comparison, summary) if evaluator else {"format": REPORT_FORMAT, **summary}
    report["seconds"] = round(time.perf_counter() - started, 2)

    # outputs, last: each atomic
    save_model(converted, settings.out)
    if settings.calibration_cache is not None:
        report["calibration_cache"] = {
            "path": str(settings.calibration_cache), "trt_version": settings.trt_version,
            "tensors": write_calibration_cache(calibration, settings.calibration_cache, original,
                                               settings.trt_version)}
    if settings.report is not None:
        write_report(report, settings.report)
    return report
