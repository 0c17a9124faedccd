"""Activation ranges from one pass over the calibration data.

The prepared model runs with every float tensor exposed as an output, one batch at a
time (memory stays flat), and each tensor keeps its exact min and max and histograms
of its positive and negative values (2048 bins each, on a shared range that doubles
when a larger value arrives, merging adjacent bins exactly). Every method reads the
same statistics, so another method needs no second pass (`Ranges.with_method`):

- `minmax`: the largest |x|;
- `percentile`: the given percentile of |x|;
- `entropy`: TensorRT's EntropyCalibration2, the KL-divergence-minimising threshold
  over the |x| histogram with 128 quantized levels;
- `mse`: the threshold with the least expected squared quantization error (clipping
  plus rounding) for the format's grid: 255 steps over [-t, t] for symmetric int8,
  255 steps over the observed part of [-t, t] for asymmetric uint8.

A method gives a clipping threshold t on |x|; the range a tensor is quantized with is
[-t, t] (symmetric), or [max(min, -t), min(max, t)] (asymmetric: the threshold
clipped to the values actually seen, so a tensor after ReLU spends all 256 levels on
[0, t]).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Collection

import numpy as np
import onnx

from ..backends import load_runner
from ..errors import MaedetError, first_line
from ..progress import Progress
from .data import DataSource
from .graph import expose

CALIBRATION_METHODS = ("entropy", "percentile", "minmax", "mse")
HISTOGRAM_BINS = 2048
ENTROPY_LEVELS = 128  # |x| is quantized to 128 levels (int8 without the sign)
TINY = float(np.finfo(np.float32).tiny)  # subnormal values count as zero


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


def mse_amax(hist: np.ndarray, edges: np.ndarray, step_of) -> float:
    """The bin edge t with the least expected squared error of quantizing |x| with a grid
    of step `step_of(t)`: values beyond t are clipped to t, values below round (uniform
    error, step^2 / 12)."""
    hist = np.asarray(hist, dtype=np.float64)
    if hist.sum() == 0:
        return float(edges[-1])
    centres = (edges[:-1] + edges[1:]) / 2
    thresholds = edges[1:]
    mass = np.cumsum(hist)
    tail_mass = hist.sum() - mass
    tail_first = np.cumsum((hist * centres)[::-1])[::-1]
    tail_second = np.cumsum((hist * centres ** 2)[::-1])[::-1]
    # sum over bins beyond t of count * (centre - t)^2, from suffix sums of count, count*c, count*c^2
    beyond = np.concatenate([tail_second[1:], [0.0]]) - 2 * thresholds * np.concatenate([tail_first[1:], [0.0]]) \
        + thresholds ** 2 * tail_mass
    rounding = mass * step_of(thresholds) ** 2 / 12
    return float(thresholds[int(np.argmin(beyond + rounding))])


class Histogram:
    """Running histograms of the positive and the negative values of a tensor over
    [0, top] (`bins` equal bins each); when a larger |x| arrives the range doubles and
    adjacent bins merge, exactly. Keeps the exact min and max too."""

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        self.bins = bins
        self.positive = np.zeros(bins, dtype=np.int64)
        self.negative = np.zeros(bins, dtype=np.int64)
        self.top = 0.0
        self.min = self.max = 0.0
        self.count = 0

    def add(self, values: np.ndarray) -> None:
        flat = np.asarray(values, dtype=np.float64).ravel()
        flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            return
        flat[np.abs(flat) < TINY] = 0.0
        self.count += flat.size
        self.min, self.max = min(self.min, float(flat.min())), max(self.max, float(flat.max()))
        self._grow(max(-self.min, self.max))
        index = np.minimum((np.abs(flat) * (self.bins / self.top if self.top else 0)).astype(np.int64), self.bins - 1)
        negative = flat < 0
        self.positive += np.bincount(index[~negative], minlength=self.bins)
        self.negative += np.bincount(index[negative], minlength=self.bins)

    def _grow(self, peak: float) -> None:
        """Double the range (merging bin pairs) until `peak` fits."""
        if peak == 0:
            return
        if self.top == 0:
            self.top = peak
        while peak > self.top:
            merge = lambda hist: np.concatenate([hist.reshape(-1, 2).sum(1), np.zeros(self.bins // 2, hist.dtype)])
            self.positive, self.negative = merge(self.positive), merge(self.negative)
            self.top *= 2

    @property
    def amax(self) -> float:
        return max(-self.min, self.max)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.top, self.bins + 1)

    def threshold(self, method: str, percentile: float, symmetric: bool) -> float:
        """The clipping threshold on |x| by `method` (see the module docstring)."""
        hist = self.positive + self.negative
        if self.top == 0 or method == "minmax":
            return self.amax
        if method == "percentile":
            index = int(np.searchsorted(np.cumsum(hist) / hist.sum(), percentile / 100.0))
            return float(min(self.edges[min(index + 1, self.bins)], self.amax))
        if method == "entropy":
            return min(entropy_amax(hist, self.edges), self.amax)
        low, high = -self.min, self.max
        step = (lambda t: 2 * t / 254) if symmetric else \
            (lambda t: (np.minimum(t, high) + np.minimum(t, low)) / 255)
        return min(mse_amax(hist, self.edges, step), self.amax)


@dataclass
class Ranges:
    """Per-tensor quantization ranges (lo, hi) of a prepared model's float tensors, and the
    statistics they came from (so another method needs no second pass over the data)."""

    method: str
    symmetric: bool
    ranges: dict[str, tuple[float, float]]
    samples: int
    seconds: float
    percentile: float | None = None
    statistics: dict[str, Histogram] = field(default_factory=dict, repr=False)
    channel_means: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # NCHW conv inputs

    def with_method(self, method: str, percentile: float = 99.99, symmetric: bool | None = None) -> "Ranges":
        """The same statistics read with another method (and, optionally, symmetry)."""
        if method not in CALIBRATION_METHODS:
            raise MaedetError(f"must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}", setting="method")
        if not 0 < percentile <= 100:
            raise MaedetError(f"must be in (0, 100], got {percentile}", setting="percentile")
        symmetric = self.symmetric if symmetric is None else symmetric
        ranges = {}
        for name, hist in self.statistics.items():
            t = hist.threshold(method, percentile, symmetric)
            ranges[name] = (-t, t) if symmetric else (max(hist.min, -t), min(hist.max, t))
        return replace(self, method=method, symmetric=symmetric, ranges=ranges,
                       percentile=percentile if method == "percentile" else None)

    @property
    def amax(self) -> dict[str, float]:
        return {name: max(-lo, hi) for name, (lo, hi) in self.ranges.items()}

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


def conv_inputs(model: onnx.ModelProto) -> set[str]:
    return {node.input[0] for node in model.graph.node if node.op_type == "Conv"}


def collect(model: onnx.ModelProto, data: DataSource, progress: Progress | None = None,
            op_types: Collection[str] | None = None) -> Ranges:
    """Run `model` over `data` once, keeping the statistics of every float tensor (of the
    nodes of `op_types`, default all) and the per-channel means of conv inputs; the ranges
    are min/max until read with a method."""
    started = time.perf_counter()
    tensors = calibration_tensors(model, op_types)
    inputs, channels = {i.name for i in model.graph.input}, conv_inputs(model)
    statistics = {name: Histogram() for name in tensors}
    sums: dict[str, np.ndarray] = {}
    samples = 0
    exposed = expose(model, [t for t in tensors if t not in inputs]).SerializeToString()
    with load_runner(exposed, "onnxruntime", graph_optimization="none") as runner:
        for index, batch in enumerate(data):
            try:
                outputs = runner.infer(batch.feed)
            except Exception as exc:  # onnxruntime's Fail/InvalidArgument on a bad feed
                raise MaedetError(f"calibration inference failed: {first_line(exc)}") from None
            for name in tensors:
                value = batch.feed.get(name) if name in inputs else outputs.get(name)
                if value is not None:
                    value = value[:batch.valid] if value.ndim and len(value) == len(batch.metas) else value
                    statistics[name].add(value)
                    if name in channels and value.ndim == 4:
                        sums[name] = sums.get(name, 0) + value.astype(np.float64).mean(axis=(2, 3)).sum(0)
            samples += batch.valid
            if progress:
                progress(index + 1, len(data), "calibrate")
    if samples == 0:
        raise MaedetError("no calibration data")
    ranges = {name: (h.min, h.max) for name, h in statistics.items()}
    return Ranges("minmax", False, ranges, samples, time.perf_counter() - started, statistics=statistics,
                  channel_means={name: total / samples for name, total in sums.items()})
