"""Multiply-accumulates of a model's compute layers at a concrete input shape: what the
INT8 share is measured in, and what partial quantization spends (a knapsack on MACs,
not on a layer count)."""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import numpy as np
import onnx

from .graph import COMPUTE_OPS


def _with_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    fixed = copy.deepcopy(model)
    for value in fixed.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    del fixed.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(fixed)
    except Exception:  # shape inference is best effort: layers without shapes count 0
        return fixed


def layer_macs(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Node name -> MACs of each compute layer (Conv, ConvTranspose, Gemm, MatMul) for one
    inference at `input_shapes`; 0 where a shape is unknown."""
    typed = _with_input_shapes(model, input_shapes)
    shapes: dict[str, list[int]] = {}
    for value in list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs = {}
    for node in model.graph.node:
        if node.op_type in COMPUTE_OPS:
            macs[node.name] = _node_macs(node, shapes)
    return macs


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    x, w = shapes.get(node.input[0], []), shapes.get(node.input[1], [])
    y = shapes.get(node.output[0], [])
    if not x or not w or not y or 0 in x or 0 in w or 0 in y:
        return 0
    if node.op_type == "Conv":  # every output element takes Cin/groups * k*k products
        return int(np.prod(y, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if node.op_type == "ConvTranspose":  # every input element spreads over Cout/groups * k*k outputs
        return int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return int(np.prod(y, dtype=np.int64) * (x[0] if trans_a else x[-1]))
    return int(np.prod(y, dtype=np.int64) * x[-1])  # MatMul: output elements x the shared dim


def int8_share(macs: Mapping[str, int], quantized: Sequence[str]) -> float | None:
    """The fraction of compute-layer MACs in `quantized` layers (None: no MACs known)."""
    total = sum(macs.values())
    return sum(macs.get(name, 0) for name in quantized) / total if total else None

