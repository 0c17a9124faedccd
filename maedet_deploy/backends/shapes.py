"""Concrete shapes for declared inputs: `name:1x3x640x640` specs, batch sweeps and checks.

Shared by bench (random feeds), compare and the TensorRT builder (optimization
profiles), so a dynamic dim is resolved, and refused, the same way everywhere.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from ..errors import MaedetError
from .base import TensorSpec

Shape = tuple[int, ...]


def is_static(dim) -> bool:
    return isinstance(dim, int) and dim >= 0


def parse_shape(text: str) -> tuple[str, Shape]:
    """`x:1x3x640x640` -> ('x', (1, 3, 640, 640)); the name may itself contain ':' (TF's `input:0`)."""
    name, sep, dims = text.strip().rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise MaedetError(f"shape must look like NAME:1x3x640x640, got {text!r}")
    return name, shape


def parse_shapes(texts: Iterable[str] | None) -> dict[str, Shape]:
    """Repeated options and comma-separated lists alike (`x:1x3x8x8,y:1x4`), trtexec style."""
    shapes: dict[str, Shape] = {}
    for text in texts or ():
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, shape = parse_shape(item)
            if name in shapes and shapes[name] != shape:
                raise MaedetError(f"input {name!r} is given two shapes: {_fmt(shapes[name])} and {_fmt(shape)}")
            shapes[name] = shape
    return shapes


def _fmt(shape: Sequence) -> str:
    return "x".join(str(d) if is_static(d) else "?" for d in shape)


def check_names(inputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]]) -> None:
    known = {spec.name for spec in inputs}
    for name in shapes:
        if name not in known:
            raise MaedetError(f"no input named {name!r} (inputs: {', '.join(sorted(known))})")


def resolve_shape(spec: TensorSpec, shape: Sequence[int] | None = None, batch: int | None = None) -> Shape:
    """The concrete shape of one input: its static dims, `shape` for the dynamic ones,
    and `batch` as the leading dim. Conflicts and unresolved dims are MaedetErrors."""
    if shape is not None:
        if len(shape) != len(spec.shape):
            raise MaedetError(f"input {spec.name!r} has {len(spec.shape)} dims ({_fmt(spec.shape)}), "
                              f"the shape given has {len(shape)} ({_fmt(shape)})")
        for index, (declared, given) in enumerate(zip(spec.shape, shape)):
            if is_static(declared) and declared != given and not (index == 0 and batch is not None):
                raise MaedetError(f"input {spec.name!r} dim {index} is fixed at {declared} in the model, "
                                  f"the shape given says {given}")
    dims = list(shape) if shape is not None else list(spec.shape)
    if batch is not None:
        if not spec.shape:
            raise MaedetError(f"input {spec.name!r} is a scalar: it has no batch dim")
        if is_static(spec.shape[0]) and spec.shape[0] != batch:
            raise MaedetError(f"input {spec.name!r} has a fixed batch of {spec.shape[0]}; "
                              f"batch {batch} needs a model exported with a dynamic batch")
        dims[0] = batch
    for index, dim in enumerate(dims):
        if not is_static(dim):
            label = f" ({dim!r})" if isinstance(dim, str) else ""
            raise MaedetError(f"input {spec.name!r} dim {index}{label} is dynamic: give its shape, "
                              f"e.g. {spec.name}:{_fmt(dims)} with each ? replaced by a size", "shape")
    return tuple(int(d) for d in dims)


def resolve_shapes(inputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]] | None = None,
                   batch: int | None = None) -> dict[str, Shape]:
    """Concrete shapes for every input (see `resolve_shape`); unknown names are refused. `batch`
    goes to the inputs whose leading dim is dynamic (to all when none is: a fixed batch that
    differs is then an error)."""
    shapes = shapes or {}
    check_names(inputs, shapes)
    batched = {s.name for s in inputs if s.shape and not is_static(s.shape[0])} or {s.name for s in inputs}
    return {spec.name: resolve_shape(spec, shapes.get(spec.name), batch if spec.name in batched else None)
            for spec in inputs}


def parse_batches(text: str | None) -> list[int | None]:
    """`1,2,4,8` -> [1, 2, 4, 8]; nothing -> [None] (the shapes as declared or given)."""
    if not text:
        return [None]
    try:
        batches = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise MaedetError(f"batch must look like 1,2,4,8, got {text!r}")
    return batches


def profile_shapes(inputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]] | None,
                   batches: Sequence[int | None]) -> tuple[dict[str, Shape], dict[str, Shape], dict[str, Shape]]:
    """(min, opt, max) shapes covering every batch of a sweep, for engines built on the fly;
    opt is the first batch's shape."""
    resolved = [resolve_shapes(inputs, shapes, batch) for batch in batches]
    def bound(pick) -> dict[str, Shape]:
        return {name: tuple(pick(dims) for dims in zip(*(r[name] for r in resolved))) for name in resolved[0]}

    return bound(min), resolved[0], bound(max)
