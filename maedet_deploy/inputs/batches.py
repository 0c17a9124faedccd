"""Model feeds from files, one batch at a time: preprocessed image files for a single
image input, or arrays from an .npy/.npz file for any inputs. Both are re-iterable
(each pass reads the same batches again), so a reference model and any number of
candidates see identical data without keeping it all in memory.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..backends.base import TensorSpec
from ..errors import MaedetError
from .preprocess import ImageMeta, PreprocessSpec, load_image
from .tensors import load_arrays


@dataclass
class Batch:
    """One inference's feed; `metas` has one entry per batch item, `valid` items are real
    (the rest repeat the last sample to fill a fixed batch size)."""

    feed: dict[str, np.ndarray]
    metas: list[ImageMeta | None]
    valid: int


def batch_groups(count: int, batch: int) -> list[list[int]]:
    """Sample indices per batch; the last batch repeats its last sample up to `batch`."""
    groups = [list(range(start, min(start + batch, count))) for start in range(0, count, batch)]
    return [g + [g[-1]] * (batch - len(g)) for g in groups]


def static_dim(spec: TensorSpec, axis: int) -> int | None:
    dim = spec.shape[axis]
    return dim if isinstance(dim, int) and dim > 0 else None


def is_float(spec: TensorSpec) -> bool:
    return np.issubdtype(spec.dtype, np.floating)


class ImageBatches:
    """Preprocessed image files for one image input, read lazily one batch at a time."""

    def __init__(self, paths: Sequence[Path], model_input: TensorSpec, spec: PreprocessSpec, channels: int) -> None:
        self.paths, self.input, self.spec, self.channels = list(paths), model_input, spec, channels
        self.num_samples = len(self.paths)

    def __len__(self) -> int:
        return len(batch_groups(self.num_samples, self.spec.batch or 1))

    def names(self) -> list[str]:
        return [str(p) for p in self.paths]

    def subset(self, indices: Sequence[int]) -> "ImageBatches":
        return ImageBatches([self.paths[i] for i in indices], self.input, self.spec, self.channels)

    def __iter__(self) -> Iterator[Batch]:
        for group in batch_groups(self.num_samples, self.spec.batch or 1):
            loaded = {index: load_image(self.paths[index], self.spec, self.channels) for index in set(group)}
            array = np.stack([loaded[index][0] for index in group]).astype(self.input.dtype, copy=False)
            valid = len(set(group))
            metas = [loaded[index][1] if position < valid else None for position, index in enumerate(group)]
            yield Batch({self.input.name: array}, metas, valid)


class TensorBatches:
    """Samples from arrays: one array per model input, first axis = samples."""

    def __init__(self, arrays: dict[str, np.ndarray], batch: int, source: str = "tensors") -> None:
        self.arrays, self.batch, self.source = arrays, batch, source
        self.num_samples = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return len(batch_groups(self.num_samples, self.batch))

    def names(self) -> list[str]:
        return [f"{self.source}[{i}]" for i in range(self.num_samples)]

    def subset(self, indices: Sequence[int]) -> "TensorBatches":
        return TensorBatches({k: v[list(indices)] for k, v in self.arrays.items()}, self.batch, self.source)

    def __iter__(self) -> Iterator[Batch]:
        for group in batch_groups(self.num_samples, self.batch):
            yield Batch({name: array[group] for name, array in self.arrays.items()}, [None] * len(group),
                        len(set(group)))


def declared_size(metadata: dict[str, str]) -> tuple[int, int] | None:
    """The input size a model declares in its metadata (Ultralytics' `imgsz`: '[640, 640]')."""
    try:
        value = ast.literal_eval(metadata.get("imgsz", ""))
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int):
        value = [value, value]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    return None


def resolve_image_input(inputs: Sequence[TensorSpec], spec: PreprocessSpec,
                        metadata: dict[str, str] | None = None) -> tuple[TensorSpec, PreprocessSpec, int]:
    """Check that images can feed the model; fill the spec's size (fixed dims, else the
    model's declared size) and batch. Returns (the input, the spec, channels)."""
    if len(inputs) != 1:
        raise MaedetError(f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); images "
                          "feed single-input models (give an .npz with one array per input)")
    model_input = inputs[0]
    if not is_float(model_input):
        raise MaedetError(f"model input '{model_input.name}' is {model_input.dtype}, not an image tensor")
    if len(model_input.shape) != 4:
        raise MaedetError(f"model input '{model_input.name}' has rank {len(model_input.shape)}; images need a "
                          "4-D input (give .npy/.npz tensors instead)")
    c_axis, h_axis, w_axis = (1, 2, 3) if spec.layout == "NCHW" else (3, 1, 2)
    channels = static_dim(model_input, c_axis) or 3
    if channels not in (1, 3):
        raise MaedetError(f"model input '{model_input.name}' {list(model_input.shape)} has {channels} channels "
                          f"in {spec.layout} layout; images give 1 (gray) or 3 (RGB/BGR)")
    size = _input_size(model_input, spec, (h_axis, w_axis), metadata or {})
    batch = static_dim(model_input, 0)
    if batch is not None and spec.batch is not None and spec.batch != batch:
        raise MaedetError(f"batch {spec.batch} does not match model input '{model_input.name}' batch {batch}",
                          setting="batch")
    return model_input, replace(spec, size=size, batch=batch or spec.batch or 1), channels


def _input_size(model_input: TensorSpec, spec: PreprocessSpec, axes: tuple[int, int],
                metadata: dict[str, str]) -> tuple[int, int]:
    fixed = tuple(static_dim(model_input, axis) for axis in axes)
    if None not in fixed:
        if spec.size is not None and tuple(spec.size) != fixed:
            raise MaedetError(f"{spec.size[0]}x{spec.size[1]} does not match model input '{model_input.name}' "
                              f"{fixed[0]}x{fixed[1]}", setting="size")
        return fixed  # type: ignore[return-value]
    size = spec.size or declared_size(metadata)
    if size is None:
        raise MaedetError(f"model input '{model_input.name}' {list(model_input.shape)} has a dynamic size and "
                          "the model declares none: give one", setting="size")
    return tuple(size)  # type: ignore[return-value]


def tensor_batches(path: str | Path, inputs: Sequence[TensorSpec]) -> TensorBatches:
    """An .npy (single-input models) or .npz (one array per input name) of samples, checked
    against the model's inputs."""
    path = Path(path)
    loaded = load_arrays(path)
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            raise MaedetError(f"{path}: one array for a model with {len(inputs)} inputs; use an .npz keyed by "
                              f"input name ({', '.join(i.name for i in inputs)})")
        arrays = {inputs[0].name: loaded}
    elif len(inputs) == 1 and len(loaded) == 1:
        arrays = {inputs[0].name: next(iter(loaded.values()))}
    else:
        missing = [i.name for i in inputs if i.name not in loaded]
        if missing:
            raise MaedetError(f"{path} has no array for model input(s) {', '.join(missing)}")
        arrays = {i.name: loaded[i.name] for i in inputs}
    for model_input in inputs:
        arrays[model_input.name] = _checked(path, arrays[model_input.name], model_input)
    if len({len(a) for a in arrays.values()}) != 1:
        raise MaedetError(f"{path}: arrays must hold the same number of samples "
                          f"(got {sorted(len(a) for a in arrays.values())})")
    batch = next((static_dim(i, 0) for i in inputs if static_dim(i, 0)), None)
    return TensorBatches(arrays, batch or 1, source=path.name)


def _checked(path: Path, array: np.ndarray, model_input: TensorSpec) -> np.ndarray:
    want = model_input.shape[1:]
    if array.ndim != len(model_input.shape) or any(
            isinstance(w, int) and w > 0 and w != got for w, got in zip(want, array.shape[1:])):
        raise MaedetError(f"{path}: array for '{model_input.name}' has shape {list(array.shape)} (samples first); "
                          f"the model input is {list(model_input.shape)}")
    if is_float(model_input) and not np.issubdtype(array.dtype, np.floating):
        raise MaedetError(f"{path}: array for '{model_input.name}' is {array.dtype}; the input is "
                          f"{model_input.dtype}")
    return array.astype(model_input.dtype, copy=False)
