"""ONNX Runtime runner: the embedded default that always works.

CPU by default; the CUDA and TensorRT execution providers are used when asked
for and offered by the installed onnxruntime build."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import MaedetError
from .base import TensorSpec

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


def _spec(node) -> TensorSpec:
    return TensorSpec(node.name, tuple(node.shape), np.dtype(_ORT_TYPES.get(node.type, np.float32)))


class OnnxRuntimeRunner:
    backend = "onnxruntime"

    def __init__(self, model: str | os.PathLike | bytes, device: str = "cpu", intra_threads: int = 0,
                 inter_threads: int = 0, graph_optimization: str = "all", memory_pattern: bool = True) -> None:
        import onnxruntime as ort

        if device not in PROVIDERS:
            raise MaedetError(f"unknown onnxruntime device {device!r} (choose from {', '.join(PROVIDERS)})")
        provider = PROVIDERS[device]
        if provider not in ort.get_available_providers():
            raise MaedetError(f"this onnxruntime build has no {provider}; "
                              "install onnxruntime-gpu (pip install 'maedet-deploy[gpu]') for CUDA/TensorRT")
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        options.intra_op_num_threads = intra_threads
        options.inter_op_num_threads = inter_threads
        options.enable_mem_pattern = memory_pattern
        options.log_severity_level = 3
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        source = model if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise MaedetError(f"model file not found: {model}")
        try:
            self.session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MaedetError(f"onnxruntime cannot load {'model' if isinstance(model, bytes) else model}: {first}") from None
        self.device = device
        self._inputs = [_spec(i) for i in self.session.get_inputs()]
        self._outputs = [_spec(o) for o in self.session.get_outputs()]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self._outputs]
        return dict(zip(names, self.session.run(names, dict(feed))))

    def close(self) -> None:
        self.session = None
