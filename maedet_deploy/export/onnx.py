"""PyTorch -> ONNX, checked, simplified and verified against PyTorch.

Exporter choice: torch 2.9+ defaults `torch.onnx.export` to the dynamo
(torch.export) exporter, which needs the extra `onnxscript` package, was 10-30%
slower on these nets (ResNet-50 at 480, backbone and detector) and cannot trace
the eager NMS stand-in (data-dependent loops). The TorchScript exporter
(`dynamo=False`) is still shipped in torch 2.14 (with a DeprecationWarning),
needs nothing else, folds BN into the convs in eval mode, and honours
`symbolic` on autograd Functions, which is how the standard NonMaxSuppression op
goes in. It supports opsets up to 20.

Verification runs the final graph in ONNX Runtime (through `backends`) and
PyTorch on the same random input, before anything is written. With NMS in the
graph, two checks keep it free of threshold ties: the network's raw boxes and
scores (the NMS node's inputs, exposed as extra outputs) against PyTorch's, and
the post-processing against PyTorch's applied to ONNX Runtime's own raw tensors.
Errors are judged in image units: boxes divided by the image's longer side,
scores as they are, so one tolerance means "0.1% of the image or 0.001 of a
score" at 1e-3. Boxes are point +- distance with distances up to 16 strides, so
their fp32 rounding does not scale with the coordinate itself (a box edge near
0 carries the error of a 500 px distance); a relative error would misjudge them.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from ..atomic import atomic_path
from ..backends import load_runner
from ..compare import OutputStats, compare_arrays
from ..errors import MaedetError
from ..memory import check_memory, out_of_memory_as_error
from ..models import Backbone, Detector, fold_batchnorm
from ..structure import ImageSize, Structure, as_hw, stage_ends
from ..structure.limits import check_activations, check_input_size
from .nms import OUTPUT_NAMES, EndToEnd, postprocess

MIN_OPSET, MAX_OPSET = 17, 20
SCOPES = ("backbone", "detector")


@dataclass
class ExportReport:
    path: str
    seconds: float
    opset: int
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    size_bytes: int
    nms: bool
    simplified: bool
    max_abs_error: float | None = None
    max_image_error: float | None = None  # boxes / longer image side, scores as is: what `tolerance` bounds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    """Static dims as ints, named dynamic dims as their names, unknown ones as '?'."""
    return [d.dim_param if d.dim_param else d.dim_value if d.HasField("dim_value") else "?"
            for d in value_info.type.tensor_type.shape.dim]


def _trace_to_onnx(module: nn.Module, example: torch.Tensor, output_names: Sequence[str],
                   dynamic_axes: dict[str, dict[int, str]], opset: int, target: io.BytesIO | Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        with torch.no_grad():
            torch.onnx.export(module, (example,), target, dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=list(output_names),
                              dynamic_axes=dynamic_axes or None, do_constant_folding=True)


def _dynamic_axes(output_names: Sequence[str], dynamic_batch: bool, dynamic_size: bool,
                  nms: bool) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    images = ({0: "batch"} if dynamic_batch else {}) | ({2: "height", 3: "width"} if dynamic_size else {})
    if images:
        axes["images"] = images
    for name in output_names:
        out = ({0: "batch"} if dynamic_batch else {}) | ({1: "anchors"} if dynamic_size and not nms else {})
        if out:
            axes[name] = out
    return axes


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxslim.slim(model)


def _check_options(opset: int, batch: int, score_threshold: float, iou_threshold: float,
                   max_detections: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise MaedetError(f"opset {opset} is not supported: choose {MIN_OPSET}..{MAX_OPSET} "
                          "(NonMaxSuppression and the TorchScript exporter's range)")
    if batch < 1:
        raise MaedetError(f"batch must be >= 1, got {batch}")
    if not 0 <= score_threshold < 1:
        raise MaedetError(f"score threshold must be in [0, 1), got {score_threshold}")
    if not 0 < iou_threshold <= 1:
        raise MaedetError(f"IoU threshold must be in (0, 1], got {iou_threshold}")
    if max_detections < 1:
        raise MaedetError(f"max detections must be >= 1, got {max_detections}")


@dataclass
class _Errors:
    """The verification's comparisons (`compare`'s one comparator, `OutputStats`): per
    output, ONNX Runtime against PyTorch, and the scale that turns its error into image
    units (the longer image side for boxes, 1 for scores)."""

    checks: list[tuple[OutputStats, float]] = field(default_factory=list)

    def add(self, name: str, got: np.ndarray, want: np.ndarray, scale: float = 1.0) -> None:
        stats = compare_arrays(name, want, got)
        if stats.problem:
            raise MaedetError(f"verification: {name}: {stats.problem} (PyTorch vs ONNX Runtime)")
        self.checks.append((stats, scale))

    @property
    def abs(self) -> float:
        return max((stats.max_abs for stats, _ in self.checks), default=0.0)

    @property
    def image(self) -> float:
        return max((stats.max_abs / scale for stats, scale in self.checks), default=0.0)


def _verify(graph: onnx.ModelProto, example: torch.Tensor, raw: tuple[torch.Tensor, torch.Tensor],
            nms: EndToEnd | None) -> _Errors:
    """Run the graph in ONNX Runtime and compare with PyTorch's raw outputs `raw`."""
    errors = _Errors()
    side = float(max(example.shape[-2:]))
    feed = {"images": example.numpy()}
    if nms is None:
        with load_runner(graph.SerializeToString()) as runner:
            got = runner.infer(feed)
        errors.add("boxes", got["boxes"], raw[0].numpy(), side)
        errors.add("scores", got["scores"], raw[1].numpy())
        return errors
    node = next(n for n in graph.graph.node if n.op_type == "NonMaxSuppression")
    boxes_name, scores_name = node.input[:2]
    probe = onnx.ModelProto()
    probe.CopyFrom(graph)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in (boxes_name, scores_name))
    with load_runner(probe.SerializeToString()) as runner:
        got = runner.infer(feed)
    errors.add("boxes", got[boxes_name], raw[0].numpy(), side)
    errors.add("scores", got[scores_name], raw[1].transpose(1, 2).numpy())
    # Post-processing checked on ONNX Runtime's own raw tensors, so threshold ties cannot differ.
    with torch.no_grad():
        want = postprocess(torch.from_numpy(got[boxes_name]), torch.from_numpy(got[scores_name]).transpose(1, 2),
                           nms.max_detections, nms.iou_threshold, nms.score_threshold)
    mine, theirs = _comparable(_canonical_order(dict(zip(OUTPUT_NAMES, (t.numpy() for t in want)))),
                               _canonical_order({name: got[name] for name in OUTPUT_NAMES}))
    for name in OUTPUT_NAMES:
        if name in ("num_dets", "det_classes") and not np.array_equal(theirs[name], mine[name]):
            raise MaedetError(f"verification: {name} differs between ONNX Runtime and PyTorch")
        errors.add(name, theirs[name], mine[name], side if name == "det_boxes" else 1.0)
    return errors


def _comparable(mine: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Copies in which each image's ambiguous tail is blanked on both sides: when the K slots
    are full and the last kept score is shared by detections that did not fit, which of them
    fill the slots is up to the implementation (a random-weight net at a small input
    saturates hundreds of scores to exactly 1.0)."""
    mine, theirs = {k: v.copy() for k, v in mine.items()}, {k: v.copy() for k, v in theirs.items()}
    slots = mine["det_scores"].shape[1]
    for image, count in enumerate(mine["num_dets"][:, 0]):
        if count < slots:
            continue
        last = mine["det_scores"][image, slots - 1]
        above = int((mine["det_scores"][image] > last).sum())
        if above != int((theirs["det_scores"][image] > last).sum()):
            continue  # the unambiguous detections differ: leave everything to the comparison
        for outputs in (mine, theirs):
            for name in ("det_boxes", "det_scores", "det_classes"):
                outputs[name][image, above:] = 0
    return mine, theirs


def _canonical_order(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Detections of each image sorted by score, then class, then box: detections with equal
    scores (saturated sigmoids of a random-weight net at a small input) may come out of two
    NMS implementations in either order, which is not a difference."""
    boxes, scores, classes = outputs["det_boxes"], outputs["det_scores"], outputs["det_classes"]
    order = np.stack([np.lexsort((boxes[i, :, 3], boxes[i, :, 2], boxes[i, :, 1], boxes[i, :, 0],
                                  classes[i], -scores[i])) for i in range(len(scores))])
    take = lambda array: np.take_along_axis(array, order.reshape(order.shape + (1,) * (array.ndim - 2)), axis=1)
    return {"num_dets": outputs["num_dets"], "det_boxes": take(boxes), "det_scores": take(scores),
            "det_classes": take(classes)}


def _declare_outputs(graph: onnx.ModelProto, shapes: dict[str, Sequence[int | str]]) -> None:
    """Write the output shapes we know (fixed K and class count, our dynamic dim
    names) over the exporter's partial inference, so runtimes and users see them."""
    for output in graph.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for value in shapes[output.name]:
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value


def _check_memory(model: nn.Module, size: tuple[int, int], batch: int) -> None:
    """Refuse an input our detector's layers (or, for any other model, the input itself) cannot hold
    in memory, before the allocator is asked."""
    structure = getattr(getattr(model, "backbone", None), "structure", None)
    if isinstance(structure, Structure):
        check_activations(structure, check_input_size(structure, size), batch)
    else:
        check_memory(batch * getattr(model, "in_channels", 3) * size[0] * size[1] * 4,
                     f"an input of {batch}x{size[0]}x{size[1]}", "image_size")


@out_of_memory_as_error("ONNX export")
def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: ImageSize | None = None, batch: int = 1,
                dynamic_batch: bool = False, dynamic_size: bool = False, nms: bool = True,
                score_threshold: float = 0.25, iou_threshold: float = 0.6, max_detections: int = 100,
                opset: int = 17, simplify: bool = True, verify: bool = True, tolerance: float = 1e-3,
                seed: int = 0) -> ExportReport:
    """Export a detector (images -> boxes, scores) to ONNX; the file is written only if every step passes.

    `image_size` defaults to the detector's own. With `nms`, outputs are
    num_dets [B,1] int64, det_boxes [B,K,4], det_scores [B,K], det_classes [B,K]
    int64 (K = max_detections); without, the raw boxes [B,N,4] and scores [B,N,C].
    Verification fails when ONNX Runtime and PyTorch differ by more than
    `tolerance` in image units (boxes / longer image side; scores)."""
    _check_options(opset, batch, score_threshold, iou_threshold, max_detections)
    if image_size is None:
        image_size = getattr(model, "image_size", None)
        if image_size is None:
            raise MaedetError("export needs an image size")
    height, width = as_hw(image_size)
    if min(height, width) < 1:
        raise MaedetError(f"image size must be positive, got {height}x{width}")
    _check_memory(model, (height, width), batch)
    start = time.perf_counter()
    model = model.eval()
    wrapper = EndToEnd(model, max_detections, iou_threshold, score_threshold).eval() if nms else None
    output_names = OUTPUT_NAMES if nms else ("boxes", "scores")
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(batch, getattr(model, "in_channels", 3), height, width, generator=generator)
    with torch.no_grad():
        raw = model(example)
    buffer = io.BytesIO()
    _trace_to_onnx(wrapper or model, example, output_names,
                   _dynamic_axes(output_names, dynamic_batch, dynamic_size, nms), opset, buffer)
    graph = onnx.load_from_string(buffer.getvalue())
    if simplify:
        graph = _simplify(graph)
    b = "batch" if dynamic_batch else batch
    n = "anchors" if dynamic_size else raw[0].shape[1]
    k = max_detections
    _declare_outputs(graph, {"num_dets": (b, 1), "det_boxes": (b, k, 4), "det_scores": (b, k),
                             "det_classes": (b, k), "boxes": (b, n, 4), "scores": (b, n, raw[1].shape[2])})
    onnx.checker.check_model(graph)
    errors = _verify(graph, example, raw, wrapper) if verify else None
    if errors is not None and errors.image > tolerance:
        raise MaedetError(f"ONNX Runtime differs from PyTorch by {errors.image:.3g} in image units "
                          f"({errors.abs:.3g} max abs; tolerance {tolerance:g}); nothing written")
    with atomic_path(path) as tmp:
        onnx.save(graph, tmp)
    return ExportReport(str(path), time.perf_counter() - start, opset,
                        {i.name: _dims(i) for i in graph.graph.input},
                        {o.name: _dims(o) for o in graph.graph.output},
                        Path(path).stat().st_size, nms, simplify,
                        errors.abs if errors else None, errors.image if errors else None)


def export_structure_onnx(structure: Structure, path: str | os.PathLike, image_size: ImageSize, batch: int = 1,
                          scope: str = "backbone", num_classes: int = 80, neck_channels: int = 128,
                          opset: int = 17) -> ExportReport:
    """Fast export of random-weight modules for latency measurement: no simplify, no verify.

    'backbone' outputs its last three stages (what the detector consumes);
    'detector' outputs raw boxes and scores, without NMS, whose cost depends on
    the data rather than the architecture."""
    if scope not in SCOPES:
        raise MaedetError(f"unknown export scope {scope!r} (choose from {', '.join(SCOPES)})")
    start = time.perf_counter()
    if scope == "backbone":
        stages = len(stage_ends(structure))
        module: nn.Module = Backbone(structure, tuple(range(max(0, stages - 3), stages)))
        output_names = [info["stage"] for info in module.feature_info]
    else:
        module = Detector(structure, num_classes, image_size, neck_channels)
        output_names = ["boxes", "scores"]
    height, width = as_hw(image_size)
    example = torch.randn(batch, structure.blocks[0].cin, height, width)
    with atomic_path(path) as tmp:
        _trace_to_onnx(fold_batchnorm(module.eval()), example, output_names, {}, opset, tmp)
        graph = onnx.load(tmp)
    return ExportReport(str(path), time.perf_counter() - start, opset,
                        {i.name: _dims(i) for i in graph.graph.input},
                        {o.name: _dims(o) for o in graph.graph.output},
                        Path(path).stat().st_size, False, False)
