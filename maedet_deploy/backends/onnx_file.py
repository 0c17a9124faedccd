"""The one place that reads and writes ONNX files: every layer above loads, saves and
inspects models through here, so a missing file, a file that is not ONNX and a model's
declared inputs are handled, and worded, the same way everywhere."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import onnx

from ..atomic import atomic_path
from ..errors import MaedetError, first_line
from .base import TensorSpec

ModelSource = str | os.PathLike | bytes | onnx.ModelProto


def load_model(model: ModelSource, external_data: bool = True) -> onnx.ModelProto:
    """A ModelProto from a path, serialized bytes or a ModelProto (copied, never modified).
    `external_data=False` reads only the graph (enough for shapes and op types)."""
    if isinstance(model, onnx.ModelProto):
        return copy.deepcopy(model)
    if isinstance(model, bytes):
        try:
            return onnx.load_from_string(model)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise MaedetError(f"not an ONNX model: {first_line(exc)}") from None
    path = Path(model)
    if not path.is_file():
        raise MaedetError(f"model file not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # protobuf's DecodeError, a missing external-data file, ...
        raise MaedetError(f"{path} is not an ONNX model: {first_line(exc)}") from None


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write atomically: the file is the whole model or absent, never half-written."""
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


def weights_apart(model: onnx.ModelProto, folder: str | os.PathLike) -> onnx.ModelProto:
    """A copy of `model` whose weights live in one file in `folder`: copying, serializing and
    loading it then cost its graph, not its weights (every model saved into `folder` that keeps
    these initializers reads them from that file), for work that builds many variants of a model."""
    model = copy.deepcopy(model)
    onnx.save_model(model, str(Path(folder) / "weights.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=1024)
    return model   # saving moved each large initializer's bytes to weights.bin and left a reference


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The graph's real inputs as TensorSpecs (dynamic dims by name, or None); initializers that
    old exporters also list as inputs are left out."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)) if tensor.elem_type else \
            np.dtype(np.float32)
        specs.append(TensorSpec(value.name, dims, dtype))
    return specs
