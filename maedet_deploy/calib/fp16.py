"""FP16: a float16 ONNX (what strongly typed TensorRT builds from), inputs and
outputs kept float32 by default, with ops that must stay float32 blocked.

Written with onnx's own helpers rather than onnxconverter-common (one more
dependency for ~150 lines). How it works:

- tensor types come from ONNX shape inference;
- every node runs in float16 unless its op type is in the block list (or its
  name is blocked, or it is from another domain, or it has subgraphs);
- a float32 tensor lives in the precision of its producer (graph inputs:
  float32 when `keep_io_types`); a constant (initializer or Constant node) is
  stored in float16 when all its readers run in float16;
- wherever a reader needs the other precision, one Cast per tensor and
  precision is inserted; Cast nodes themselves keep their declared output type;
- graph outputs produced in float16 get a final Cast back to float32 under
  their original name when `keep_io_types`.

Values beyond float16's range (65504) are clipped when stored, and counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import MaedetError
from .graph import load_model, name_nodes
from .int8 import prepare, save_model

FP32_OPS = ("Resize", "Upsample", "NonMaxSuppression", "TopK", "RoiAlign", "Range", "EyeLike",
            "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial")
FLOAT16_MAX = float(np.finfo(np.float16).max)
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


@dataclass
class Fp16Result:
    model: onnx.ModelProto
    float32_nodes: list[str]  # nodes left in float32
    casts: int  # Cast nodes inserted
    clipped_values: int  # constant values clipped to the float16 range
    path: Path | None = None
    notes: list[str] = field(default_factory=list)


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort; unknown tensors are simply not converted
        inferred = model
    types: dict[str, int] = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _to_fp16(array: np.ndarray) -> tuple[np.ndarray, int]:
    clipped = int(np.count_nonzero(np.abs(array) > FLOAT16_MAX))
    return np.clip(array, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16), clipped


def _overflowing_readers(model: onnx.ModelProto) -> set[str]:
    """Nodes reading a float32 constant that float16 cannot hold (e.g. an unfolded
    BatchNorm's running variance); they stay float32. Clip/Min/Max bounds are
    safe to clip and do not count."""
    big = {init.name for init in model.graph.initializer
           if init.data_type == FLOAT and np.any(np.abs(numpy_helper.to_array(init)) > FLOAT16_MAX)}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT and \
                        np.any(np.abs(numpy_helper.to_array(attr.t)) > FLOAT16_MAX):
                    big.add(node.output[0])
    return {node.name for node in model.graph.node
            if node.op_type not in ("Clip", "Min", "Max") and any(name in big for name in node.input)}


def convert_fp16(model: str | os.PathLike | bytes | onnx.ModelProto, out: str | os.PathLike | None = None, *,
                 keep_io_types: bool = True, block_ops: Iterable[str] = FP32_OPS, block_nodes: Iterable[str] = (),
                 optimize: bool = True) -> Fp16Result:
    """Float32 ONNX -> float16 ONNX (written atomically to `out` when given).

    `optimize` first runs the same pre-processing as INT8 (constant folding,
    BatchNorm folded into Conv), which also removes most values float16 cannot hold."""
    notes = []
    if optimize:
        prepared = prepare(model)
        model = prepared.model
        if prepared.note:
            notes.append(prepared.note)
    else:
        model = name_nodes(load_model(model))
    graph = model.graph
    types = _tensor_types(model)
    block_ops, block_nodes = set(block_ops), set(block_nodes)
    unknown = sorted(block_nodes - {n.name for n in graph.node})
    if unknown:
        raise MaedetError(f"no node named {', '.join(unknown)} in the model")
    overflow = _overflowing_readers(model)
    if overflow:
        notes.append(f"{len(overflow)} node(s) kept float32: they read constants beyond float16's range")
    block_nodes |= overflow

    def is_half(node: onnx.NodeProto) -> bool:
        if node.op_type in block_ops or node.name in block_nodes or node.domain not in ("", "ai.onnx"):
            return False
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            return False
        if node.op_type == "Constant":
            return False  # decided by its readers, like an initializer
        # a node whose outputs are not all typed cannot be followed safely
        return all(out in types for out in node.output if out)

    half = {node.name: is_half(node) for node in graph.node}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name:
                readers.setdefault(name, []).append((node, slot))
    graph_outputs = {o.name for o in graph.output}

    def wants_half(node: onnx.NodeProto) -> bool | None:
        """The precision a reader wants for a float input; None: takes either (Cast)."""
        return None if node.op_type == "Cast" else half[node.name]

    # where each float32 tensor lives
    home: dict[str, int] = {}
    inputs = {i.name for i in graph.input}
    for value in graph.input:
        if types.get(value.name) == FLOAT:
            home[value.name] = FLOAT if keep_io_types else FLOAT16
            if not keep_io_types:
                value.type.tensor_type.elem_type = FLOAT16
    clipped = 0
    constants = [init.name for init in graph.initializer if init.data_type == FLOAT and init.name not in inputs]
    constants += [n.output[0] for n in graph.node if n.op_type == "Constant" and types.get(n.output[0]) == FLOAT]
    for name in constants:
        wants = {wants_half(node) for node, _ in readers.get(name, [])} - {None}
        home[name] = FLOAT16 if wants == {True} and name not in graph_outputs else FLOAT
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        for produced in node.output:
            if types.get(produced) == FLOAT:
                home[produced] = FLOAT16 if half[node.name] and node.op_type != "Cast" else FLOAT

    # store constants in float16
    for init in graph.initializer:
        if home.get(init.name) == FLOAT16:
            array, count = _to_fp16(numpy_helper.to_array(init))
            clipped += count
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    for node in graph.node:
        if node.op_type == "Constant" and home.get(node.output[0]) == FLOAT16:
            for attr in node.attribute:
                if attr.name == "value":
                    array, count = _to_fp16(numpy_helper.to_array(attr.t))
                    clipped += count
                    attr.t.CopyFrom(numpy_helper.from_array(array))
        if node.op_type == "ConstantOfShape" and home.get(node.output[0]) == FLOAT16:
            values = [attr for attr in node.attribute if attr.name == "value"]
            if not values:  # the default is a float32 zero
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(
                    np.zeros(1, np.float16))))
            elif values[0].t.data_type == FLOAT:
                values[0].t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(values[0].t).astype(np.float16)))

    # graph outputs made in float16: renamed inside, cast back to float32 under their own names
    taken = {n for node in graph.node for n in list(node.input) + list(node.output)}
    final_casts = []
    for value in graph.output:
        if home.get(value.name) != FLOAT16:
            continue
        if not keep_io_types:
            value.type.tensor_type.elem_type = FLOAT16
            continue
        inner = f"{value.name}/fp16"
        while inner in taken:
            inner += "_"
        taken.add(inner)
        for node in graph.node:
            node.output[:] = [inner if name == value.name else name for name in node.output]
            node.input[:] = [inner if name == value.name else name for name in node.input]
        home[inner] = home.pop(value.name)
        final_casts.append(helper.make_node("Cast", [inner], [value.name], to=FLOAT, name=f"{value.name}/Cast"))

    # casts where a reader wants the other precision
    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[tuple[int, onnx.NodeProto]] = []

    def cast_of(name: str, to: int, position: int) -> str:
        key = (name, to)
        if key not in casts:
            target = f"{name}/{'fp16' if to == FLOAT16 else 'fp32'}"
            while target in taken:
                target += "_"
            taken.add(target)
            casts[key] = target
            new_nodes.append((position, helper.make_node("Cast", [name], [target], to=to,
                                                         name=f"{target}/Cast")))
        return casts[key]

    for position, node in enumerate(graph.node):
        want = wants_half(node)
        if want is None:
            continue
        for slot, name in enumerate(node.input):
            if name in home:
                need = FLOAT16 if want else FLOAT
                if home[name] != need:
                    node.input[slot] = cast_of(name, need, position)

    nodes = list(graph.node)
    for position, cast in sorted(new_nodes, key=lambda item: item[0], reverse=True):
        nodes.insert(position, cast)
    del graph.node[:]
    graph.node.extend(nodes + final_casts)
    del graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # value_info is optional; the graph itself is complete
        pass
    result = Fp16Result(model, [n.name for n in model.graph.node if n.name in half and not half[n.name]
                                and n.op_type not in ("Constant", "Cast")],
                        len(new_nodes) + len(final_casts), clipped, notes=notes)
    if clipped:
        result.notes.append(f"{clipped} constant value(s) beyond +-65504 clipped")
    if out is not None:
        result.path = save_model(model, out)
    return result
