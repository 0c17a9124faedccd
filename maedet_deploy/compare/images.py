"""Real images as model inputs: a small, explicit preprocessing spec.

resize (stretch) or letterbox (keep aspect, pad 114 centred, YOLO style), RGB
or BGR, then (pixel * scale - mean) / std, NCHW float32. The defaults, scale
1/255 with mean 0 and std 1, are what our detectors expect; ImageNet-style
models take `mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..backends.base import TensorSpec
from ..backends.shapes import resolve_shape
from ..errors import MaedetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PAD_VALUE = 114


@dataclass(frozen=True)
class Preprocess:
    letterbox: bool = False
    bgr: bool = False
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


def parse_triple(text: str, what: str) -> tuple[float, float, float]:
    """`0.485,0.456,0.406` -> a 3-tuple; one value means all three channels."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise MaedetError(f"{what} must be one or three comma-separated numbers, got {text!r}")
    return values  # type: ignore[return-value]


def list_images(folder: str | os.PathLike) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise MaedetError(f"image folder not found: {root}")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MaedetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return files


def preprocess_image(path: Path, height: int, width: int, spec: Preprocess) -> np.ndarray:
    """One image as a float32 CHW array."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if spec.letterbox:
                ratio = min(height / image.height, width / image.width)
                size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
                canvas = Image.new("RGB", (width, height), (PAD_VALUE,) * 3)
                canvas.paste(image.resize(size, Image.BILINEAR), ((width - size[0]) // 2, (height - size[1]) // 2))
                image = canvas
            else:
                image = image.resize((width, height), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise MaedetError(f"cannot read image {path}: {exc}") from None
    if spec.bgr:
        pixels = pixels[..., ::-1]
    pixels = (pixels * spec.scale - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def image_feeds(inputs: Sequence[TensorSpec], folder: str | os.PathLike, spec: Preprocess = Preprocess(),
                shape: Sequence[int] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Batches of preprocessed images for a model with one NCHW 3-channel input; `shape` resolves
    its dynamic dims (a last partial batch is filled by repeating its last image)."""
    if len(inputs) != 1:
        raise MaedetError(f"--images needs a model with one image input, this one has {len(inputs)}: "
                          f"{', '.join(s.name for s in inputs)}")
    image_input = inputs[0]
    if len(image_input.shape) != 4:
        raise MaedetError(f"--images needs an NCHW input; {image_input.name!r} has {len(image_input.shape)} dims")
    batch, channels, height, width = resolve_shape(image_input, shape)
    if channels != 3:
        raise MaedetError(f"--images needs 3 input channels; {image_input.name!r} has {channels}")
    files = list_images(folder)
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        chunk += [chunk[-1]] * (batch - len(chunk))
        arrays = [preprocess_image(p, height, width, spec) for p in chunk]
        yield {image_input.name: np.stack(arrays).astype(image_input.dtype, copy=False)}
