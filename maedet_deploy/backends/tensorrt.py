"""TensorRT: build engines from ONNX, save them with metadata, run them by tensor name.

Written against the documented Python API of TensorRT 8.5 to 11; it needs a
CUDA GPU and is not exercised by the CPU test suite (only its pure-Python
parts are). Each step is a plain function (Polygraphy's loader idea):
`parse_onnx` -> `create_config` -> `build_engine` -> `save_engine`, and
`load_engine` -> `TensorRTRunner`.

Precision: TensorRT >= 10 builds strongly typed networks, so FP16 and INT8
come from the ONNX graph itself (float16 tensors; QuantizeLinear/
DequantizeLinear pairs). TensorRT 8.x builds weakly typed networks and needs
the FP16/INT8 builder flags; a Q/DQ graph needs the INT8 flag there too.
Implicit calibration (IInt8Calibrator) is not offered: it is deprecated in 10.1
and gone in 11. CUDA buffers come from torch, so there is no pycuda dependency.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..atomic import write_bytes
from ..digest import sha256_file
from ..errors import MaedetError
from .base import RunnerLifecycle, TensorSpec, metadata_path, read_metadata, save_with_metadata
from .shapes import Shape, check_names, is_static

METADATA_FORMAT = "maedet-engine/1"
INSTALL_HINT = ("TensorRT is not installed: it comes with JetPack on Jetson, or from NVIDIA's pip index "
                "(`pip install tensorrt`, or `pip install 'maedet-deploy[tensorrt]'`), and needs torch built with CUDA")
_ONNX_FLOAT16 = 10


def import_tensorrt():
    """The tensorrt module, or a MaedetError saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise MaedetError(INSTALL_HINT) from None
    return tensorrt


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def cuda_torch():
    """torch with a usable CUDA device; TensorRT buffers are allocated through it."""
    try:
        import torch
    except ImportError:
        raise MaedetError("the TensorRT backend needs torch built with CUDA (pip install torch)") from None
    if not torch.cuda.is_available():
        raise MaedetError("the TensorRT backend needs a CUDA GPU, and torch built with CUDA: "
                          "torch.cuda.is_available() is False")
    return torch


def gpu_identity(torch) -> dict[str, str]:
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


_LOGGERS: dict[int, object] = {}


def _logger(trt):
    """One logger per process: TensorRT objects keep a reference to it."""
    if id(trt) not in _LOGGERS:
        _LOGGERS[id(trt)] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[id(trt)]


# ---- pure Python: what to build -------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = False
    int8: bool = False
    min_shapes: Mapping[str, Shape] = field(default_factory=dict)
    opt_shapes: Mapping[str, Shape] = field(default_factory=dict)
    max_shapes: Mapping[str, Shape] = field(default_factory=dict)
    workspace_mb: int | None = None
    timing_cache: str | None = None
    opt_level: int | None = None


@dataclass(frozen=True)
class PrecisionPlan:
    flags: tuple[str, ...]       # BuilderFlag names to set (TensorRT < 10 only)
    strongly_typed: bool
    precision: str               # fp32, fp16, int8 or int8+fp16


def onnx_precisions(model) -> set[str]:
    """'int8' when the graph has Q/DQ nodes, 'fp16' when it has float16 tensors or casts."""
    found = set()
    graph = model.graph
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            found.add("int8")
        if node.op_type == "Cast" and any(a.name == "to" and a.i == _ONNX_FLOAT16 for a in node.attribute):
            found.add("fp16")
    values = [*graph.input, *graph.output, *graph.value_info]
    if any(i.data_type == _ONNX_FLOAT16 for i in graph.initializer) or \
            any(v.type.tensor_type.elem_type == _ONNX_FLOAT16 for v in values):
        found.add("fp16")
    return found


def precision_plan(trt_version: str, graph: set[str], fp16: bool, int8: bool,
                   has_strongly_typed: bool = True) -> PrecisionPlan:
    """Which builder flags and network mode give the asked precision on this TensorRT.

    >= 10: the graph decides, asking for more than it holds is an error; the
    network is strongly typed where the flag exists (11 has no other mode).
    < 10: weakly typed, FP16/INT8 builder flags, INT8 only from a Q/DQ graph."""
    if version_tuple(trt_version) >= (10,):
        for asked, kind, how in ((fp16, "fp16", "float16 tensors: convert the graph to FP16"),
                                 (int8, "int8", "QuantizeLinear/DequantizeLinear pairs: calibrate it to a "
                                                "Q/DQ graph")):
            if asked and kind not in graph:
                raise MaedetError(f"TensorRT {trt_version} takes precision from the ONNX graph, and this graph has "
                                  f"no {how} first, or leave {kind} off", kind)
        used, flags, strongly_typed = graph, (), has_strongly_typed
    else:
        if int8 and "int8" not in graph:
            raise MaedetError("needs a Q/DQ graph (QuantizeLinear/DequantizeLinear pairs): calibrate it first; "
                              "implicit INT8 calibration is not supported", "int8")
        used = graph | ({"fp16"} if fp16 else set())
        flags = tuple(flag for flag, kind in (("FP16", "fp16"), ("INT8", "int8")) if kind in used)
        strongly_typed = False
    precision = "+".join(kind for kind in ("int8", "fp16") if kind in used) or "fp32"
    return PrecisionPlan(flags, strongly_typed, precision)


def optimization_profile(inputs: Sequence[TensorSpec], options: BuildOptions) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) for every dynamic input. An input given only an opt shape is fixed at it."""
    for shapes in (options.min_shapes, options.opt_shapes, options.max_shapes):
        check_names(inputs, shapes)
    profile = {}
    for spec in inputs:
        given = [options.min_shapes.get(spec.name), options.opt_shapes.get(spec.name),
                 options.max_shapes.get(spec.name)]
        if not spec.is_dynamic and not any(given):
            continue
        if given[1] is None or (given[0] is None) != (given[2] is None):
            raise MaedetError(f"input {spec.name!r} ({'x'.join(str(d) if is_static(d) else '?' for d in spec.shape)}) "
                              "needs an opt shape, and min and max shapes together (or neither), "
                              f"e.g. {spec.name}:1x3x320x320", "opt_shapes")
        low, opt, high = given[0] or given[1], given[1], given[2] or given[1]
        for shape in (low, opt, high):
            if len(shape) != len(spec.shape) or any(is_static(d) and d != s for d, s in zip(spec.shape, shape)):
                raise MaedetError(f"profile shape {'x'.join(map(str, shape))} does not fit input {spec.name!r} "
                                  f"({'x'.join(str(d) if is_static(d) else '?' for d in spec.shape)})")
        if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
            raise MaedetError(f"input {spec.name!r}: need min <= opt <= max in every dim, got "
                              f"{'x'.join(map(str, low))}, {'x'.join(map(str, opt))}, {'x'.join(map(str, high))}")
        profile[spec.name] = (tuple(low), tuple(opt), tuple(high))
    return profile


def check_engine(metadata: Mapping, trt_version: str, gpu: Mapping[str, str] | None, engine: str | os.PathLike) -> None:
    """Refuse an engine built by another TensorRT or for another GPU (TensorRT's own failure is cryptic)."""
    if metadata.get("format") != METADATA_FORMAT:
        raise MaedetError(f"{metadata_path(engine)} is not maedet engine metadata")
    source = metadata.get("source_onnx") or "the ONNX model"
    rebuild = f"build it again here from {source}"
    if metadata.get("tensorrt_version") != trt_version:
        raise MaedetError(f"{engine} was built with TensorRT {metadata.get('tensorrt_version')}, "
                          f"this is TensorRT {trt_version}; {rebuild}")
    if gpu is not None and (metadata.get("gpu"), metadata.get("compute_capability")) != \
            (gpu["gpu"], gpu["compute_capability"]):
        raise MaedetError(f"{engine} was built for {metadata.get('gpu')} (sm {metadata.get('compute_capability')}), "
                          f"this GPU is {gpu['gpu']} (sm {gpu['compute_capability']}); {rebuild}")


def trusted_metadata(path: Path, trust: bool = False) -> dict | None:
    """Engines are code: TensorRT deserializes them into kernels and plugins that run with the
    process's rights. An engine is loaded only when its `<engine>.json` record (written by `build`)
    holds its sha256, or when the user says they trust the file (`trust`); returns the record, or
    None for a trusted engine without one."""
    if path.suffix.lower() == ".onnx":
        raise MaedetError(f"{path} is an ONNX model, not an engine")
    record = read_metadata(path)
    if record is None and not trust:
        sidecar = metadata_path(path)
        why = "does not match it (the engine changed after it was built)" if sidecar.is_file() else "is missing"
        raise MaedetError(f"{path} is loaded as a TensorRT engine, which is code, and its record {sidecar} "
                          f"(written by build, holding the engine's sha256) {why}; rebuild it here, or trust "
                          "this file explicitly", "trust_engine")
    return record


# ---- TensorRT: build -----------------------------------------------------------------------------


def parse_onnx(trt, builder, path: Path, strongly_typed: bool):
    """An explicit-batch network from an ONNX file (the flag exists, and is needed, before 10)."""
    flags = 0
    if version_tuple(trt.__version__) < (10,):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, _logger(trt))
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors)) or "unknown error"
        raise MaedetError(f"TensorRT cannot parse {path}: {errors}")
    return network, parser


def create_config(trt, builder, options: BuildOptions, plan: PrecisionPlan,
                  profile: Mapping[str, tuple[Shape, Shape, Shape]]):
    config = builder.create_builder_config()
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    if options.opt_level is not None:
        if not hasattr(config, "builder_optimization_level"):
            raise MaedetError(f"needs TensorRT >= 8.6, this is {trt.__version__}", "opt_level")
        config.builder_optimization_level = int(options.opt_level)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if profile:
        shapes = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.items():
            shapes.set_shape(name, low, opt, high)
        config.add_optimization_profile(shapes)
    return config


def build_engine(onnx_path: str | os.PathLike, options: BuildOptions = BuildOptions()) -> tuple[bytes, dict]:
    """A serialized engine and its metadata. The timing cache file, when given, is read and updated."""
    from .onnx_file import graph_inputs, load_model

    trt = import_tensorrt()
    torch = cuda_torch()
    path = Path(onnx_path)
    model = load_model(path, external_data=False)
    plan = precision_plan(trt.__version__, onnx_precisions(model), options.fp16, options.int8,
                          hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
    profile = optimization_profile(graph_inputs(model), options)
    builder = trt.Builder(_logger(trt))
    network, _parser = parse_onnx(trt, builder, path, plan.strongly_typed)
    config = create_config(trt, builder, options, plan, profile)
    cache_path = Path(options.timing_cache) if options.timing_cache else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise MaedetError(f"TensorRT could not build an engine from {path} (its log above says why)")
    if cache_path is not None:
        write_bytes(cache_path, memoryview(config.get_timing_cache().serialize()).tobytes())
    metadata = {
        "format": METADATA_FORMAT,
        "tensorrt_version": trt.__version__,
        **gpu_identity(torch),
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.flags),
        "inputs": {network.get_input(i).name: list(network.get_input(i).shape) for i in range(network.num_inputs)},
        "outputs": {network.get_output(i).name: list(network.get_output(i).shape) for i in range(network.num_outputs)},
        "profile": {name: [list(s) for s in shapes] for name, shapes in profile.items()},
        "workspace_mb": options.workspace_mb,
        "opt_level": options.opt_level,
        "source_onnx": str(path),
        "source_sha256": sha256_file(path),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return memoryview(serialized).tobytes(), metadata


def save_engine(engine: bytes, metadata: Mapping, out: str | os.PathLike) -> dict:
    """The engine, then `<engine>.json` beside it holding the engine's sha256 (see
    `save_with_metadata`); returns that record."""
    return save_with_metadata(out, lambda tmp: tmp.write_bytes(engine), metadata)


def load_engine(path: str | os.PathLike, trust: bool = False) -> tuple[bytes, dict | None]:
    """Engine bytes and metadata: only an engine whose record matches it, or one trusted explicitly
    (see `trusted_metadata`); refused early when built by another TensorRT or for another GPU."""
    path = Path(path)
    if not path.is_file():
        raise MaedetError(f"engine file not found: {path}")
    metadata = trusted_metadata(path, trust)
    trt = import_tensorrt()
    if metadata is not None:
        check_engine(metadata, trt.__version__, None, path)  # the version first: it needs no GPU to tell
        check_engine(metadata, trt.__version__, gpu_identity(cuda_torch()), path)
    return path.read_bytes(), metadata


# ---- TensorRT: run -------------------------------------------------------------------------------


class TensorRTRunner(RunnerLifecycle):
    """Runs an engine (or an ONNX model built in memory) by tensor name with execute_async_v3.

    `infer` includes the host<->device copies, as an application would see them."""

    backend = "tensorrt"

    def __init__(self, model: str | os.PathLike, fp16: bool = False, int8: bool = False,
                 min_shapes: Mapping[str, Shape] | None = None, opt_shapes: Mapping[str, Shape] | None = None,
                 max_shapes: Mapping[str, Shape] | None = None, workspace_mb: int | None = None,
                 timing_cache: str | None = None, opt_level: int | None = None, trust_engine: bool = False) -> None:
        """An ONNX file (`.onnx`) is built in memory; any other file is an engine, loaded only when
        its record matches it or `trust_engine` is set (see `trusted_metadata`)."""
        if isinstance(model, bytes):
            raise MaedetError("the TensorRT runner takes a file path (.onnx or an engine), not bytes")
        if Path(model).suffix.lower() == ".onnx":
            options = BuildOptions(fp16, int8, min_shapes or {}, opt_shapes or {}, max_shapes or {},
                                   workspace_mb, timing_cache, opt_level)
            engine_bytes, self.metadata = build_engine(model, options)
        else:
            engine_bytes, self.metadata = load_engine(model, trust_engine)
        trt = import_tensorrt()
        torch = cuda_torch()
        self._torch = torch
        self._runtime = trt.Runtime(_logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise MaedetError(f"TensorRT {trt.__version__} cannot load {model} "
                              "(built by another TensorRT version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        inputs, outputs = [], []
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            dims = tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(name))
            spec = TensorSpec(name, dims, np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))))
            (inputs if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        self._inputs, self._outputs = inputs, outputs
        self._buffers: dict[str, object] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.settings = {"tensorrt_version": trt.__version__, **gpu_identity(torch),
                         "precision": (self.metadata or {}).get("precision", "unknown")}

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def _buffer(self, spec: TensorSpec, shape: tuple[int, ...]):
        buffer = self._buffers.get(spec.name)
        if buffer is None or tuple(buffer.shape) != shape:
            dtype = self._torch.from_numpy(np.empty(0, spec.dtype)).dtype
            buffer = self._torch.empty(shape, dtype=dtype, device="cuda")
            self._buffers[spec.name] = buffer
            self.context.set_tensor_address(spec.name, buffer.data_ptr())
        return buffer

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        for spec in self._inputs:
            array = np.ascontiguousarray(feed[spec.name], dtype=spec.dtype)
            if self._shapes.get(spec.name) != array.shape:
                if not self.context.set_input_shape(spec.name, array.shape):
                    raise MaedetError(f"input {spec.name!r} shape {'x'.join(map(str, array.shape))} is outside "
                                      "the engine's optimization profile")
                self._shapes[spec.name] = array.shape
            self._buffer(spec, array.shape).copy_(torch.from_numpy(array))
        buffers = {}
        for spec in self._outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise MaedetError(f"output {spec.name!r} has a data-dependent shape, which this runner does not "
                                  "support; export fixed-size outputs (e.g. padded detections)")
            buffers[spec.name] = self._buffer(spec, shape)
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise MaedetError("TensorRT failed to run the engine (its log above says why)")
        return {name: buffer.cpu().numpy() for name, buffer in buffers.items()}

    def close(self) -> None:
        self._buffers.clear()
        self.context = None
        self.engine = None
