"""Image preprocessing for calibration, comparison and accuracy checks: the same steps
a deployed detector applies before inference, described by a small spec.

Order of operations (what the numbers in the spec mean):

1. decode, convert to the model's channels (gray images become 3-channel for
   RGB/BGR models, colour images become gray for 1-channel models);
2. resize to `size` (H, W): `resize` stretches, `letterbox` keeps the aspect
   ratio and pads (centred) with `pad_value` (0..255 pixel units);
3. channel order `rgb` or `bgr`;
4. `x * scale`, then `(x - mean) / std` (mean/std in the scaled units: with the
   default `scale` 1/255, ImageNet's are 0.485,0.456,0.406 / 0.229,0.224,0.225);
5. layout `NCHW` (default) or `NHWC`; images are stacked into batches of `batch`.

A spec comes from CLI flags or a YAML/JSON file with the same keys:
`size: 800x608` (or `[800, 608]`), `resize: letterbox`, `color: bgr`,
`mean: [0.485, 0.456, 0.406]`, `std: [...]`, `scale: 0.00392156862745098`,
`layout: NCHW`, `batch: 1`, `pad_value: 114`. Unknown keys are an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MaedetError, first_line
from .images import open_image

RESIZE_MODES = ("resize", "letterbox")
COLORS = ("rgb", "bgr")
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input; `size`/`batch` None: taken from the model."""

    size: tuple[int, int] | None = None
    resize: str = "resize"
    color: str = "rgb"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    layout: str = "NCHW"
    batch: int | None = None
    pad_value: float = 114.0

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise MaedetError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.color not in COLORS:
            raise MaedetError(f"color must be one of {', '.join(COLORS)}, got {self.color!r}")
        if self.layout not in LAYOUTS:
            raise MaedetError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise MaedetError(f"size must be two positive numbers (height, width), got {self.size!r}")
        if self.batch is not None and self.batch < 1:
            raise MaedetError(f"batch must be at least 1, got {self.batch}")
        if any(s == 0 for s in self.std):
            raise MaedetError("std must not contain 0")
        if not self.mean or not self.std:
            raise MaedetError("mean and std need at least one value")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["size"] = list(self.size) if self.size else None
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data


@dataclass(frozen=True)
class ImageMeta:
    """Where an image came from and how its pixels map to the network input."""

    path: str
    height: int  # original size
    width: int
    scale_y: float  # input pixel = original pixel * scale + pad
    scale_x: float
    pad_top: float
    pad_left: float

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in network-input pixels -> original image pixels (clipped)."""
        out = np.asarray(boxes, dtype=np.float64).copy()
        out[:, [0, 2]] = ((out[:, [0, 2]] - self.pad_left) / self.scale_x).clip(0, self.width)
        out[:, [1, 3]] = ((out[:, [1, 3]] - self.pad_top) / self.scale_y).clip(0, self.height)
        return out


def _floats(value: Any, key: str) -> tuple[float, ...]:
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if isinstance(value, (int, float)):
        value = [value]
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise MaedetError(f"{key} must be a number or a list of numbers, got {value!r}") from None


def parse_size(value: Any) -> tuple[int, int]:
    """`800x608`, `640` (square) or `[800, 608]` -> (height, width)."""
    try:
        if isinstance(value, str):
            parts = [int(p) for p in value.lower().split("x")]
        elif isinstance(value, int):
            parts = [value]
        else:
            parts = [int(p) for p in value]
    except (TypeError, ValueError):
        raise MaedetError(f"size must look like 640 or 800x608 (height x width), got {value!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise MaedetError(f"size must look like 640 or 800x608 (height x width), got {value!r}")
    return parts[0], parts[1]


def spec_from_mapping(data: dict[str, Any], origin: str = "preprocess spec") -> PreprocessSpec:
    """Build a spec from a dict (a parsed YAML/JSON file or CLI values); None values mean default."""
    known = {f.name for f in fields(PreprocessSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MaedetError(f"{origin}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        if key == "size":
            values[key] = parse_size(value)
        elif key in ("mean", "std"):
            values[key] = _floats(value, key)
        elif key in ("scale", "pad_value"):
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                raise MaedetError(f"{origin}: {key} must be a number, got {value!r}") from None
        elif key == "batch":
            if isinstance(value, bool) or not isinstance(value, int):
                raise MaedetError(f"{origin}: batch must be an integer, got {value!r}")
            values[key] = value
        elif key == "layout":
            values[key] = str(value).upper()
        else:
            values[key] = str(value).lower()
    return PreprocessSpec(**values)


def load_spec(path: str | os.PathLike) -> PreprocessSpec:
    """Read a preprocessing spec from a .yaml/.yml/.json file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MaedetError(f"cannot read preprocess spec {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as exc:  # yaml and json raise their own error types
        raise MaedetError(f"cannot parse preprocess spec {path}: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise MaedetError(f"preprocess spec {path} must be a mapping of keys to values")
    return spec_from_mapping(data, origin=str(path))


def _per_channel(values: tuple[float, ...], channels: int, key: str) -> np.ndarray:
    if len(values) == 1:
        return np.full(channels, values[0], dtype=np.float32)
    if len(values) != channels:
        raise MaedetError(f"{key} has {len(values)} values but the model input has {channels} channels")
    return np.asarray(values, dtype=np.float32)


def load_image(path: str | os.PathLike, spec: PreprocessSpec, channels: int) -> tuple[np.ndarray, ImageMeta]:
    """One image file -> (array [C,H,W] or [H,W,C] float32, meta). `spec.size` must be set."""
    from PIL import Image

    assert spec.size is not None, "resolve the spec against the model first"
    height, width = spec.size
    image = open_image(path, "RGB" if channels == 3 else "L")
    orig_w, orig_h = image.size
    if spec.resize == "letterbox":
        ratio = min(height / orig_h, width / orig_w)
        new_h, new_w = max(1, round(orig_h * ratio)), max(1, round(orig_w * ratio))
        top, left = (height - new_h) // 2, (width - new_w) // 2
        fill = int(round(spec.pad_value))
        canvas = Image.new(image.mode, (width, height), (fill,) * 3 if channels == 3 else fill)
        canvas.paste(image.resize((new_w, new_h), Image.BILINEAR), (left, top))
        image, scale_y, scale_x = canvas, new_h / orig_h, new_w / orig_w
    else:
        image = image.resize((width, height), Image.BILINEAR)
        top = left = 0
        scale_y, scale_x = height / orig_h, width / orig_w
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if channels == 3 and spec.color == "bgr":
        array = array[:, :, ::-1]
    array = (array * np.float32(spec.scale) - _per_channel(spec.mean, channels, "mean")) \
        / _per_channel(spec.std, channels, "std")
    if spec.layout == "NCHW":
        array = array.transpose(2, 0, 1)
    meta = ImageMeta(str(path), orig_h, orig_w, scale_y, scale_x, float(top), float(left))
    return np.ascontiguousarray(array, dtype=np.float32), meta
