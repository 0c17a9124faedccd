"""`maedet-deploy calibrate`: INT8 (Q/DQ) or FP16 ONNX from your images, with an accuracy report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..calib.decoders import DecodeSettings
from ..calib.preprocess import load_spec, spec_from_mapping
from ..calib.run import CalibrateSettings, run_calibration
from ..errors import MaedetError
from .common import console

STAGES = {"reference": "float model on held-out data", "calibrate": "calibrate", "quantize": "quantize",
          "compare": "compare on held-out data", "candidate": "compare candidate",
          "sensitivity": "layer sensitivity", "search": "partial quantization search"}


def calibrate(
    model: Annotated[Path, typer.Argument(help="Float ONNX model (ours or any other detector).")],
    images: Annotated[Path, typer.Option(help="Image folder (jpg/jpeg/png/bmp, recursive) or .npy/.npz tensors.")],
    out: Annotated[Path, typer.Option(help="Output ONNX (Q/DQ INT8 or FP16).")],
    precision: Annotated[str, typer.Option(help="int8 (Q/DQ, explicit quantization) or fp16.")] = "int8",
    method: Annotated[str, typer.Option(help="INT8 calibration: entropy, percentile or minmax.")] = "entropy",
    percentile: Annotated[float, typer.Option(help="Percentile of |x| for --method percentile.")] = 99.99,
    num_images: Annotated[int, typer.Option(help="Calibration images (deterministic subset).")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the subset selection.")] = 0,
    holdout: Annotated[Optional[int], typer.Option(
        help="Held-out images for the accuracy report, never used to calibrate "
             "(default 16 with --report/--target-agreement/--annotations, else 0).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        help="Keep float: a node name, shell pattern or op type (repeatable).")] = None,
    no_default_exclusions: Annotated[bool, typer.Option(
        "--no-default-exclusions", help="Also quantize the head's final layers and Sigmoid/Softmax (INT8), "
                                        "or convert the FP16 block list (Resize, NMS, TopK...).")] = False,
    target_agreement: Annotated[Optional[float], typer.Option(
        help="Keep the most sensitive layers float until the held-out agreement reaches this "
             "(mAP@0.5 agreement for detectors, else output cosine), e.g. 0.99.")] = None,
    placement: Annotated[str, typer.Option(help="Q/DQ placement: tensorrt (compute-layer and Add inputs) "
                                                "or all (onnxruntime's default).")] = "tensorrt",
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor",
                                              help="Per-channel weight scales.")] = True,
    preprocess: Annotated[Optional[Path], typer.Option(
        help="Preprocessing spec (YAML/JSON: size, resize, color, mean, std, scale, layout, batch, pad_value).")] = None,
    size: Annotated[Optional[str], typer.Option(help="Input size HxW, e.g. 800x608 (default: the model's).")] = None,
    letterbox: Annotated[bool, typer.Option("--letterbox", help="Keep aspect ratio and pad (default: stretch).")] = False,
    bgr: Annotated[bool, typer.Option("--bgr", help="Feed BGR (default RGB).")] = False,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean after --scale, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std after --scale, e.g. 0.229,0.224,0.225.")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Pixel scale before mean/std (default 1/255).")] = None,
    layout: Annotated[Optional[str], typer.Option(help="NCHW (default) or NHWC.")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Batch size for dynamic-batch models (default 1).")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write the JSON accuracy report here.")] = None,
    annotations: Annotated[Optional[Path], typer.Option(
        help="COCO annotations for the held-out images: adds both models' true mAP.")] = None,
    decoder: Annotated[str, typer.Option(help="Detection decoder: auto, none, end_to_end, boxes_scores, gfl.")] = "auto",
    truth_threshold: Annotated[float, typer.Option(
        help="Float detections above this score are the agreement ground truth.")] = 0.3,
    score_threshold: Annotated[float, typer.Option(help="Decoder score threshold.")] = 0.05,
    iou_threshold: Annotated[float, typer.Option(help="Decoder NMS IoU threshold.")] = 0.5,
    sensitivity_images: Annotated[int, typer.Option(help="Calibration images for layer sensitivity.")] = 2,
    calibration_cache: Annotated[Optional[Path], typer.Option(
        help="Also write a TensorRT 8.x calibration cache (for implicit INT8 from the float ONNX).")] = None,
    trt_version: Annotated[str, typer.Option(help="TensorRT version in the cache header (8.6.1, 8.5.2...).")] = "8.6.1",
    latency: Annotated[Optional[float], typer.Option(
        help="Seconds of ONNX Runtime timing (bench loop), float vs converted; 0 = off "
             "(default 4 with --target-agreement, else 0).")] = None,
    no_model_preprocessing: Annotated[bool, typer.Option(
        "--no-model-preprocessing", help="Skip onnxruntime's quantization pre-processing "
                                         "(shape inference, BN folding).")] = False,
) -> None:
    """Make an INT8 (Q/DQ) or FP16 ONNX from calibration images and check it against the float model.

    Example: maedet-deploy calibrate det.onnx --images calib/ --out det.int8.onnx --report report.json
    """
    flags = {"size": size, "resize": "letterbox" if letterbox else None, "color": "bgr" if bgr else None,
             "mean": mean, "std": std, "scale": scale, "layout": layout, "batch": batch}
    if preprocess is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
        if given:
            raise MaedetError(f"give --preprocess or {', '.join(given)}, not both")
        spec = load_spec(preprocess)
    else:
        spec = spec_from_mapping(flags, origin="options")
    wants_holdout = report is not None or target_agreement is not None or annotations is not None
    settings = CalibrateSettings(
        model=model, images=images, out=out, precision=precision, method=method, percentile=percentile,
        num_images=num_images, seed=seed, holdout=holdout if holdout is not None else (16 if wants_holdout else 0),
        spec=spec, exclude=tuple(exclude or ()), default_exclusions=not no_default_exclusions,
        placement=placement, per_channel=per_channel, preprocess_model=not no_model_preprocessing,
        target_agreement=target_agreement, sensitivity_images=sensitivity_images, report=report,
        annotations=annotations, calibration_cache=calibration_cache, trt_version=trt_version, decoder=decoder,
        decode=DecodeSettings(score_threshold, iou_threshold), truth_threshold=truth_threshold,
        latency_seconds=latency if latency is not None else (4.0 if target_agreement is not None else 0.0))
    with Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(STAGES.get(stage, stage), total=max(total, 1))
            bar.update(tasks[stage], completed=done, total=max(total, 1))

        result = run_calibration(settings, on_progress)
    _summary(result, settings)


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _summary(result: dict[str, Any], settings: CalibrateSettings) -> None:
    table = Table(title=f"calibrate ({result['precision']})", show_header=False)
    table.add_row("model -> output", f"{result['model']} -> {result['output']}")
    table.add_row("calibration / held-out samples", f"{result['calibration_samples']} / {result['held_out']}")
    if "int8" in result:
        int8 = result["int8"]
        qdq = int8["qdq"]
        table.add_row("method / placement", f"{int8['method']} / {int8['placement']}"
                                            f"{'' if int8['preprocessed'] else '  (' + int8['note'] + ')'}")
        table.add_row("quantized / float layers", f"{qdq['quantized_layers']} / {len(qdq['float_layers'])}")
        table.add_row("Q/DQ nodes, zero points", f"{qdq['quantize_linear']} Q, {qdq['dequantize_linear']} DQ, "
                                                 f"types {','.join(qdq['quantized_types'])}, "
                                                 f"{'all zero' if qdq['zero_points_all_zero'] else 'NOT all zero'}")
    if "fp16" in result:
        fp16 = result["fp16"]
        table.add_row("float32 nodes / casts", f"{len(fp16['float32_nodes'])} / {fp16['casts']}")
    outputs = result.get("outputs") or {}
    if outputs:
        cosines = [v["cosine"] for v in outputs.values() if v["cosine"] is not None]
        sqnrs = [v["sqnr_db"] for v in outputs.values() if v["sqnr_db"] is not None]
        table.add_row("outputs: min cosine / min SQNR", f"{_fmt(min(cosines) if cosines else None)} / "
                                                        f"{_fmt(min(sqnrs) if sqnrs else None, 1)} dB")
    detection = result.get("detection")
    if detection:
        agreement = detection["agreement"]
        table.add_row(f"agreement mAP@0.5 / @0.5:0.95 ({detection['decoder']})",
                      f"{_fmt(agreement['map50'])} / {_fmt(agreement['map50_95'])}  "
                      f"({detection['float_detections']} float detections)")
        truth = detection.get("annotations")
        if truth and truth.get("float"):
            table.add_row("true mAP@0.5:0.95 float / converted",
                          f"{_fmt(truth['float']['map50_95'])} / {_fmt(truth['candidate']['map50_95'])} "
                          f"({truth['images_matched']} images)")
    partial = result.get("partial")
    if partial:
        table.add_row("target agreement", f"{partial['target']} on {partial['metric']}: "
                                          f"{'met' if partial['met'] else 'NOT met'} ({_fmt(partial['agreement'])}) "
                                          f"with {len(partial['float_layers'])} more float layer(s)")
    latency = result.get("latency")
    if latency:
        table.add_row("latency float / converted (ORT CPU)", f"{latency['float_median_ms']:.2f} / "
                                                             f"{latency['converted_median_ms']:.2f} ms "
                                                             f"(x{latency['ratio']:.2f})")
    written = [str(settings.out)] + [str(p) for p in (settings.report, settings.calibration_cache) if p]
    table.add_row("written", ", ".join(written))
    console.print(table)
