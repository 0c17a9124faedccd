"""Random inputs from a runner's declared inputs, for timing and comparison.

Like Polygraphy's default data loader: floats uniform in [0, 1) (what a
normalized image looks like), integers 0 or 1, booleans at random; seeded, so
two runners (or two runs) see the same data.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ..backends.base import TensorSpec
from ..backends.shapes import resolve_shapes
from ..memory import check_memory


def make_feed(inputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]] | None = None,
              batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """One array per input. Dynamic dims come from `shapes` ({'x': (1, 3, 640, 640)}); `batch`
    sets the leading dim when it is dynamic. Unresolved dims raise MaedetError naming the input and dim."""
    resolved = resolve_shapes(inputs, shapes, batch)
    nbytes = sum(math.prod(resolved[spec.name]) * spec.dtype.itemsize for spec in inputs)
    check_memory(nbytes, "inputs of " + ", ".join(f"{name}:{'x'.join(map(str, shape))}"
                                                  for name, shape in resolved.items()), "shape")
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in inputs:
        shape = resolved[spec.name]
        if np.issubdtype(spec.dtype, np.floating):
            array = rng.random(shape, dtype=np.float32).astype(spec.dtype, copy=False)
        elif spec.dtype == np.bool_:
            array = rng.random(shape) < 0.5
        else:
            array = rng.integers(0, 2, shape).astype(spec.dtype)
        feed[spec.name] = array
    return feed
