"""`export`: a structure (and optional trained weights) to a verified ONNX detector."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..structure.limits import check_activations, check_input_size
from ..zoo import resolve_structure
from .common import console, human, parse_image_size, print_json


def export(
    structure: Annotated[str, typer.Argument(help="A zoo name (see `maedet-deploy zoo`) or a structure file.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Trained detector weights (a state_dict .pth); "
                                                            "random weights when absent.")] = None,
    image_size: Annotated[str, typer.Option(help="Input size, 640 or HxW.")] = "640",
    num_classes: Annotated[int, typer.Option(help="Number of classes of the head.")] = 80,
    neck_channels: Annotated[int, typer.Option(help="Channels of the PAN neck and the head.")] = 128,
    out: Annotated[Optional[Path], typer.Option(help="Output .onnx file (default: <structure>.onnx).")] = None,
    nms: Annotated[bool, typer.Option("--nms/--no-nms", help="Standard ONNX NonMaxSuppression in the graph "
                                                             "(num_dets, det_boxes, det_scores, det_classes) "
                                                             "or raw boxes and scores.")] = True,
    dynamic_batch: Annotated[bool, typer.Option(help="Dynamic batch dimension.")] = False,
    dynamic_size: Annotated[bool, typer.Option(help="Dynamic height and width.")] = False,
    batch: Annotated[int, typer.Option(help="Batch size of the example input (the static batch).")] = 1,
    score_threshold: Annotated[float, typer.Option(help="NMS: keep scores above this.")] = 0.25,
    iou_threshold: Annotated[float, typer.Option(help="NMS: suppress overlaps above this IoU.")] = 0.6,
    max_detections: Annotated[int, typer.Option(help="NMS: detections per image (K), outputs padded to K.")] = 100,
    opset: Annotated[int, typer.Option(help="ONNX opset, 17..20.")] = 17,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxslim.")] = True,
    tolerance: Annotated[float, typer.Option(help="Fail if ONNX Runtime and PyTorch differ by more than this "
                                                  "in image units (boxes / longer image side; scores).")] = 1e-3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the export report as JSON.")] = False,
) -> None:
    """Export a detector to ONNX, check it, simplify it and verify it in ONNX Runtime against PyTorch."""
    from ..export import export_onnx  # torch is heavy: import it only when exporting
    from ..models import create_detector

    size = parse_image_size(image_size)
    spec = resolve_structure(structure)
    check_activations(spec, check_input_size(spec, size), batch)  # before a model is built for nothing
    detector = create_detector(spec, num_classes=num_classes, image_size=size, neck_channels=neck_channels,
                               checkpoint=checkpoint)
    path = out if out is not None else Path(f"{Path(structure).stem}.onnx")
    report = export_onnx(detector, path, size, batch=batch, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size,
                         nms=nms, score_threshold=score_threshold, iou_threshold=iou_threshold,
                         max_detections=max_detections, opset=opset, simplify=simplify, tolerance=tolerance)
    if as_json:
        print_json(report.to_dict())
        return
    table = Table(title=f"exported {structure}", show_header=False)
    table.add_row("file", f"{report.path} ({human(report.size_bytes)}B)")
    table.add_row("weights", str(checkpoint) if checkpoint else "random (BN calibrated)")
    for name, dims in report.inputs.items():
        table.add_row(f"input {name}", "x".join(map(str, dims)))
    for name, dims in report.outputs.items():
        table.add_row(f"output {name}", "x".join(map(str, dims)))
    table.add_row("opset", str(report.opset))
    table.add_row("max abs error vs PyTorch",
                  f"{report.max_abs_error:.3g} ({report.max_image_error:.3g} in image units)")
    table.add_row("seconds", f"{report.seconds:.2f}")
    console.print(table)
