"""Real images as the compared models' input, through the one image input path (`inputs`)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Sequence

from ..backends.base import TensorSpec
from ..backends.shapes import resolve_shape
from ..inputs import ImageBatches, PreprocessSpec, list_images, resolve_image_input


def image_feeds(inputs: Sequence[TensorSpec], folder: str | os.PathLike, spec: PreprocessSpec = PreprocessSpec(),
                shape: Sequence[int] | None = None) -> ImageBatches:
    """Batches of preprocessed images for a model with one image input; `shape` resolves its
    dynamic dims (a last partial batch repeats its last image; only real images are compared)."""
    if len(inputs) == 1 and len(inputs[0].shape) == 4:
        dims = resolve_shape(inputs[0], shape)  # a dynamic dim without `shape` is refused here
        height, width = dims[2:] if spec.layout == "NCHW" else dims[1:3]
        spec = replace(spec, size=(height, width), batch=dims[0])
    model_input, spec, channels = resolve_image_input(inputs, spec)
    return ImageBatches(list_images(folder), model_input, spec, channels)
