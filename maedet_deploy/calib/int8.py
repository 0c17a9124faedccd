"""INT8 as explicit quantization: a Q/DQ ONNX for the backend that will run it
(`placement`: TensorRT 8.x/10.x/11.x builds it strongly typed, ONNX Runtime's CPU
provider fuses it into integer kernels).

Steps, each a plain function (Polygraphy-style, testable one at a time):

1. `prepare`: onnxruntime's quantization pre-processing (shape inference and
   basic graph optimization: constant folding, BatchNorm folded into Conv), so
   Q/DQ lands on the layers the runtime will actually run, not on a BN it would
   fuse away; opsets below 13 are converted up (per-channel Q/DQ needs 13). If the
   pre-processing fails on a model, the model is used as is and the reason is kept.
   A division by a constant (the `/ 6` of a decomposed hard-swish) becomes a product
   with its reciprocal: ONNX Runtime has an integer Mul kernel but no integer Div, so
   each Div would run in float between a DQ and a Q.
2. `ranges.collect` + a method: per-tensor ranges from one pass over the data.
3. `quantize_qdq`: onnxruntime's `quantize_static` in QDQ format with those ranges
   (through its calibration-cache file, so calibration runs once for any number of
   exclusion sets), per-channel symmetric int8 weights, activations as the placement
   wants them (`placement.py`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from ..backends.onnx_file import load_model
from ..errors import MaedetError, first_line
from .graph import COMPUTE_OPS, default_exclusions, name_nodes, producers, resolve_exclusions
from .macs import int8_share
from .placement import PLACEMENTS, QdqPlacement
from .ranges import Ranges

MIN_OPSET = 13  # per-channel DequantizeLinear (its `axis`)


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization prints progress to stdout and warns through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


@dataclass
class Prepared:
    """The float model quantization starts from (node names unique and stable)."""

    model: onnx.ModelProto
    preprocessed: bool
    note: str = ""


def _opset(model: onnx.ModelProto) -> int:
    return max((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), default=MIN_OPSET)


def _upgraded(model: onnx.ModelProto) -> onnx.ModelProto:
    if _opset(model) >= MIN_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises its own types
        raise MaedetError(f"the model's opset {_opset(model)} is below {MIN_OPSET}, which per-channel INT8 needs, "
                          f"and converting it failed: {first_line(exc)}") from None


def prepare(model: str | os.PathLike | bytes | onnx.ModelProto, preprocess: bool = True) -> Prepared:
    """Load, upgrade the opset when below 13, run onnxruntime's quantization pre-processing
    when asked (falling back to plain ONNX shape inference when it fails), name every node."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    original = _upgraded(load_model(model))
    note = "pre-processing off"
    if preprocess:
        errors = []
        with tempfile.TemporaryDirectory(prefix="maedet-calib-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "pre.onnx"
            onnx.save(original, str(src))
            for options in ({}, {"skip_symbolic_shape": True}):
                try:
                    with _quiet(), contextlib.chdir(tmp):  # it leaves temporary files in the working directory
                        quant_pre_process(str(src), str(dst), **options)
                    return Prepared(name_nodes(divisions_as_products(onnx.load(str(dst)))), True,
                                    "symbolic shape inference skipped" if options else "")
                except Exception as exc:  # the pre-processing raises many types
                    errors.append(first_line(exc))
        note = f"pre-processing failed ({errors[-1]}); quantizing the model as is"
    try:
        inferred = onnx.shape_inference.infer_shapes(original)
    except Exception:  # shape inference is best effort here
        inferred = original
    return Prepared(name_nodes(divisions_as_products(inferred)), False, note)


def divisions_as_products(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each Div by a float initializer without zeros becomes a Mul by its reciprocal, in place."""
    weights = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        divisor = weights.get(node.input[1]) if node.op_type == "Div" and len(node.input) == 2 else None
        value = numpy_helper.to_array(divisor) if divisor is not None else None
        if value is None or value.dtype.kind != "f" or not np.all(value):
            continue
        name = f"{node.input[1]}/reciprocal"
        if name not in weights:
            weights[name] = numpy_helper.from_array((1 / value).astype(value.dtype), name)
            model.graph.initializer.append(weights[name])
        node.op_type, node.input[1] = "Mul", name
    return model


def stem_layers(model: onnx.ModelProto, max_channels: int) -> dict[str, str]:
    """Convs with at most `max_channels` input channels (the ones reading the image)."""
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        dims = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if dims and len(dims) > 1 and dims[1] * groups <= max_channels:
            out[node.name] = f"reads {dims[1] * groups} channels: faster in float on this backend"
    return out


def exclusions(model: Prepared | onnx.ModelProto, exclude: Iterable[str] = (), use_defaults: bool = True,
               placement: QdqPlacement = PLACEMENTS["tensorrt"]) -> dict[str, str]:
    """Node name -> reason, for the default float layers (the head's output path; for
    some backends the image stem) and the user's names/op types/patterns."""
    proto = model.model if isinstance(model, Prepared) else model
    out = default_exclusions(proto) if use_defaults else {}
    if use_defaults and placement.float_stem_channels:
        out.update(stem_layers(proto, placement.float_stem_channels))
    out.update(resolve_exclusions(proto, exclude))
    return out


def _tensors_data(ranges: Ranges):
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    return TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
        for name, (lo, hi) in ranges.ranges.items()})


def quantize_qdq(model: Prepared | onnx.ModelProto, ranges: Ranges, exclude: Collection[str] = (),
                 placement: QdqPlacement = PLACEMENTS["tensorrt"], per_channel: bool = True) -> onnx.ModelProto:
    """The Q/DQ model of a prepared float model, with `exclude` node names left float."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    proto = model.model if isinstance(model, Prepared) else model
    exclude, op_types = set(exclude), None
    extra: dict[str, Any] = {"ActivationSymmetric": placement.symmetric, "WeightSymmetric": True,
                             "QuantizeBias": placement.quantize_bias,
                             "QDQKeepRemovableActivations": placement.ops == "compute"}
    if placement.ops == "compute":  # element-wise ops: only joins of two activations (residual adds)
        exclude |= set(constant_operand_nodes(proto, ("Add",)))
        op_types = list(COMPUTE_OPS) + ["Add"]
        extra["OpTypesToExcludeOutputQuantization"] = list(COMPUTE_OPS)
    activation = QuantType.QInt8 if placement.activations == "int8" else QuantType.QUInt8
    with tempfile.TemporaryDirectory(prefix="maedet-calib-") as tmp:
        src, dst, cache = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx", Path(tmp) / "ranges.json"
        onnx.save(proto, str(src))
        save_tensors_data(_tensors_data(ranges), cache)
        try:
            with _quiet(), contextlib.chdir(tmp):  # it leaves temporary files in the working directory
                quantize_static(str(src), str(dst), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                                per_channel=per_channel, reduce_range=False, activation_type=activation,
                                weight_type=QuantType.QInt8, nodes_to_exclude=sorted(exclude),
                                extra_options=extra, calibration_cache_path=str(cache))
        except Exception as exc:  # onnxruntime.quantization raises assorted types
            raise MaedetError(f"onnxruntime quantization failed: {first_line(exc)}") from None
        quantized = onnx.load(str(dst))
    return float_inputs_for(quantized, exclude) if placement.float_reads_float else quantized


def constant_operand_nodes(model: onnx.ModelProto, op_types: Collection[str]) -> list[str]:
    """Nodes of `op_types` with a constant operand (an initializer or a Constant's
    output), like the `x + 3` inside a decomposed hard-swish: not residual joins."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    return [node.name for node in model.graph.node
            if node.op_type in op_types and any(name in constants for name in node.input)]


def float_inputs_for(model: onnx.ModelProto, names: Collection[str]) -> onnx.ModelProto:
    """Make excluded nodes read float activations, in place.

    onnxruntime quantizes a tensor once for all its readers, so a node left out
    of quantization still reads the dequantized copy whenever another reader (or
    the producer's output quantization) asked for Q/DQ. Such a node is rewired to
    the float tensor in front of the QuantizeLinear, and Q/DQ nodes nobody reads
    any more are dropped. (A weight shared with a quantized node stays
    dequantized: the float initializer no longer exists.)"""
    names = set(names)
    made_by = producers(model)
    for node in model.graph.node:
        if node.name not in names:
            continue
        for slot, tensor in enumerate(node.input):
            dq = made_by.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = made_by.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[slot] = q.input[0]
    graph_outputs = {out.name for out in model.graph.output}
    while True:
        read = {name for node in model.graph.node for name in node.input} | graph_outputs
        dead = [node for node in model.graph.node
                if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in read for o in node.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    used = {name for node in model.graph.node for name in node.input}
    for init in [init for init in model.graph.initializer if init.name not in used and init.name not in graph_outputs]:
        model.graph.initializer.remove(init)
    return model


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """Compute layers of a Q/DQ model that run in INT8: every input they multiply (the
    activation and the weight; both operands of a MatMul) comes out of a DequantizeLinear."""
    made_by = producers(model)
    dequantized = lambda name: (dq := made_by.get(name)) is not None and dq.op_type == "DequantizeLinear"
    return [node.name for node in model.graph.node if node.op_type in COMPUTE_OPS and len(node.input) > 1
            and dequantized(node.input[0]) and dequantized(node.input[1])]


def qdq_summary(model: onnx.ModelProto, macs: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What a TensorRT or ONNX Runtime user checks in a Q/DQ graph: counts, types, zero
    points, per-channel weights, quantized and float layers and the INT8 share of MACs."""
    initializers = {init.name: init for init in model.graph.initializer}
    made_by = producers(model)
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    zero_points, types, per_channel, per_tensor = [], set(), 0, 0
    for node in quantize + dequantize:
        if len(node.input) > 2 and node.input[2] in initializers:
            zp = numpy_helper.to_array(initializers[node.input[2]])
            if zp.dtype != np.int32:  # int32: a bias, not an 8-bit tensor
                zero_points.append((node, zp))
                types.add(str(zp.dtype))
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers and node.input[0] not in made_by:
            weight = numpy_helper.to_array(initializers[node.input[0]])
            if weight.dtype == np.int32:
                continue  # a bias
            types.add(str(weight.dtype))
            scale = numpy_helper.to_array(initializers[node.input[1]])
            per_channel, per_tensor = per_channel + (scale.size > 1), per_tensor + (scale.size <= 1)
    quantized = quantized_layers(model)
    float_layers = [n.name for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name not in set(quantized)]
    return {
        "quantize_linear": len(quantize), "dequantize_linear": len(dequantize),
        "quantized_types": sorted(types), "zero_points_all_zero": all(not np.any(zp) for _, zp in zero_points),
        "per_channel_weights": per_channel, "per_tensor_weights": per_tensor,
        "quantized_layers": len(quantized), "float_layers": float_layers,
        "int8_mac_share": int8_share(macs, quantized) if macs else None,
    }


