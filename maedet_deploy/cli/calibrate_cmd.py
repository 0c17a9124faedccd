"""`maedet-deploy calibrate`: INT8 (Q/DQ) or FP16 ONNX from your images, with an accuracy report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..calib import (CALIBRATION_METHODS, DECODERS, DEFAULT_FLOAT_MACS, DEFAULT_METHOD, PLACEMENTS,
                     CalibrationResult, CalibrationSettings, DecodeSettings, run_calibration)
from ..errors import MaedetError
from ..inputs import load_spec, spec_from_mapping
from .common import console, err_console

Images = Annotated[Path, typer.Option(help="Image folder (jpg, png, bmp, webp, tif; searched recursively) or "
                                           ".npy/.npz tensors.")]
Backend = Annotated[str, typer.Option(help="The runtime the INT8 model is for: onnxruntime (uint8 activations, "
                                           "Q/DQ on every op it fuses: fast on CPUs), tensorrt (symmetric int8, "
                                           "zero points 0), or auto (tensorrt when it and a GPU are present).")]
Placement = Annotated[Optional[str], typer.Option(help=f"Override the backend's Q/DQ placement: "
                                                       f"{' or '.join(PLACEMENTS)}.")]
Method = Annotated[str, typer.Option(help=f"INT8 ranges: {', '.join(CALIBRATION_METHODS)} (mse: least squared "
                                          "quantization error; measured best across detector families).")]
Holdout = Annotated[Optional[int], typer.Option(help="Held-out images for the accuracy report, never used to "
                                                     "calibrate (default 16 with --report, --target-agreement or "
                                                     "--annotations, else 0).")]
Exclude = Annotated[Optional[list[str]], typer.Option(help="Keep float: a node name, shell pattern or op type "
                                                           "(repeatable).")]
NoDefaults = Annotated[bool, typer.Option("--no-default-exclusions", help="INT8: also quantize the head's final "
                                          "layers (and the image stem for onnxruntime); FP16: convert the block list "
                                          "(Resize, NMS, TopK...).")]
Target = Annotated[Optional[float], typer.Option(help="Keep float the fewest MACs (most sensitive layers first) "
                                                      "until the held-out agreement reaches this (mAP@0.5 for "
                                                      "detectors, else output cosine), e.g. 0.98.")]
FloatMacs = Annotated[float, typer.Option(help="Without --target-agreement: the layers most sensitive to INT8 "
                                                "(ranked once by error per MAC) stay float while at most this share "
                                                "of the conv MACs is float (default exclusions included); 0 keeps "
                                                "only the default exclusions float.")]
Spec = Annotated[Optional[Path], typer.Option(help="Preprocessing spec (YAML/JSON: size, resize, color, mean, std, "
                                                   "scale, layout, batch, pad_value).")]
Size = Annotated[Optional[str], typer.Option(help="Input size HxW, e.g. 800x608 (default: the model's fixed dims "
                                                  "or its declared imgsz).")]
Annotations = Annotated[Optional[Path], typer.Option(help="COCO annotations of the held-out images: adds both "
                                                          "models' true mAP.")]
Decoder = Annotated[str, typer.Option(help=f"Detection decoder: auto, none, {', '.join(DECODERS)}.")]
Latency = Annotated[Optional[float], typer.Option(help="Seconds of ONNX Runtime timing, float vs converted (0: "
                                                       "off; default 3 for the onnxruntime placement, else 0).")]
Cache = Annotated[Optional[Path], typer.Option(help="Also write a TensorRT 8.x calibration cache (implicit INT8 "
                                                    "from the float ONNX).")]
Flag = lambda name, text: Annotated[bool, typer.Option(name, help=text)]  # noqa: E731


def calibrate(
    model: Annotated[Path, typer.Argument(help="Float ONNX model (ours or any other detector).")],
    images: Images,
    out: Annotated[Path, typer.Option(help="Output ONNX (Q/DQ INT8 or FP16).")],
    precision: Annotated[str, typer.Option(help="int8 (Q/DQ, explicit quantization) or fp16.")] = "int8",
    backend: Backend = "auto",
    placement: Placement = None,
    method: Method = DEFAULT_METHOD,
    percentile: Annotated[float, typer.Option(help="Percentile of |x| for --method percentile.")] = 99.99,
    num_images: Annotated[int, typer.Option(help="Calibration images (deterministic subset).")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the subset selection.")] = 0,
    holdout: Holdout = None,
    exclude: Exclude = None,
    no_default_exclusions: NoDefaults = False,
    target_agreement: Target = None,
    float_macs: FloatMacs = DEFAULT_FLOAT_MACS,
    sensitivity_images: Annotated[int, typer.Option(help="Calibration images for layer sensitivity.")] = 2,
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor", help="Per-channel weight scales.")] = True,
    preprocess: Spec = None,
    size: Size = None,
    letterbox: Flag("--letterbox", "Keep aspect ratio and pad (default: stretch).") = False,
    bgr: Flag("--bgr", "Feed BGR (default RGB).") = False,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean after --scale, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std after --scale, e.g. 0.229,0.224,0.225.")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Pixel scale before mean/std (default 1/255).")] = None,
    layout: Annotated[Optional[str], typer.Option(help="NCHW (default) or NHWC.")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Batch size for dynamic-batch models (default 1).")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write the JSON accuracy report here.")] = None,
    annotations: Annotations = None,
    decoder: Decoder = "auto",
    truth_threshold: Annotated[float, typer.Option(help="Float detections above this score are the agreement's "
                                                        "ground truth.")] = 0.3,
    score_threshold: Annotated[float, typer.Option(help="Decoder score threshold.")] = 0.05,
    iou_threshold: Annotated[float, typer.Option(help="Decoder NMS IoU threshold.")] = 0.5,
    calibration_cache: Cache = None,
    trt_version: Annotated[str, typer.Option(help="TensorRT version in the cache header (8.6.1, 8.5.2...).")] = "8.6.1",
    latency: Latency = None,
    no_model_preprocessing: Flag("--no-model-preprocessing", "Skip onnxruntime's quantization pre-processing "
                                                             "(shape inference, BN folding).") = False,
) -> None:
    """Make an INT8 (Q/DQ) or FP16 ONNX from calibration images and check it against the float model.

    Example: maedet-deploy calibrate det.onnx --images calib/ --out det.int8.onnx --report report.json
    """
    spec = _spec(preprocess, size=size, resize="letterbox" if letterbox else None, color="bgr" if bgr else None,
                 mean=mean, std=std, scale=scale, layout=layout, batch=batch)
    judged = report is not None or target_agreement is not None or annotations is not None
    target = _backend(backend)
    fast_cpu_graph = precision == "int8" and (placement or target) == "onnxruntime"
    settings = CalibrationSettings(
        model=model, images=images, out=out, precision=precision, backend=target, placement=placement,
        method=method, percentile=percentile, num_images=num_images, seed=seed, spec=spec,
        holdout=holdout if holdout is not None else (16 if judged else 0),
        exclude=tuple(exclude or ()), default_exclusions=not no_default_exclusions, per_channel=per_channel,
        preprocess_model=not no_model_preprocessing, target_agreement=target_agreement, float_macs=float_macs,
        sensitivity_images=sensitivity_images, report=report, annotations=annotations,
        calibration_cache=calibration_cache, trt_version=trt_version, decoder=decoder,
        decode=DecodeSettings(score_threshold, iou_threshold), truth_threshold=truth_threshold,
        latency_seconds=latency if latency is not None else (3.0 if fast_cpu_graph else 0.0))
    _show(_run(settings), settings)


def _spec(path: Path | None, **flags: Any):
    if path is None:
        return spec_from_mapping(flags, origin="options")
    given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
    if given:
        raise MaedetError(f"give --preprocess or {', '.join(given)}, not both")
    return load_spec(path)


def _backend(name: str) -> str:
    """`auto` means what it means everywhere (`backends.resolve_backend`)."""
    if name != "auto":
        return name
    from ..backends import resolve_backend
    return resolve_backend("auto")


def _run(settings: CalibrationSettings) -> CalibrationResult:
    with Progress(TextColumn("[bold]{task.description:<30}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def on_progress(done: int, total: int, what: str) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total or None)
            bar.update(tasks[what], completed=done, total=total or None)

        return run_calibration(settings, on_progress)


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _show(result: CalibrationResult, settings: CalibrationSettings) -> None:
    report = result.report
    table = Table(title=f"calibrate ({result.precision})", show_header=False)
    table.add_row("model -> output", f"{report['model']} -> {report['output']}")
    table.add_row("calibration / held-out samples", f"{report['calibration_samples']} / {report['held_out']}")
    for label, value in _int8_rows(report) + _fp16_rows(report) + _accuracy_rows(report):
        table.add_row(label, value)
    written = [str(settings.out)] + [str(p) for p in (settings.report, settings.calibration_cache) if p]
    table.add_row("written", ", ".join(written))
    console.print(table)
    if report.get("decoder_note"):
        err_console.print(f"[yellow]warning:[/] {report['decoder_note']}; choose one with --decoder NAME",
                          highlight=False)
    if result.latency is not None:
        console.print(result.latency["verdict"], highlight=False)


def _int8_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    int8 = report.get("int8")
    if not int8:
        return []
    qdq, share = int8["qdq"], int8["qdq"]["int8_mac_share"]
    note = "" if int8["preprocessed"] else f"  ({int8['note']})"
    return [("method / placement", f"{int8['method']} / {int8['placement']}{note}"),
            ("quantized / float layers", f"{qdq['quantized_layers']} / {len(qdq['float_layers'])}"
                                         + (f"  ({100 * share:.1f}% of MACs in INT8)" if share is not None else "")),
            ("Q/DQ nodes, zero points", f"{qdq['quantize_linear']} Q, {qdq['dequantize_linear']} DQ, types "
                                        f"{','.join(qdq['quantized_types'])}, "
                                        f"{'all zero' if qdq['zero_points_all_zero'] else 'not all zero'}")]


def _fp16_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    fp16 = report.get("fp16")
    return [("float32 nodes / casts", f"{len(fp16['float32_nodes'])} / {fp16['casts']}")] if fp16 else []


def _accuracy_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    outputs = report.get("outputs") or {}
    if outputs:
        cosines = [v["cosine"] for v in outputs.values() if v["cosine"] is not None]
        sqnrs = [v["sqnr_db"] for v in outputs.values() if v["sqnr_db"] is not None]
        rows.append(("outputs: min cosine / min SQNR", f"{_fmt(min(cosines) if cosines else None)} / "
                                                       f"{_fmt(min(sqnrs) if sqnrs else None, 1)} dB"))
    detection = report.get("detection")
    if detection:
        agreement = detection["agreement"]
        rows.append((f"agreement mAP@0.5 / @0.5:0.95 ({detection['decoder']})",
                     f"{_fmt(agreement['map50'])} / {_fmt(agreement['map50_95'])}  "
                     f"({detection['float_detections']} float detections)"))
        truth = detection.get("annotations")
        if truth and truth.get("float"):
            rows.append(("true mAP@0.5:0.95 float / converted", f"{_fmt(truth['float']['map50_95'])} / "
                         f"{_fmt(truth['candidate']['map50_95'])} ({truth['images_matched']} images)"))
    partial = report.get("partial")
    if partial and partial["target"] is None:
        rows.append(("float-MAC budget", f"{len(partial['float_layers'])} sensitive layer(s) kept float"))
    elif partial:
        rows.append(("target agreement", f"{partial['target']} on {partial['metric']}: "
                                         f"{'met' if partial['met'] else 'NOT met'} ({_fmt(partial['agreement'])}) "
                                         f"with {len(partial['float_layers'])} more float layer(s)"))
    latency = report.get("latency")
    if latency:
        rows.append(("latency float / converted (ORT CPU)", f"{latency['float_median_ms']:.2f} / "
                                                            f"{latency['converted_median_ms']:.2f} ms "
                                                            f"({latency['speedup']:.2f}x as fast)"))
    return rows
