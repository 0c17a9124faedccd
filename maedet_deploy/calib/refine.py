"""Corrections applied to the float model before quantization, measured in
bench/calib_accuracy.py and kept only where they pay.

Bias correction (Nagel et al., "Data-Free Quantization", 2019): rounding a conv's
weights to int8 shifts each output channel's mean by (W_q - W) . E[x]; subtracting that
shift from the bias (E[x] per input channel from the calibration pass) removes the
systematic part of the weight rounding error. W_q is computed exactly as onnxruntime's
quantizer will round the weights (symmetric, [-127, 127], per channel or per tensor).
"""

from __future__ import annotations

import copy
from typing import Collection, Mapping

import numpy as np
import onnx
from onnx import numpy_helper


def rounded_weights(weight: np.ndarray, per_channel: bool) -> np.ndarray:
    """The weights after symmetric int8 quantization and dequantization, as onnxruntime does it."""
    axes = tuple(range(1, weight.ndim)) if per_channel else None
    amax = np.abs(weight).max(axis=axes, keepdims=per_channel)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return (np.clip(np.round(weight / scale), -127, 127) * scale).astype(np.float32)


def correct_biases(model: onnx.ModelProto, channel_means: Mapping[str, np.ndarray], skip: Collection[str] = (),
                   per_channel: bool = True) -> int:
    """Fold the expected weight-rounding shift of every Conv (not in `skip`) into its bias,
    in place; returns how many convs were corrected."""
    weights = {init.name: init for init in model.graph.initializer}
    corrected = 0
    for node in model.graph.node:
        mean = channel_means.get(node.input[0]) if node.op_type == "Conv" else None
        if mean is None or node.name in skip or node.input[1] not in weights:
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        error = (rounded_weights(weight, per_channel) - weight).sum(axis=(2, 3)).astype(np.float64)  # [O, C/g]
        per_group = mean.reshape(groups, -1)  # [g, C/g]
        shift = (error.reshape(groups, -1, error.shape[1]) * per_group[:, None, :]).sum(-1).reshape(-1)
        _add_to_bias(model, node, weights, -shift.astype(np.float32))
        corrected += 1
    return corrected


def bias_corrected(model: onnx.ModelProto, channel_means: Mapping[str, np.ndarray], skip: Collection[str] = (),
                   per_channel: bool = True) -> onnx.ModelProto:
    """A copy of `model` with the biases of the convs that will be quantized (not in `skip`) corrected."""
    corrected = copy.deepcopy(model)
    correct_biases(corrected, channel_means, skip, per_channel)
    return corrected


def _add_to_bias(model: onnx.ModelProto, node: onnx.NodeProto, weights: dict, delta: np.ndarray) -> None:
    """A new bias initializer for this conv alone (another node may share the old one)."""
    old = numpy_helper.to_array(weights[node.input[2]]) if len(node.input) > 2 and node.input[2] in weights else 0
    name = f"{node.name}/corrected_bias"
    model.graph.initializer.append(numpy_helper.from_array((old + delta).astype(np.float32), name))
    if len(node.input) == 2:
        node.input.append(name)
    else:
        node.input[2] = name
