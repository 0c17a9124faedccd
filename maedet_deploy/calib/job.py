"""One calibration job, end to end, as `maedet-deploy calibrate` and the pipeline run it:
data -> INT8 (Q/DQ, for the target backend) or FP16 model -> optional partial
quantization -> accuracy report, TensorRT calibration cache and latency.

Nothing is written until all the work succeeded. The outputs are then written to
temporary files beside their targets and renamed into place model first: the report
records the model's SHA-256, so a reader can tell a report that belongs to an older
model (a crash between two renames) from the right one, and a failure leaves no file.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import onnx

from ..atomic import atomic_path
from ..backends import load_runner
from ..backends.onnx_file import load_model
from ..errors import MaedetError, first_line
from ..bench import run_bench
from ..progress import Progress
from .data import DataSource, open_data
from .fp16 import FP32_OPS, convert_fp16
from .graph import resolve_exclusions
from .int8 import Prepared, exclusions, prepare, qdq_summary, quantize_qdq
from .macs import layer_macs
from .partial import Quantize, partial_quantize, within_budget
from .placement import QdqPlacement, cpu_flags, qdq_placement, speed_verdict
from .ranges import Ranges, collect
from .refine import bias_corrected
from .report import REPORT_FORMAT, AccuracyCheck, Agreement
from .settings import CalibrationResult, CalibrationSettings
from .trt_cache import calibration_cache_text, model_tensor_names


def run_calibration(settings: CalibrationSettings, progress: Progress | None = None) -> CalibrationResult:
    """Run the job; every file is written at the end, or none."""
    settings.check()
    started = time.perf_counter()
    original = load_model(settings.model)
    calib, held = open_data(settings.images, original, settings.spec, settings.num_images, settings.holdout,
                            settings.seed)
    check = AccuracyCheck(original, held, settings.decoder, settings.decode, settings.truth_threshold,
                          settings.annotations, progress) if held is not None else None
    if settings.precision == "fp16":
        converted, details, agreement, ranges = *_fp16(settings, original, check, progress), None
    else:
        converted, details, agreement, ranges = _int8(settings, original, calib, check, progress)
    latency = _latency(original, converted, held or calib, settings) if settings.latency_seconds > 0 else None
    report = _report(settings, calib, held, details, agreement, latency)
    report["seconds"] = round(time.perf_counter() - started, 2)
    cache = calibration_cache_text(ranges, model_tensor_names(original), settings.trt_version) \
        if ranges is not None and settings.calibration_cache is not None else None
    _write_outputs(settings, converted, report, cache)
    return _result(settings, report, agreement, latency)


def _fp16(settings: CalibrationSettings, original: onnx.ModelProto, check: AccuracyCheck | None,
          progress: Progress | None) -> tuple[onnx.ModelProto, dict[str, Any], Agreement | None]:
    result = convert_fp16(original, keep_io_types=True, block_ops=FP32_OPS if settings.default_exclusions else (),
                          block_nodes=resolve_exclusions(original, settings.exclude),
                          optimize=settings.preprocess_model)
    details = {"fp16": {"float32_nodes": result.float32_nodes, "casts": result.casts,
                        "clipped_values": result.clipped_values, "notes": result.notes,
                        "block_ops": list(FP32_OPS) if settings.default_exclusions else []}}
    return result.model, details, check.judge(result.model, progress) if check else None


def _int8(settings: CalibrationSettings, original: onnx.ModelProto, calib: DataSource, check: AccuracyCheck | None,
          progress: Progress | None) -> tuple[onnx.ModelProto, dict[str, Any], Agreement | None, Ranges]:
    placement = qdq_placement(settings.placement_name)
    prepared = prepare(original, settings.preprocess_model)
    excluded = exclusions(prepared, settings.exclude, settings.default_exclusions, placement)  # fails fast
    statistics = collect(prepared.model, calib, progress)
    ranges = statistics.with_method(settings.method, settings.percentile, symmetric=placement.symmetric)
    macs = layer_macs(prepared.model, {k: v.shape for k, v in next(iter(calib)).feed.items()})
    quantize = quantizer(prepared, statistics, ranges, excluded, placement, settings.per_channel)
    batches = [batch for _, batch in zip(range(settings.sensitivity_images), calib)]
    converted, partial = quantize({}), None
    if settings.target_agreement is None and settings.float_macs > 0:
        partial = within_budget(converted, prepared.model, quantize, settings.float_macs, batches, macs, progress)
        converted = partial.model
    agreement = check.judge(converted, progress) if check else None
    if settings.target_agreement is not None and check is not None and agreement is not None:
        partial = partial_quantize(converted, agreement, prepared.model, quantize, check.judge,
                                   settings.target_agreement, batches, macs, progress)
        converted, agreement = partial.model, partial.agreement
    details: dict[str, Any] = {"int8": {
        "method": settings.method, "percentile": ranges.percentile, "placement": placement.name,
        "qdq_format": placement.to_dict(), "per_channel": settings.per_channel,
        "preprocessed": prepared.preprocessed, "note": prepared.note, "calibrated_tensors": len(ranges.ranges),
        "calibration_seconds": round(statistics.seconds, 2), "bias_correction": True, "excluded": excluded}}
    if partial is not None:
        details["partial"] = partial.to_dict()
    details["int8"]["qdq"] = qdq_summary(converted, macs)
    return converted, details, agreement, statistics.with_method(settings.method, settings.percentile, True)


def quantizer(prepared: Prepared, statistics: Ranges, ranges: Ranges, excluded: dict[str, str],
               placement: QdqPlacement, per_channel: bool) -> Quantize:
    """Extra float layers -> the Q/DQ model, each quantized conv's bias corrected for the
    rounding of its weights (bench/calib_accuracy.py measured it better on every model)."""
    def quantize(extra: dict[str, str]) -> onnx.ModelProto:
        skip = {**excluded, **extra}
        corrected = bias_corrected(prepared.model, statistics.channel_means, skip, per_channel)
        return quantize_qdq(corrected, ranges, skip, placement, per_channel)
    return quantize


def _latency(reference: onnx.ModelProto, candidate: onnx.ModelProto, data: DataSource,
             settings: CalibrationSettings, rounds: int = 4) -> dict[str, Any]:
    """Median latency of both models on ONNX Runtime CPU, with the product's bench loop,
    in interleaved rounds so drift hits both alike, and a plain verdict on whether INT8 pays."""
    shapes = {name: array.shape for name, array in next(iter(data)).feed.items()}
    with load_runner(reference.SerializeToString()) as fp32, load_runner(candidate.SerializeToString()) as converted:
        result = run_bench({"converted": converted, "float": fp32}, shapes=shapes, rounds=rounds,
                           duration=settings.latency_seconds)
    medians = {row.runner: row.stats.median_ms for row in result.rows}
    ratio, flags = medians["converted"] / medians["float"], cpu_flags()
    verdict = speed_verdict(1 / ratio, qdq_placement(settings.placement_name), flags) \
        if settings.precision == "int8" else f"FP16 takes {ratio:.2f}x the float32 time here"
    return {"backend": "onnxruntime", "device": "cpu", "cpu_flags": flags, "float_median_ms": medians["float"],
            "converted_median_ms": medians["converted"], "ratio": ratio, "speedup": 1 / ratio, "verdict": verdict,
            "warnings": sorted({w for row in result.rows for w in row.stats.warnings} | set(result.warnings))}


def _report(settings: CalibrationSettings, calib: DataSource, held: DataSource | None, details: dict[str, Any],
            agreement: Agreement | None, latency: dict[str, Any] | None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "format": REPORT_FORMAT, "model": str(settings.model), "output": str(settings.out),
        "precision": settings.precision, "calibration_samples": calib.num_samples,
        "held_out": held.num_samples if held else 0, "calibration_names": calib.names(),
        "held_out_names": held.names() if held else [], "seed": settings.seed,
        "preprocess": calib.spec.to_dict() if hasattr(calib, "spec") else None, **details}
    if agreement is not None:
        report.update(agreement.to_dict())
    if latency is not None:
        report["latency"] = latency
        if "partial" in report:
            report["partial"]["latency_ratio"] = latency["ratio"]
    return report


def _write_outputs(settings: CalibrationSettings, model: onnx.ModelProto, report: dict[str, Any],
                   cache: str | None) -> None:
    """Everything to temporary files first; then renamed model first, report last."""
    data = model.SerializeToString()
    report["output_sha256"] = hashlib.sha256(data).hexdigest()
    if cache is not None:
        report["calibration_cache"] = {"path": str(settings.calibration_cache), "trt_version": settings.trt_version,
                                       "tensors": cache.count("\n") - 1}
    files = [(settings.report, (json.dumps(report, indent=2, default=str) + "\n").encode()),
             (settings.calibration_cache if cache is not None else None, (cache or "").encode()),
             (settings.out, data)]
    try:
        with ExitStack() as stack:  # contexts exit last-in first-out: the model is renamed first
            for path, content in files:
                if path is not None:
                    stack.enter_context(atomic_path(path)).write_bytes(content)
    except OSError as exc:
        raise MaedetError(f"cannot write the outputs: {exc.strerror or first_line(exc)}") from None


def _result(settings: CalibrationSettings, report: dict[str, Any], agreement: Agreement | None,
            latency: dict[str, Any] | None) -> CalibrationResult:
    int8 = report.get("int8") or {}
    qdq = int8.get("qdq") or {}
    metric, value = agreement.metric if agreement is not None else (None, None)
    return CalibrationResult(
        output=Path(settings.out), precision=settings.precision, method=int8.get("method"),
        placement=int8.get("placement"), calibration_images=report["calibration_names"],
        held_out_images=report["held_out_names"], quantized_layers=qdq.get("quantized_layers"),
        float_layers=len(qdq["float_layers"]) if "float_layers" in qdq else None,
        int8_mac_share=qdq.get("int8_mac_share"), agreement_metric=metric, agreement=value,
        map50=value if metric == "map50" else None, map50_95=agreement.map50_95 if agreement else None,
        latency=latency, report=report)
