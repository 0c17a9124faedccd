"""Calibration and evaluation data: image folders or .npy/.npz tensors, served as
batches of feed dicts, plus onnxruntime's CalibrationDataReader over them.

Selection is deterministic: files are listed recursively and sorted by their
path relative to the folder; `--seed` permutes that list, the first `holdout`
items of the permutation are held out for the accuracy report and the next
`num_images` calibrate. The two sets never overlap, and the held-out set does
not change when `num_images` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from ..errors import MaedetError
from .graph import load_model
from .preprocess import ImageMeta, PreprocessSpec, load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
               onnx.TensorProto.DOUBLE: np.float64}


@dataclass(frozen=True)
class ModelInput:
    name: str
    shape: tuple[int | str | None, ...]  # static dims as int, dynamic ones as name or None
    elem_type: int

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES

    def static(self, axis: int) -> int | None:
        dim = self.shape[axis]
        return dim if isinstance(dim, int) and dim > 0 else None


def model_inputs(model: onnx.ModelProto) -> list[ModelInput]:
    """The graph's real inputs (initializers listed as inputs by old exporters are left out)."""
    initializers = {init.name for init in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        out.append(ModelInput(value.name, dims, tensor.elem_type))
    return out


def float_inputs(model: onnx.ModelProto) -> list[ModelInput]:
    inputs = [i for i in model_inputs(model) if i.is_float]
    if not inputs:
        raise MaedetError("the model has no float input, so there is nothing to calibrate "
                          f"(inputs: {', '.join(i.name for i in model_inputs(model)) or 'none'})")
    return inputs


@dataclass
class Batch:
    """One inference's feed; `metas` has one entry per batch item, `valid` items are real
    (the rest repeat the last sample to fill a fixed batch size)."""

    feed: dict[str, np.ndarray]
    metas: list[ImageMeta | None]
    valid: int


class DataSource(Protocol):
    """What calibration and the accuracy report read: batches, and how many."""

    num_samples: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def names(self) -> list[str]: ...


def _batches(count: int, batch: int) -> list[list[int]]:
    groups = [list(range(start, min(start + batch, count))) for start in range(0, count, batch)]
    return [g + [g[-1]] * (batch - len(g)) for g in groups]


class ImageData:
    """Preprocessed images from files, read lazily one batch at a time."""

    def __init__(self, paths: Sequence[Path], model_input: ModelInput, spec: PreprocessSpec, channels: int) -> None:
        self.paths = list(paths)
        self.input = model_input
        self.spec = spec
        self.channels = channels
        self.num_samples = len(self.paths)

    def __len__(self) -> int:
        return len(_batches(self.num_samples, self.spec.batch or 1))

    def names(self) -> list[str]:
        return [str(p) for p in self.paths]

    def __iter__(self) -> Iterator[Batch]:
        dtype = self.input.dtype
        for group in _batches(self.num_samples, self.spec.batch or 1):
            loaded = {index: load_image(self.paths[index], self.spec, self.channels) for index in set(group)}
            array = np.stack([loaded[index][0] for index in group]).astype(dtype, copy=False)
            valid = len(set(group))
            metas = [loaded[index][1] if position < valid else None for position, index in enumerate(group)]
            yield Batch({self.input.name: array}, metas, valid)


class TensorData:
    """Samples from arrays: one array per model input, first axis = samples."""

    def __init__(self, arrays: dict[str, np.ndarray], batch: int, source: str = "tensors") -> None:
        self.arrays = arrays
        self.batch = batch
        self.source = source
        self.num_samples = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return len(_batches(self.num_samples, self.batch))

    def names(self) -> list[str]:
        return [f"{self.source}[{i}]" for i in range(self.num_samples)]

    def subset(self, indices: Sequence[int]) -> "TensorData":
        return TensorData({k: v[list(indices)] for k, v in self.arrays.items()}, self.batch, self.source)

    def __iter__(self) -> Iterator[Batch]:
        for group in _batches(self.num_samples, self.batch):
            valid = len(set(group))
            yield Batch({name: array[group] for name, array in self.arrays.items()}, [None] * len(group), valid)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder` (recursive), sorted by relative path."""
    root = Path(folder)
    if not root.is_dir():
        raise MaedetError(f"image folder not found: {root}")
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise MaedetError(f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) under {root}")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_indices(count: int, num: int | None, holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (calibration, held-out) index lists, each sorted."""
    if num is not None and num < 1:
        raise MaedetError(f"--num-images must be at least 1, got {num}")
    if holdout < 0:
        raise MaedetError(f"--holdout must be 0 or more, got {holdout}")
    if count - holdout < 1:
        raise MaedetError(f"{count} sample(s) found; need more than --holdout {holdout} "
                          "(held-out samples are never used for calibration)")
    order = np.random.default_rng(seed).permutation(count)
    held = sorted(int(i) for i in order[:holdout])
    rest = order[holdout:] if num is None else order[holdout:holdout + num]
    return sorted(int(i) for i in rest), held


def resolve_image_input(model: onnx.ModelProto, spec: PreprocessSpec) -> tuple[ModelInput, PreprocessSpec, int]:
    """Check the model can be fed images; fill the spec's size and batch from the model."""
    inputs = model_inputs(model)
    float_inputs(model)
    if len(inputs) != 1:
        raise MaedetError(f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an image "
                          "folder feeds single-input models (give an .npz with one array per input)")
    model_input = inputs[0]
    if len(model_input.shape) != 4:
        raise MaedetError(f"model input '{model_input.name}' has rank {len(model_input.shape)}; images need a "
                          "4-D input (give .npy/.npz tensors instead)")
    c_axis, h_axis, w_axis = (1, 2, 3) if spec.layout == "NCHW" else (3, 1, 2)
    channels = model_input.static(c_axis) or 3
    if channels not in (1, 3):
        raise MaedetError(f"model input '{model_input.name}' {list(model_input.shape)} has {channels} channels "
                          f"in {spec.layout} layout; images give 1 (gray) or 3 (RGB/BGR)")
    static_hw = (model_input.static(h_axis), model_input.static(w_axis))
    size = spec.size
    if None not in static_hw:
        if size is not None and tuple(size) != static_hw:
            raise MaedetError(f"size {size[0]}x{size[1]} does not match model input '{model_input.name}' "
                              f"{static_hw[0]}x{static_hw[1]}")
        size = static_hw  # type: ignore[assignment]
    elif size is None:
        raise MaedetError(f"model input '{model_input.name}' {list(model_input.shape)} has a dynamic size; "
                          "give --size HxW")
    batch = model_input.static(0)
    if batch is not None and spec.batch is not None and spec.batch != batch:
        raise MaedetError(f"batch {spec.batch} does not match model input '{model_input.name}' batch {batch}")
    return model_input, replace(spec, size=tuple(size), batch=batch or spec.batch or 1), channels


def load_tensors(path: str | os.PathLike, model: onnx.ModelProto) -> TensorData:
    """An .npy (single-input models) or .npz (one array per input name) of samples."""
    path = Path(path)
    inputs = model_inputs(model)
    float_inputs(model)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MaedetError(f"cannot read tensors from {path}: {exc}") from None
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            raise MaedetError(f"{path}: one array for a model with {len(inputs)} inputs; use an .npz keyed by "
                              f"input name ({', '.join(i.name for i in inputs)})")
        arrays = {inputs[0].name: loaded}
    else:
        with loaded:
            stored = {key: loaded[key] for key in loaded.files}
        if len(inputs) == 1 and len(stored) == 1:
            arrays = {inputs[0].name: next(iter(stored.values()))}
        else:
            missing = [i.name for i in inputs if i.name not in stored]
            if missing:
                raise MaedetError(f"{path} has no array for model input(s) {', '.join(missing)}")
            arrays = {i.name: stored[i.name] for i in inputs}
    batch = None
    for model_input in inputs:
        array = arrays[model_input.name]
        want = model_input.shape[1:]
        if array.ndim != len(model_input.shape) or any(
                isinstance(w, int) and w > 0 and w != got for w, got in zip(want, array.shape[1:])):
            raise MaedetError(f"{path}: array for '{model_input.name}' has shape {list(array.shape)} (samples first); "
                              f"the model input is {list(model_input.shape)}")
        if model_input.is_float and not np.issubdtype(array.dtype, np.floating):
            raise MaedetError(f"{path}: array for '{model_input.name}' is {array.dtype}; the input is "
                              f"{model_input.dtype}")
        arrays[model_input.name] = array.astype(model_input.dtype, copy=False)
        batch = batch or model_input.static(0)
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise MaedetError(f"{path}: arrays must hold the same, non-zero number of samples (got {sorted(counts)})")
    return TensorData(arrays, batch or 1, source=path.name)


def open_data(source: str | os.PathLike, model: str | os.PathLike | bytes | onnx.ModelProto,
              spec: PreprocessSpec | None = None, num_images: int | None = None, holdout: int = 0,
              seed: int = 0) -> tuple[DataSource, DataSource | None]:
    """(calibration data, held-out data or None) from an image folder or an .npy/.npz file."""
    model = model if isinstance(model, onnx.ModelProto) else load_model(model)
    path = Path(source)
    spec = spec or PreprocessSpec()
    if path.is_file() and path.suffix.lower() in (".npy", ".npz"):
        tensors = load_tensors(path, model)
        calib, held = split_indices(tensors.num_samples, num_images, holdout, seed)
        return tensors.subset(calib), (tensors.subset(held) if held else None)
    if path.is_file():
        raise MaedetError(f"{path}: give an image folder or an .npy/.npz file")
    files = list_images(path)
    model_input, spec, channels = resolve_image_input(model, spec)
    calib, held = split_indices(len(files), num_images, holdout, seed)
    _check_readable([files[i] for i in calib + held])
    calibration = ImageData([files[i] for i in calib], model_input, spec, channels)
    return calibration, (ImageData([files[i] for i in held], model_input, spec, channels) if held else None)


def _check_readable(paths: Sequence[Path]) -> None:
    """Open every selected image's header up front, so a bad file fails before minutes of work."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - parsing the header is the check
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise MaedetError(f"cannot read image {path}: {exc}") from None


class FeedReader(CalibrationDataReader):
    """onnxruntime.quantization's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self.feeds = list(feeds)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.feeds):
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.feeds)

    def __iter__(self):
        return iter(self.feeds)

