"""INT8 as explicit quantization: a Q/DQ ONNX that TensorRT 8.x/10.x/11.x builds
strongly typed and ONNX Runtime's CPU provider runs.

Steps, each a plain function (Polygraphy-style, testable one at a time):

1. `prepare`: onnxruntime's quantization pre-processing (shape inference and
   basic graph optimization: constant folding, BatchNorm folded into Conv), so
   Q/DQ lands on the layers TensorRT will actually run, not on a BN that it
   would fuse away. If the pre-processing fails on a model, the model is used
   as is and the reason is kept.
2. `calibrate`: one pass over the calibration data with the model augmented to
   return every float tensor, one batch at a time (memory stays flat), keeping
   per tensor the largest |x| and a 2048-bin histogram of |x|. `minmax` is the
   largest |x|; `percentile` the given percentile of |x|; `entropy` the
   KL-divergence-minimising threshold over the histogram with 128 quantized
   levels, TensorRT's EntropyCalibration2 recipe. The same statistics give any
   method without another pass (`Calibration.with_method`). (onnxruntime's own
   calibrators were the first version: its entropy calibrator defaults to 128
   histogram bins, which degenerates to min-max, searches in a slow Python loop,
   and each method needs its own pass.)
3. `quantize_qdq`: onnxruntime's `quantize_static` in QDQ format with the ranges
   (through its calibration-cache file, so calibration runs once for any number
   of exclusion sets): int8 activations and weights, symmetric (zero point 0
   everywhere), per-channel weights, float biases (TensorRT folds the bias into
   the layer; int32 bias Q/DQ is not part of its Q/DQ recipe).

Placement ("where Q/DQ goes"): `tensorrt` (default) follows TensorRT's guidance
for explicit quantization: quantize the inputs of the compute layers (Conv,
ConvTranspose, Gemm, MatMul) and of residual Adds (two activations; an Add
with a constant, like the `x + 3` of a decomposed hard-swish, is not), leave
layer outputs unquantized so TensorRT fuses the pointwise tail into the layer.
`all` is onnxruntime's default (every supported op gets Q/DQ on its inputs and
outputs). bench/calib_accuracy.py measures both.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from ..atomic import atomic_path
from ..errors import MaedetError, first_line
from .data import DataSource
from .graph import COMPUTE_OPS, default_exclusions, load_model, name_nodes, resolve_exclusions

METHODS = ("entropy", "percentile", "minmax")
PLACEMENTS = {
    # op types whose inputs get Q/DQ, and whether their outputs do too
    "tensorrt": (COMPUTE_OPS + ("Add",), False),
    "all": (None, True),
}
HISTOGRAM_BINS = 2048
ENTROPY_LEVELS = 128  # |x| is quantized to 128 levels (int8 without the sign)

Progress = Callable[[str, int, int], None]


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization prints progress to stdout and warns through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)



# ---------------------------------------------------------------- 1. prepare

@dataclass
class Prepared:
    """The float model quantization starts from (node names unique and stable)."""

    model: onnx.ModelProto
    preprocessed: bool
    note: str = ""


def prepare(model: str | os.PathLike | bytes | onnx.ModelProto, preprocess: bool = True) -> Prepared:
    """Load, run onnxruntime's quantization pre-processing when asked (falling back
    to plain ONNX shape inference when it fails), and name every node."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    original = load_model(model)
    if preprocess:
        with tempfile.TemporaryDirectory(prefix="maedet-calib-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "pre.onnx"
            onnx.save(original, str(src))
            errors = []
            for options in ({}, {"skip_symbolic_shape": True}):
                try:
                    with _quiet():
                        quant_pre_process(str(src), str(dst), **options)
                    return Prepared(name_nodes(onnx.load(str(dst))), True,
                                    "symbolic shape inference skipped" if options else "")
                except Exception as exc:  # the pre-processing raises many types
                    errors.append(first_line(exc))
        note = f"pre-processing failed ({errors[-1]}); quantizing the model as is"
    else:
        note = "pre-processing off"
    try:
        inferred = onnx.shape_inference.infer_shapes(original)
    except Exception:  # shape inference is best effort here
        inferred = original
    return Prepared(name_nodes(inferred), False, note)


# -------------------------------------------------------------- 2. calibrate

def _xlogx(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def entropy_amax(hist: np.ndarray, edges: np.ndarray, levels: int = ENTROPY_LEVELS) -> float:
    """TensorRT's entropy calibration on a histogram of |x|: the clipping threshold
    (a bin edge from `levels` bins up) whose `levels`-level quantization of the
    clipped distribution has the least KL divergence from it.

    For clipping after bin e: P is the histogram's first e bins with the clipped
    tail added to bin e-1; Q merges them into `levels` groups (the last takes the
    remainder) and spreads each group's mass evenly over its non-empty bins.
    KL(P||Q) = (sum p log p - sum p log q) / N + log(|Q| / N) only needs per-group
    sums, so every candidate e is scored at once from cumulative sums (exact,
    no search heuristics; infinite where P has mass in an empty bin)."""
    hist = np.asarray(hist, dtype=np.float64)
    bins = hist.size
    total_mass = hist.sum()
    if bins <= levels or total_mass == 0:
        return float(edges[-1])
    ends = np.arange(levels, bins + 1)
    width = ends // levels
    mass = np.concatenate([[0.0], np.cumsum(hist)])
    filled = np.concatenate([[0], np.cumsum(hist > 0)])
    entropy_terms = np.concatenate([[0.0], np.cumsum(_xlogx(hist))])
    group = np.arange(levels)
    starts = group[None, :] * width[:, None]
    stops = np.where(group[None, :] == levels - 1, ends[:, None], starts + width[:, None])
    group_mass = mass[stops] - mass[starts]
    group_bins = filled[stops] - filled[starts]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_level = np.where(group_mass > 0, np.log(group_mass / np.maximum(group_bins, 1)), 0.0)
    tail = total_mass - mass[ends]
    last = hist[ends - 1]
    p_log_p = entropy_terms[ends - 1] + _xlogx(last + tail)
    p_log_q = (group_mass * log_level).sum(1) + np.where(last > 0, tail * log_level[:, -1], 0.0)
    kept = mass[ends]
    with np.errstate(divide="ignore"):
        divergence = (p_log_p - p_log_q) / total_mass + np.log(kept / total_mass)
    divergence[(tail > 0) & (last == 0)] = np.inf
    if not np.isfinite(divergence).any():
        return float(edges[-1])
    return float(edges[ends[int(np.argmin(divergence))]])


class AbsHistogram:
    """Running histogram of |x| over [0, top]: `bins` equal bins; when a larger value
    arrives the range doubles (adjacent bins merge, exactly), so one pass serves
    min-max, percentile and entropy alike."""

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        self.bins = bins
        self.hist = np.zeros(bins, dtype=np.int64)
        self.top = 0.0
        self.amax = 0.0

    def add(self, values: np.ndarray) -> None:
        flat = np.abs(np.asarray(values, dtype=np.float32).ravel())
        flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            return
        peak = float(flat.max())
        self.amax = max(self.amax, peak)
        if peak == 0:
            self.hist[0] += flat.size
            return
        if self.top == 0:
            self.top = peak
        while peak > self.top:
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(1), np.zeros(self.bins // 2, np.int64)])
            self.top *= 2
        index = (flat * np.float32(self.bins / self.top)).astype(np.int64)
        np.minimum(index, self.bins - 1, out=index)
        self.hist += np.bincount(index, minlength=self.bins)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.top, self.bins + 1)

    def percentile(self, q: float) -> float:
        """The upper edge of the bin where the cumulative share of |x| reaches q %."""
        total = self.hist.sum()
        if total == 0 or self.top == 0:
            return self.amax
        index = int(np.searchsorted(np.cumsum(self.hist) / total, q / 100.0))
        return float(min(self.edges[min(index + 1, self.bins)], self.amax))

    def entropy(self) -> float:
        if self.top == 0:
            return self.amax
        return min(entropy_amax(self.hist, self.edges), self.amax)


@dataclass
class Calibration:
    """Per-tensor absolute ranges (amax) of the prepared model's float tensors, and the
    statistics they came from (so another method needs no second pass over the data)."""

    method: str
    amax: dict[str, float]
    samples: int
    seconds: float
    percentile: float | None = None
    statistics: dict[str, AbsHistogram] = field(default_factory=dict, repr=False)

    def with_method(self, method: str, percentile: float = 99.99) -> "Calibration":
        """The same statistics read with another method."""
        if method not in METHODS:
            raise MaedetError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
        if not 0 < percentile <= 100:
            raise MaedetError(f"percentile must be in (0, 100], got {percentile}")
        if method == "minmax":
            amax = {name: h.amax for name, h in self.statistics.items()}
        elif method == "percentile":
            amax = {name: h.percentile(percentile) for name, h in self.statistics.items()}
        else:
            amax = {name: h.entropy() for name, h in self.statistics.items()}
        return Calibration(method, amax, self.samples, self.seconds,
                           percentile if method == "percentile" else None, self.statistics)

    def tensors_data(self):
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

        method = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
                  "minmax": CalibrationMethod.MinMax}[self.method]
        return TensorsData(method, {name: TensorData(lowest=np.array(-a, dtype=np.float32),
                                                     highest=np.array(a, dtype=np.float32))
                                    for name, a in self.amax.items()})

    def scale(self, name: str) -> float:
        """TensorRT's per-tensor scale: amax / 127."""
        return self.amax[name] / 127.0


def calibration_tensors(model: onnx.ModelProto, op_types: Collection[str] | None = None) -> list[str]:
    """Float activations read or written by the nodes (of `op_types`, or all nodes)."""
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    try:
        typed = onnx.shape_inference.infer_shapes(model)
    except Exception:  # type information is best effort; untyped tensors are skipped
        typed = model
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output)}
    initializers = {init.name for init in model.graph.initializer}
    names: dict[str, None] = {}
    for node in model.graph.node:
        if op_types is None or node.op_type in op_types:
            for name in list(node.input) + list(node.output):
                if name and name not in initializers and types.get(name) in float_types:
                    names[name] = None
    return list(names)


def calibrate(model: Prepared | onnx.ModelProto, data: DataSource, method: str = "entropy",
              percentile: float = 99.99, progress: Progress | None = None,
              op_types: Collection[str] | None = None) -> Calibration:
    """Run `model` over `data` once, keeping a |x| histogram and the max of every float
    tensor (of the nodes of `op_types`, default all); ranges by `method`."""
    from ..backends import load_runner
    from .graph import expose

    if method not in METHODS:
        raise MaedetError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    proto = model.model if isinstance(model, Prepared) else model
    started = time.perf_counter()
    tensors = calibration_tensors(proto, op_types)
    inputs = {i.name for i in proto.graph.input}
    runner = load_runner(expose(proto, [t for t in tensors if t not in inputs]).SerializeToString(), "onnxruntime",
                         graph_optimization="none")
    statistics = {name: AbsHistogram() for name in tensors}
    total, samples = len(data), 0
    if progress:
        progress("calibrate", 0, total)
    for index, batch in enumerate(data):
        try:
            outputs = runner.infer(batch.feed)
        except Exception as exc:  # onnxruntime's Fail/InvalidArgument on a bad feed
            raise MaedetError(f"calibration inference failed: {first_line(exc)}") from None
        for name in tensors:
            value = batch.feed.get(name) if name in inputs else outputs.get(name)
            if value is not None:
                statistics[name].add(value[:batch.valid] if value.ndim and len(value) == len(batch.metas)
                                     else value)
        samples += batch.valid
        if progress:
            progress("calibrate", index + 1, total)
    runner.close()
    if samples == 0:
        raise MaedetError("no calibration data")
    raw = Calibration("minmax", {}, samples, 0.0, statistics=statistics)
    result = raw.with_method(method, percentile)
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------- 3. quantize

def quantize_qdq(model: Prepared | onnx.ModelProto, calibration: Calibration, exclude: Collection[str] = (),
                 placement: str = "tensorrt", per_channel: bool = True) -> onnx.ModelProto:
    """The Q/DQ model of a prepared float model, with `exclude` node names left float."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    if placement not in PLACEMENTS:
        raise MaedetError(f"unknown Q/DQ placement {placement!r} (choose from {', '.join(PLACEMENTS)})")
    op_types, quantize_outputs = PLACEMENTS[placement]
    proto = model.model if isinstance(model, Prepared) else model
    if placement == "tensorrt":  # element-wise ops: only joins of two activations (residual adds)
        exclude = set(exclude) | set(constant_operand_nodes(proto, ("Add",)))
    tensors = calibration.tensors_data()
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
             "QDQKeepRemovableActivations": True}
    if not quantize_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(COMPUTE_OPS)
    with tempfile.TemporaryDirectory(prefix="maedet-calib-") as tmp:
        src, dst, cache = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx", Path(tmp) / "ranges.json"
        onnx.save(proto, str(src))
        save_tensors_data(tensors, cache)
        try:
            with _quiet():
                quantize_static(str(src), str(dst), None, quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=list(op_types) if op_types else None,
                                per_channel=per_channel, reduce_range=False,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                nodes_to_exclude=sorted(exclude), calibrate_method=tensors.calibration_method,
                                extra_options=extra, calibration_cache_path=str(cache))
        except Exception as exc:  # onnxruntime.quantization raises assorted types
            raise MaedetError(f"onnxruntime quantization failed: {first_line(exc)}") from None
        return float_inputs_for(onnx.load(str(dst)), exclude)


def constant_operand_nodes(model: onnx.ModelProto, op_types: Collection[str]) -> list[str]:
    """Nodes of `op_types` with a constant operand (an initializer or a Constant's
    output), like the `x + 3` inside a decomposed hard-swish: not residual joins."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    return [node.name for node in model.graph.node
            if node.op_type in op_types and any(name in constants for name in node.input)]


def float_inputs_for(model: onnx.ModelProto, names: Collection[str]) -> onnx.ModelProto:
    """Make excluded nodes read float activations, in place.

    onnxruntime quantizes a tensor once for all its readers, so a node left out
    of quantization still reads the dequantized copy whenever another reader (or
    the producer's output quantization) asked for Q/DQ. Such a node is rewired to
    the float tensor in front of the QuantizeLinear, and Q/DQ nodes nobody reads
    any more are dropped. (A weight shared with a quantized node stays
    dequantized: the float initializer no longer exists.)"""
    names = set(names)
    made_by = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.name not in names:
            continue
        for slot, tensor in enumerate(node.input):
            dq = made_by.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = made_by.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[slot] = q.input[0]
    graph_outputs = {out.name for out in model.graph.output}
    while True:
        read = {name for node in model.graph.node for name in node.input} | graph_outputs
        dead = [node for node in model.graph.node
                if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in read for o in node.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    used = {name for node in model.graph.node for name in node.input}
    for init in [init for init in model.graph.initializer if init.name not in used and init.name not in graph_outputs]:
        model.graph.initializer.remove(init)
    return model


def qdq_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """What a TensorRT user checks in a Q/DQ graph: counts, types, zero points, per-channel weights."""
    initializers = {init.name: init for init in model.graph.initializer}
    made_by = {out: node for node in model.graph.node for out in node.output}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    zero_points, types, per_channel, per_tensor = [], set(), 0, 0
    for node in quantize + dequantize:
        if len(node.input) > 2 and node.input[2] in initializers:
            zp = numpy_helper.to_array(initializers[node.input[2]])
            zero_points.append(zp)
            types.add(str(zp.dtype))
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers and node.input[0] not in made_by:
            scale = numpy_helper.to_array(initializers[node.input[1]])
            types.add(str(numpy_helper.to_array(initializers[node.input[0]]).dtype))
            if scale.size > 1:
                per_channel += 1
            else:
                per_tensor += 1
    dq_consumed = {out for n in dequantize for out in n.output}
    quantized_layers = [n.name for n in model.graph.node
                        if n.op_type in COMPUTE_OPS and any(i in dq_consumed for i in n.input)]
    float_layers = [n.name for n in model.graph.node
                    if n.op_type in COMPUTE_OPS and not any(i in dq_consumed for i in n.input)]
    return {
        "quantize_linear": len(quantize),
        "dequantize_linear": len(dequantize),
        "quantized_types": sorted(types),
        "zero_points_all_zero": all(not np.any(zp) for zp in zero_points),
        "per_channel_weights": per_channel,
        "per_tensor_weights": per_tensor,
        "quantized_layers": len(quantized_layers),
        "float_layers": float_layers,
    }


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write an ONNX model atomically (complete or absent)."""
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


@dataclass
class Int8Result:
    model: onnx.ModelProto
    prepared: Prepared
    calibration: Calibration
    excluded: dict[str, str]  # node name -> reason
    placement: str
    summary: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def exclusions(model: Prepared | onnx.ModelProto, exclude: Iterable[str] = (),
               use_defaults: bool = True) -> dict[str, str]:
    """Node name -> reason, for the default float layers and the user's names/op types/patterns."""
    proto = model.model if isinstance(model, Prepared) else model
    out = default_exclusions(proto) if use_defaults else {}
    out.update(resolve_exclusions(proto, exclude))
    return out


def quantize_int8(model: str | os.PathLike | bytes | onnx.ModelProto, data: DataSource | Calibration,
                  out: str | os.PathLike | None = None, *, method: str = "entropy", percentile: float = 99.99,
                  exclude: Iterable[str] = (), default_exclusions: bool = True, placement: str = "tensorrt",
                  per_channel: bool = True, preprocess: bool = True, prepared: Prepared | None = None,
                  progress: Progress | None = None) -> Int8Result:
    """Float ONNX -> Q/DQ INT8 ONNX (written to `out` atomically when given).

    `data` is calibration data (a DataSource) or a Calibration computed before on
    the same prepared model (pass that `prepared` too)."""
    prepared = prepared or prepare(model, preprocess)
    calibration = data if isinstance(data, Calibration) else calibrate(prepared, data, method, percentile, progress)
    excluded = exclusions(prepared, exclude, default_exclusions)
    if progress:
        progress("quantize", 0, 1)
    quantized = quantize_qdq(prepared, calibration, excluded, placement, per_channel)
    if progress:
        progress("quantize", 1, 1)
    result = Int8Result(quantized, prepared, calibration, excluded, placement, qdq_summary(quantized))
    if out is not None:
        result.path = save_model(quantized, out)
    return result
