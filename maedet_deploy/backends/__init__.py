"""Inference backends behind one interface; ONNX Runtime always, TensorRT when installed."""

from __future__ import annotations

import os

from ..errors import MaedetError
from .base import Runner, TensorSpec
from .fingerprint import device_fingerprint, fingerprint_id
from .shapes import parse_batches, parse_shapes, resolve_shapes

BACKENDS = ("onnxruntime", "tensorrt")


def load_runner(model: str | os.PathLike | bytes, backend: str = "onnxruntime", **options) -> Runner:
    """Load a model (ONNX for onnxruntime; ONNX or a built engine for tensorrt)."""
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeRunner
        return OnnxRuntimeRunner(model, **options)
    if backend == "tensorrt":
        from .tensorrt import TensorRTRunner
        return TensorRTRunner(model, **options)
    raise MaedetError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "Runner", "TensorSpec", "device_fingerprint", "fingerprint_id", "load_runner",
           "parse_batches", "parse_shapes", "resolve_shapes"]
