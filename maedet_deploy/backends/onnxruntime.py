"""ONNX Runtime runner: the embedded default that always works.

CPU by default; the CUDA and TensorRT execution providers are used when asked
for and offered by the installed onnxruntime build. Defaults are tuned for
single-stream CPU latency: one intra-op thread per usable physical core (SMT
siblings and cores outside the affinity mask/container quota only contend),
all graph optimizations, sequential execution (the parallel executor only pays
off for graphs with wide independent branches; detectors are chains).

`optimize_model` ("build" for this backend) saves the fully optimized graph with
a `<file>.json` record beside it; a runner that finds the record skips graph
optimization (measured: the PaddleOCR detector loads in 0.045 s instead of 0.098 s,
same latency) and refuses a file optimized by another onnxruntime or CPU, since
the 'all' level bakes in this CPU's vector layout.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from ..digest import sha256_file
from ..errors import MaedetError, first_line
from .base import RunnerLifecycle, TensorSpec, check_distinct_output, read_metadata, save_with_metadata
from .fingerprint import device_fingerprint, usable_cores

METADATA_FORMAT = "maedet-ort-optimized/1"

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
GRAPH_OPTIMIZATIONS = ("none", "basic", "extended", "all")
EXECUTION_MODES = ("sequential", "parallel")


def _spec(node) -> TensorSpec:
    return TensorSpec(node.name, tuple(node.shape), np.dtype(_ORT_TYPES.get(node.type, np.float32)))



def session_options(intra_threads: int | None = None, inter_threads: int = 0, graph_optimization: str = "all",
                    execution_mode: str = "sequential", memory_pattern: bool = True, spinning: bool = True):
    """SessionOptions from plain values; `intra_threads=None` means one per usable physical core."""
    import onnxruntime as ort

    if graph_optimization not in GRAPH_OPTIMIZATIONS:
        raise MaedetError(f"unknown graph optimization {graph_optimization!r} "
                          f"(choose from {', '.join(GRAPH_OPTIMIZATIONS)})")
    if execution_mode not in EXECUTION_MODES:
        raise MaedetError(f"unknown execution mode {execution_mode!r} (choose from {', '.join(EXECUTION_MODES)})")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    options.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if execution_mode == "sequential"
                              else ort.ExecutionMode.ORT_PARALLEL)
    options.intra_op_num_threads = usable_cores() if intra_threads is None else intra_threads
    options.inter_op_num_threads = inter_threads
    options.enable_mem_pattern = memory_pattern
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3
    return options


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise MaedetError(f"unknown onnxruntime device {device!r} (choose from {', '.join(PROVIDERS)})")
    provider = PROVIDERS[device]
    if provider not in ort.get_available_providers():
        raise MaedetError(f"this onnxruntime build has no {provider}; "
                          "install onnxruntime-gpu (pip install 'maedet-deploy[gpu]') for CUDA/TensorRT")
    return [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]


def _session(model: str | os.PathLike | bytes, options, providers: list[str]):
    import onnxruntime as ort

    if not isinstance(model, bytes) and not Path(model).is_file():
        raise MaedetError(f"model file not found: {model}")
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
        where = "model" if isinstance(model, bytes) else model
        raise MaedetError(f"onnxruntime cannot load {where}: {first_line(exc)}") from None


class OnnxRuntimeRunner(RunnerLifecycle):
    backend = "onnxruntime"

    def __init__(self, model: str | os.PathLike | bytes, device: str = "cpu", intra_threads: int | None = None,
                 inter_threads: int = 0, graph_optimization: str | None = None, execution_mode: str = "sequential",
                 memory_pattern: bool = True, spinning: bool = True) -> None:
        """`graph_optimization=None`: 'none' for a model `optimize_model` saved, else 'all'."""
        if graph_optimization is None:
            graph_optimization = "none" if _optimized_here(model) else "all"
        options = session_options(intra_threads, inter_threads, graph_optimization, execution_mode,
                                  memory_pattern, spinning)
        start = time.perf_counter()
        self.session = _session(model, options, _providers(device))
        self.device = device
        self.settings = {"device": device, "providers": self.session.get_providers(),
                         "intra_threads": options.intra_op_num_threads, "inter_threads": inter_threads,
                         "graph_optimization": graph_optimization, "execution_mode": execution_mode,
                         "memory_pattern": memory_pattern, "spinning": spinning,
                         "load_seconds": round(time.perf_counter() - start, 4)}
        self._inputs = [_spec(i) for i in self.session.get_inputs()]
        self._outputs = [_spec(o) for o in self.session.get_outputs()]
        self._names = [o.name for o in self._outputs]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(self._names, feed if isinstance(feed, dict) else dict(feed))
        except Exception as exc:  # onnxruntime's Fail/InvalidArgument/RuntimeException: bad input, out of memory
            raise MaedetError(f"onnxruntime cannot run the model: {first_line(exc)}") from None
        return dict(zip(self._names, outputs))

    def close(self) -> None:
        self.session = None


def _identity() -> dict:
    import onnxruntime as ort

    return {"onnxruntime_version": ort.__version__, "cpu": device_fingerprint()["cpu"]}


def _optimized_here(model: str | os.PathLike | bytes) -> bool:
    """True for a file `optimize_model` wrote on this kind of machine; a MaedetError for another kind.
    A record that does not match the file's hash describes some other file: the model is then
    treated as any ONNX file (optimized again when loaded)."""
    if isinstance(model, bytes) or not Path(model).is_file():
        return False
    record = read_metadata(model)
    if record is None or record.get("format") != METADATA_FORMAT:
        return False
    here = _identity()
    built = {key: record.get(key) for key in here}
    if built != here:
        raise MaedetError(f"{model} was optimized by onnxruntime {built['onnxruntime_version']} on {built['cpu']}, "
                          f"this is onnxruntime {here['onnxruntime_version']} on {here['cpu']}; build it again here "
                          f"from {record.get('source_onnx', 'its ONNX model')}")
    return record.get("graph_optimization") == "all"


def optimize_model(model: str | os.PathLike, out: str | os.PathLike, graph_optimization: str = "all") -> dict:
    """Offline graph optimization: ONNX Runtime applies its fusions once and saves the result with
    a record beside it, so later sessions skip that work. 'all' (default) adds layout transforms
    for this CPU, so the file only runs on this kind of machine; 'extended' stays portable but a
    session must then optimize again to be fast."""
    if graph_optimization not in ("basic", "extended", "all"):
        raise MaedetError(f"offline graph optimization must be basic, extended or all, got {graph_optimization!r}")
    if not Path(model).is_file():
        raise MaedetError(f"model file not found: {model}")
    check_distinct_output(model, out)
    options = session_options(graph_optimization=graph_optimization)
    timing = {}

    def write(tmp: Path) -> None:
        options.optimized_model_filepath = str(tmp)
        start = time.perf_counter()
        _session(model, options, ["CPUExecutionProvider"])
        timing["optimize_seconds"] = round(time.perf_counter() - start, 4)

    record = save_with_metadata(out, write, {"format": METADATA_FORMAT, **_identity(),
                                             "graph_optimization": graph_optimization, "source_onnx": str(model),
                                             "source_sha256": sha256_file(model)})
    start = time.perf_counter()
    OnnxRuntimeRunner(out).close()
    return {**record, "out": str(out), **timing, "load_seconds_optimized": round(time.perf_counter() - start, 4),
            "bytes_source": Path(model).stat().st_size, "bytes_optimized": Path(out).stat().st_size}
