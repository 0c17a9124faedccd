"""A model to be timed, held compactly: its ONNX graph without the weights' bytes.

A search times hundreds of random-weight models, and their weights are most of
their bytes (45 MB for a detector at 320, against about 100 kB of graph).
Latency does not depend on the weights' values, only on their shapes, so the
measurer keeps the graph and regenerates weights of the same shapes and a
He-like scale when it loads a model: a window of models then fits in a few MB
of memory and no disk, and a model can be reloaded for every visit. Small and
integer initializers (shapes, scales, indices) are kept as exported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..backends.onnx_file import load_model

REGENERATED = 1024          # float initializers with at least this many elements are regenerated
_NOISE = np.random.default_rng(0).standard_normal(1 << 16).astype(np.float32)


@dataclass(frozen=True)
class CompactModel:
    """`graph`: the serialized model with its large float initializers emptied; `weights`: their
    names; `weight_bytes`: what they take once regenerated; `activation_bytes`: the largest
    inputs + outputs of one node (a loaded runner's working memory grows with it)."""

    graph: bytes
    weights: frozenset[str]
    weight_bytes: int
    activation_bytes: int

    @property
    def nbytes(self) -> int:
        return len(self.graph)


def compact_model(path: str | Path) -> CompactModel:
    """Read an exported model and drop its large float initializers' data."""
    model = load_model(path)
    names, weight_bytes = set(), 0
    for init in model.graph.initializer:
        count = math.prod(init.dims)
        if init.data_type == onnx.TensorProto.FLOAT and count >= REGENERATED:
            names.add(init.name)
            weight_bytes += 4 * count
            init.ClearField("raw_data")
            init.ClearField("float_data")
    return CompactModel(model.SerializeToString(), frozenset(names), weight_bytes, _largest_activation(model))


def _largest_activation(model: onnx.ModelProto) -> int:
    """Bytes of the largest inputs + outputs of any node (float32 tensors of known shape)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    sizes = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if dims and all(dims):
            sizes[value.name] = 4 * math.prod(dims)
    constants = {init.name for init in model.graph.initializer}
    return max((sum(sizes.get(name, 0) for name in (*node.input, *node.output) if name not in constants)
                for node in inferred.graph.node), default=0)


def _weights(dims: list[int]) -> bytes:
    """Deterministic normal values at a He-like scale (fan-in of a conv or matrix weight), so
    activations stay in the normal float range through deep random networks."""
    count = math.prod(dims)
    fan_in = math.prod(dims[1:]) if len(dims) > 1 else count
    values = np.resize(_NOISE, count)
    values *= np.float32(math.sqrt(2.0 / max(1, fan_in)))
    return values.tobytes()


def materialize(compact: CompactModel) -> bytes:
    """The full model as ONNX bytes, weights regenerated."""
    model = onnx.ModelProto()
    model.ParseFromString(compact.graph)
    for init in model.graph.initializer:
        if init.name in compact.weights:
            init.raw_data = _weights(list(init.dims))
    return model.SerializeToString()
