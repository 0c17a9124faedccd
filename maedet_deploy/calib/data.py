"""Calibration and held-out data: which samples calibrate and which judge the result.

Selection is deterministic: files are listed recursively and sorted by their path
relative to the folder (`inputs.list_images`); the seed permutes that list, the
first `holdout` items of the permutation are held out for the accuracy report and
the next `num_images` calibrate. The two sets never overlap, and the held-out set
does not change when `num_images` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import onnx

from ..backends.onnx_file import graph_inputs
from ..errors import MaedetError
from ..inputs import (TENSOR_SUFFIXES, Batch, ImageBatches, PreprocessSpec, check_readable, is_float,
                      list_images, resolve_image_input, tensor_batches)
from ..inputs.batches import TensorBatches

__all__ = ["DataSource", "list_images", "open_data", "split_indices"]  # list_images: pipeline/run.py imports it here


class DataSource(Protocol):
    """What calibration and the accuracy report read: batches (re-iterable), and how many."""

    num_samples: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def names(self) -> list[str]: ...


def split_indices(count: int, num: int | None, holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (calibration, held-out) index lists, each sorted."""
    if num is not None and num < 1:
        raise MaedetError(f"must be at least 1, got {num}", setting="num_images")
    if holdout < 0:
        raise MaedetError(f"must be 0 or more, got {holdout}", setting="holdout")
    if count - holdout < 1:
        raise MaedetError(f"{count} sample(s) found; need more than the {holdout} held out "
                          "(held-out samples are never used for calibration)", setting="holdout")
    order = np.random.default_rng(seed).permutation(count)
    held = sorted(int(i) for i in order[:holdout])
    rest = order[holdout:] if num is None else order[holdout:holdout + num]
    return sorted(int(i) for i in rest), held


def open_data(source: str | os.PathLike, model: onnx.ModelProto, spec: PreprocessSpec | None = None,
              num_images: int | None = None, holdout: int = 0,
              seed: int = 0) -> tuple[ImageBatches | TensorBatches, ImageBatches | TensorBatches | None]:
    """(calibration data, held-out data or None) from an image folder or an .npy/.npz file."""
    path, spec = Path(source), spec or PreprocessSpec()
    inputs = graph_inputs(model)
    if not any(is_float(i) for i in inputs):
        raise MaedetError("the model has no float input, so there is nothing to calibrate "
                          f"(inputs: {', '.join(i.name for i in inputs) or 'none'})")
    if path.is_file() and path.suffix.lower() in TENSOR_SUFFIXES:
        data: ImageBatches | TensorBatches = tensor_batches(path, inputs)
    elif path.is_file():
        raise MaedetError(f"{path}: give an image folder or an .npy/.npz file", setting="images")
    else:
        files = list_images(path)
        model_input, spec, channels = resolve_image_input(inputs, spec, {p.key: p.value for p in model.metadata_props})
        data = ImageBatches(files, model_input, spec, channels)
    calib, held = split_indices(data.num_samples, num_images, holdout, seed)
    if isinstance(data, ImageBatches):
        check_readable(data.paths[i] for i in calib + held)
    return data.subset(calib), (data.subset(held) if held else None)
