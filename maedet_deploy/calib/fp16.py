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
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..backends.onnx_file import load_model
from ..errors import MaedetError
from .graph import name_nodes
from .int8 import prepare

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


@dataclass
class _Graph:
    """What the conversion steps share: the graph, tensor types, which nodes run in float16,
    each tensor's readers and home precision, and the tensor names already taken."""

    graph: onnx.GraphProto
    types: dict[str, int]
    half: dict[str, bool]
    readers: dict[str, list[tuple[onnx.NodeProto, int]]]
    home: dict[str, int] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)

    def wants_half(self, node: onnx.NodeProto) -> bool | None:
        """The precision a reader wants for a float input; None: takes either (Cast)."""
        return None if node.op_type == "Cast" else self.half[node.name]

    def fresh(self, name: str) -> str:
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name


def _runs_half(node: onnx.NodeProto, block_ops: set[str], block_nodes: set[str], types: dict[str, int]) -> bool:
    if node.op_type in block_ops or node.name in block_nodes or node.domain not in ("", "ai.onnx"):
        return False
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
        return False
    if node.op_type == "Constant":
        return False  # decided by its readers, like an initializer
    return all(out in types for out in node.output if out)  # untyped outputs cannot be followed safely


def _plan(model: onnx.ModelProto, block_ops: set[str], block_nodes: set[str]) -> _Graph:
    graph, types = model.graph, _tensor_types(model)
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name:
                readers.setdefault(name, []).append((node, slot))
    half = {node.name: _runs_half(node, block_ops, block_nodes, types) for node in graph.node}
    taken = {n for node in graph.node for n in list(node.input) + list(node.output)}
    return _Graph(graph, types, half, readers, taken=taken)


def _place_tensors(plan: _Graph, keep_io_types: bool) -> None:
    """Where each float32 tensor lives: graph inputs as asked, constants in float16 when
    all their readers run in float16, node outputs in their producer's precision."""
    graph, types, inputs = plan.graph, plan.types, {i.name for i in plan.graph.input}
    for value in graph.input:
        if types.get(value.name) == FLOAT:
            plan.home[value.name] = FLOAT if keep_io_types else FLOAT16
            if not keep_io_types:
                value.type.tensor_type.elem_type = FLOAT16
    outputs = {o.name for o in graph.output}
    constants = [init.name for init in graph.initializer if init.data_type == FLOAT and init.name not in inputs]
    constants += [n.output[0] for n in graph.node if n.op_type == "Constant" and types.get(n.output[0]) == FLOAT]
    for name in constants:
        wants = {plan.wants_half(node) for node, _ in plan.readers.get(name, [])} - {None}
        plan.home[name] = FLOAT16 if wants == {True} and name not in outputs else FLOAT
    for node in graph.node:
        if node.op_type != "Constant":
            for produced in node.output:
                if types.get(produced) == FLOAT:
                    plan.home[produced] = FLOAT16 if plan.half[node.name] and node.op_type != "Cast" else FLOAT


def _store_constants(plan: _Graph) -> int:
    """Initializers, Constant and ConstantOfShape values that live in float16 are stored so;
    returns how many values had to be clipped to float16's range."""
    clipped = 0
    for init in plan.graph.initializer:
        if plan.home.get(init.name) == FLOAT16:
            array, count = _to_fp16(numpy_helper.to_array(init))
            clipped += count
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    for node in plan.graph.node:
        if plan.home.get(node.output[0] if node.output else "") != FLOAT16:
            continue
        values = [attr for attr in node.attribute if attr.name == "value"]
        if node.op_type == "Constant" and values:
            array, count = _to_fp16(numpy_helper.to_array(values[0].t))
            clipped += count
            values[0].t.CopyFrom(numpy_helper.from_array(array))
        elif node.op_type == "ConstantOfShape" and not values:  # the default is a float32 zero
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))
        elif node.op_type == "ConstantOfShape" and values[0].t.data_type == FLOAT:
            values[0].t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(values[0].t).astype(np.float16)))
    return clipped


def _outputs_back_to_float(plan: _Graph, keep_io_types: bool) -> list[onnx.NodeProto]:
    """Graph outputs made in float16: renamed inside and cast back to float32 under their
    own names (or declared float16 when I/O types are not kept)."""
    casts = []
    for value in plan.graph.output:
        if plan.home.get(value.name) != FLOAT16:
            continue
        if not keep_io_types:
            value.type.tensor_type.elem_type = FLOAT16
            continue
        inner = plan.fresh(f"{value.name}/fp16")
        for node in plan.graph.node:
            node.output[:] = [inner if name == value.name else name for name in node.output]
            node.input[:] = [inner if name == value.name else name for name in node.input]
        plan.home[inner] = plan.home.pop(value.name)
        casts.append(helper.make_node("Cast", [inner], [value.name], to=FLOAT, name=f"{value.name}/Cast"))
    return casts


def _insert_casts(plan: _Graph) -> int:
    """One Cast per tensor and precision wherever a reader wants the other precision."""
    made: dict[tuple[str, int], str] = {}
    new_nodes: list[tuple[int, onnx.NodeProto]] = []
    for position, node in enumerate(plan.graph.node):
        want = plan.wants_half(node)
        if want is None:
            continue
        for slot, name in enumerate(node.input):
            need = FLOAT16 if want else FLOAT
            if name not in plan.home or plan.home[name] == need:
                continue
            if (name, need) not in made:
                target = plan.fresh(f"{name}/{'fp16' if need == FLOAT16 else 'fp32'}")
                made[name, need] = target
                new_nodes.append((position, helper.make_node("Cast", [name], [target], to=need, name=f"{target}/Cast")))
            node.input[slot] = made[name, need]
    nodes = list(plan.graph.node)
    for position, cast in sorted(new_nodes, key=lambda item: item[0], reverse=True):
        nodes.insert(position, cast)
    del plan.graph.node[:]
    plan.graph.node.extend(nodes)
    return len(new_nodes)


def _start(model: str | os.PathLike | bytes | onnx.ModelProto, optimize: bool) -> tuple[onnx.ModelProto, list[str]]:
    if not optimize:
        return name_nodes(load_model(model)), []
    prepared = prepare(model)
    return prepared.model, [prepared.note] if prepared.note else []


def convert_fp16(model: str | os.PathLike | bytes | onnx.ModelProto, *, keep_io_types: bool = True,
                 block_ops: Iterable[str] = FP32_OPS, block_nodes: Iterable[str] = (),
                 optimize: bool = True) -> Fp16Result:
    """Float32 ONNX -> float16 ONNX.

    `optimize` first runs the same pre-processing as INT8 (constant folding,
    BatchNorm folded into Conv), which also removes most values float16 cannot hold."""
    model, notes = _start(model, optimize)
    block_nodes = set(block_nodes)
    unknown = sorted(block_nodes - {n.name for n in model.graph.node})
    if unknown:
        raise MaedetError(f"no node named {', '.join(unknown)} in the model", setting="exclude")
    overflow = _overflowing_readers(model)
    if overflow:
        notes.append(f"{len(overflow)} node(s) kept float32: they read constants beyond float16's range")
    plan = _plan(model, set(block_ops), block_nodes | overflow)
    _place_tensors(plan, keep_io_types)
    clipped = _store_constants(plan)
    final_casts = _outputs_back_to_float(plan, keep_io_types)
    casts = _insert_casts(plan) + len(final_casts)
    plan.graph.node.extend(final_casts)
    del plan.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # value_info is optional; the graph itself is complete
        pass
    float32 = [n.name for n in model.graph.node if n.name in plan.half and not plan.half[n.name]
               and n.op_type not in ("Constant", "Cast")]
    if clipped:
        notes.append(f"{clipped} constant value(s) beyond +-65504 clipped")
    return Fp16Result(model, float32, casts, clipped, notes=notes)
