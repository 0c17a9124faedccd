"""Small ONNX graph helpers shared by the INT8, FP16 and report code.

The default float exclusions are found from the graph, for any detector: walking
back from every graph output through non-compute ops (reshapes, transposes,
splits, concats, sigmoids, the box decode, NMS...) collects the "output path";
the first compute op (Conv, ConvTranspose, Gemm, MatMul) met on each path is that
branch's final score/box layer. Both stay float.
"""

from __future__ import annotations

import copy
import fnmatch
from collections import deque
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import MaedetError

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MEASURE_BEFORE = ("NonMaxSuppression",)


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed (or duplicate-named) node a unique name, in place: exclusions work by name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            base = f"{node.op_type}_{index}"
            name, suffix = base, 0
            while name in seen:
                suffix += 1
                name = f"{base}_{suffix}"
            node.name = name
        seen.add(node.name)
    return model


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output if out}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    table: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name:
                table.setdefault(name, []).append(node)
    return table


def is_expectation(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> bool:
    """A 1x1 Conv with one output channel and weights 0, 1, ..., n-1: the expected value of a
    softmax over n bins (the DFL box decode of YOLOv8/v6, PP-YOLOE, GFL heads): box
    post-processing, not a learned layer."""
    weight = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
    if weight is None or len(weight.dims) != 4 or weight.dims[0] != 1 or tuple(weight.dims[2:]) != (1, 1):
        return False
    values = numpy_helper.to_array(weight).ravel()
    return bool(np.array_equal(values, np.arange(values.size, dtype=values.dtype)))


def output_path(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(non-compute nodes between the last compute layers and the graph outputs,
    those last compute layers), both as node names in graph order. A DFL expectation
    conv counts as post-processing: the walk goes on to the layer producing its bins."""
    made_by = producers(model)
    weights = {init.name: init for init in model.graph.initializer}
    initializers = set(weights)
    post, final = set(), set()
    queue = deque(out.name for out in model.graph.output)
    seen_tensors: set[str] = set()
    while queue:
        tensor = queue.popleft()
        if tensor in seen_tensors or tensor in initializers:
            continue
        seen_tensors.add(tensor)
        node = made_by.get(tensor)
        if node is None:
            continue
        if node.op_type in COMPUTE_OPS and not is_expectation(node, weights):
            final.add(node.name)
            continue
        post.add(node.name)
        queue.extend(name for name in node.input if name)
    order = [node.name for node in model.graph.node]
    return [n for n in order if n in post], [n for n in order if n in final]


def default_exclusions(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> why it stays float by default: the head's final layers and its
    post-processing. (Sigmoid and Softmax elsewhere are quantized where the backend
    fuses them: keeping one float splits its producer's Conv from its output
    quantization, and ONNX Runtime then runs that Conv in float.)"""
    post, final = output_path(model)
    reasons = {name: "final layer of an output branch" for name in final}
    reasons.update({name: "output post-processing" for name in post})
    return reasons


def resolve_exclusions(model: onnx.ModelProto, patterns: Iterable[str]) -> dict[str, str]:
    """User exclusions: each is an op type (all its nodes), a node name or a
    shell-style pattern on names ('head.*'); one that matches nothing is an error."""
    op_types = {node.op_type for node in model.graph.node}
    names = [node.name for node in model.graph.node]
    out: dict[str, str] = {}
    for pattern in patterns:
        if pattern in op_types:
            out.update({node.name: f"excluded: {pattern}" for node in model.graph.node if node.op_type == pattern})
            continue
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise MaedetError(f"{pattern!r} matches no node name or op type of the model", setting="exclude")
        out.update({name: f"excluded: {pattern}" for name in matched})
    return out


NMS_INPUT_LABELS = (":boxes", ":scores")  # `measure_points` labels an NMS's inputs "<node>:boxes", "<node>:scores"


def is_nms_input(label: str) -> bool:
    """Whether a `measure_points` label (as the accuracy report keys its outputs) is an NMS input."""
    return label.endswith(NMS_INPUT_LABELS)


def measure_points(model: onnx.ModelProto) -> dict[str, str]:
    """What to compare between two versions of a model: label -> tensor name.

    The graph's float outputs; when the graph ends in NonMaxSuppression, also the
    NMS inputs (raw boxes and scores), because the selected detections move
    discontinuously and say little about numeric error."""
    points: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in MEASURE_BEFORE:
            for slot, label in enumerate(NMS_INPUT_LABELS):
                if len(node.input) > slot and node.input[slot]:
                    points[f"{node.name}{label}"] = node.input[slot]
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    for out in model.graph.output:
        if out.type.tensor_type.elem_type in float_types:
            points[out.name] = out.name
    return points


def raw_points(model: onnx.ModelProto) -> dict[str, str]:
    """The smooth subset of `measure_points`: the NMS inputs when there is an NMS,
    else the float outputs (what per-layer sensitivity is measured on)."""
    points = measure_points(model)
    before_nms = {k: v for k, v in points.items() if is_nms_input(k) and v != k}
    return before_nms or points


def expose(model: onnx.ModelProto, tensors: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` that also returns `tensors` as graph outputs (declared
    without a type: ONNX Runtime infers it)."""
    model = copy.deepcopy(model)
    present = {out.name for out in model.graph.output}
    for name in tensors:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return model


def cut_before_nms(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The network without its NMS: the same graph up to the NMS inputs (raw boxes and
    scores), which become the outputs. None when the graph has no NMS. Latency budgets
    cover this part: NMS time depends on how many boxes pass its threshold, i.e. on the
    data and the weights."""
    points = raw_points(model)
    if not any(label.endswith(NMS_INPUT_LABELS[0]) for label in points):
        return None
    weights = {init.name for init in model.graph.initializer}
    inputs = [value.name for value in model.graph.input if value.name not in weights]
    return onnx.utils.Extractor(model).extract_model(inputs, list(dict.fromkeys(points.values())))
