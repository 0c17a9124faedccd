"""Inference backends behind one interface; ONNX Runtime always, TensorRT when installed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import MaedetError
from .base import Runner, TensorSpec, check_distinct_output, metadata_path
from .fingerprint import device_fingerprint, fingerprint_id
from .shapes import Shape, parse_batches, parse_shapes, profile_shapes, resolve_shapes

BACKENDS = ("onnxruntime", "tensorrt")


def resolve_backend(name: str) -> str:
    """'auto': TensorRT when it and a CUDA GPU are present, else ONNX Runtime; other names as given."""
    if name != "auto":
        if name not in BACKENDS:
            raise MaedetError(f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})", "backend")
        return name
    if importlib.util.find_spec("tensorrt") is None:
        return "onnxruntime"
    import torch
    return "tensorrt" if torch.cuda.is_available() else "onnxruntime"


def load_runner(model: str | os.PathLike | bytes, backend: str = "onnxruntime", **options) -> Runner:
    """Load a model (ONNX for onnxruntime; ONNX or a built engine for tensorrt)."""
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeRunner
        return OnnxRuntimeRunner(model, **options)
    if backend == "tensorrt":
        from .tensorrt import TensorRTRunner
        return TensorRTRunner(model, **options)
    raise MaedetError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


def open_runner(model: str | os.PathLike, backend: str = "onnxruntime", threads: int | None = None,
                shapes: Mapping[str, Shape] | None = None, batches: Sequence[int | None] = (None,),
                trust_engine: bool = False) -> Runner:
    """`load_runner` from the options every command shares: CPU threads for onnxruntime; for an
    ONNX model on tensorrt, an optimization profile that covers the shapes and batch sweep; for
    an engine, whether to load it without a matching record (engines are code)."""
    if backend == "tensorrt" and Path(model).suffix.lower() == ".onnx":
        from .onnx_file import graph_inputs, load_model
        from .tensorrt import import_tensorrt

        import_tensorrt()  # say what to install before asking for shapes
        inputs = graph_inputs(load_model(model, external_data=False))
        low, opt, high = profile_shapes(inputs, shapes, batches)
        return load_runner(model, backend, min_shapes=low, opt_shapes=opt, max_shapes=high)
    if backend == "onnxruntime":
        return load_runner(model, backend, intra_threads=threads)
    return load_runner(model, backend, trust_engine=trust_engine)


def build_model(model: str | os.PathLike, out: str | os.PathLike, backend: str = "onnxruntime", **options) -> dict:
    """`build`: an offline-optimized ONNX (onnxruntime) or an engine (tensorrt), with `<out>.json`
    beside it recording how; returns that record."""
    if backend == "onnxruntime":
        from .onnxruntime import optimize_model
        return optimize_model(model, out, **options)
    if backend == "tensorrt":
        from .tensorrt import BuildOptions, build_engine, save_engine
        check_distinct_output(model, out)
        if Path(out).suffix.lower() == ".onnx":
            raise MaedetError("an engine must not end in .onnx: it would be read back as an ONNX model", "out")
        engine, metadata = build_engine(model, BuildOptions(**options))
        return {**save_engine(engine, metadata, out), "out": str(out), "bytes_engine": len(engine)}
    raise MaedetError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "Runner", "TensorSpec", "build_model", "device_fingerprint", "fingerprint_id", "load_runner",
           "metadata_path", "open_runner", "parse_batches", "parse_shapes", "resolve_backend", "resolve_shapes"]
