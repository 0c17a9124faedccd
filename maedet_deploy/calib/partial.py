"""Partial quantization: keep float the fewest multiply-accumulates that reach a target agreement.

1. Sensitivity, once, one layer at a time: for each INT8 compute layer of the full Q/DQ
   model with its element-wise tail (the activation after it: ReLU, SiLU's Sigmoid and
   Mul, hard-swish's Add/Clip/Mul/Div; ONNX Runtime's placement quantizes those too),
   the float model with only that unit's Q/DQ grafted in (taken from the Q/DQ model, so
   the scales are exactly the calibrated ones) runs on a few calibration batches; the
   unit's cost is the error it adds to the outputs (the mean error-to-signal ratio of
   the outputs, or of the NMS inputs when the graph has NMS, since the selected
   detections move discontinuously). Keeping a layer float keeps its whole unit float.
2. A knapsack on MACs: a layer kept float buys back its error at the price of its MACs,
   so layers are taken in order of error per MAC (most error for the fewest MACs first,
   the greedy solution of the fractional knapsack), and the shortest such prefix that
   reaches the target on the held-out data is found by doubling, then bisection. Each
   step is one real quantization (calibration reused) and one held-out judgement.

Without held-out data (the default), step 2 is a budget instead: the ranking's units, in
the same order, while the float share of the conv MACs stays within a bound (`within_budget`).

The held-out set decides when to stop, so the final agreement is measured on the data
the choice was made with; the ranking uses calibration data only.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import onnx

from ..backends import load_runner
from ..backends.onnx_file import weights_apart
from ..compare import OutputAgreement, compare_with, run_reference
from ..inputs import Batch
from ..progress import Progress
from .graph import COMPUTE_OPS, expose, producers, raw_points
from .int8 import quantized_layers
from .report import Agreement

Quantize = Callable[[dict[str, str]], onnx.ModelProto]  # extra float layers -> Q/DQ model
Judge = Callable[[onnx.ModelProto], Agreement]


def quantize_only(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, layers: Sequence[str]) -> onnx.ModelProto:
    """`float_model` with only `layers` quantized: their input/weight Q/DQ nodes copied
    from `qdq_model` (made from the same prepared model, so names match)."""
    model = copy.deepcopy(float_model)
    q_made_by = producers(qdq_model)
    q_nodes = {node.name: node for node in qdq_model.graph.node}
    q_inits = {init.name: init for init in qdq_model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    have = {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.initializer}
    added: list[onnx.NodeProto] = []
    for name in (layer for layer in layers if layer in q_nodes):  # a Clip absorbed into ranges is gone
        for slot, tensor in enumerate(q_nodes[name].input):
            chain, producer = [], q_made_by.get(tensor)
            while producer is not None and producer.op_type in ("DequantizeLinear", "QuantizeLinear"):
                chain.append(producer)
                producer = q_made_by.get(producer.input[0])
            for step in reversed(chain):
                if step.output[0] in have:
                    continue
                for arg in step.input:
                    if arg in q_inits and arg not in have:
                        model.graph.initializer.append(q_inits[arg])
                        have.add(arg)
                added.append(step)
                have.add(step.output[0])
            if chain:
                nodes[name].input[slot] = tensor
    model.graph.node.extend(added)
    _topological(model)
    version = max((op.version for op in qdq_model.opset_import if op.domain in ("", "ai.onnx")), default=13)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = max(op.version, version)
    return model


def _topological(model: onnx.ModelProto) -> None:
    """Reorder the graph's nodes topologically (stable: already-ordered graphs keep their order)."""
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(arg in available for arg in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # names from outer scopes: keep the remaining order
            ordered.extend(rest)
            break
        pending = rest
    ordered = [copy.deepcopy(node) for node in ordered]
    del model.graph.node[:]
    model.graph.node.extend(ordered)


@dataclass
class Sensitivity:
    layer: str
    op_type: str
    error: float  # output error-to-signal ratio with only this layer's unit in INT8
    macs: int
    unit: list[str] = field(default_factory=list)  # the layer and its element-wise tail

    @property
    def sqnr_db(self) -> float:
        return math.inf if self.error <= 0 else -10.0 * math.log10(self.error)


def units(model: onnx.ModelProto, layers: Sequence[str]) -> dict[str, list[str]]:
    """Each layer with its element-wise tail: the single-output nodes after it whose every
    activation input comes from the layer or its tail (constants aside)."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    nodes = {node.name: node for node in model.graph.node}
    out = {}
    for layer in layers:
        members, made = [layer], set(nodes[layer].output)
        for node in model.graph.node:  # graph order is topological: one pass follows the tail
            inputs = [name for name in node.input if name and name not in constants]
            if node.op_type not in COMPUTE_OPS and len(node.output) == 1 and inputs and set(inputs) <= made:
                members.append(node.name)
                made.add(node.output[0])
        out[layer] = members
    return out


def layer_sensitivity(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, batches: Sequence[Batch],
                      macs: Mapping[str, int], progress: Progress | None = None) -> list[Sensitivity]:
    """One-unit-at-a-time sensitivity of every INT8 layer, in knapsack order: most
    error per MAC first."""
    layers = quantized_layers(qdq_model)
    tails = units(float_model, layers)
    points = sorted(set(raw_points(float_model).values()))
    op_types = {node.name: node.op_type for node in float_model.graph.node}
    out = []
    with tempfile.TemporaryDirectory(prefix="maedet-sensitivity-") as folder:
        # The float weights go to one file once: each single-layer model is then a copy of the graph
        # only (was: 46 MB copied, serialized and parsed per layer, half of the ranking's time).
        exposed = weights_apart(expose(float_model, points), folder)
        single_path = Path(folder) / "single.onnx"
        single_path.write_bytes(exposed.SerializeToString())
        with load_runner(single_path) as runner:
            reference = run_reference(runner, batches)
        for index, layer in enumerate(layers):
            single_path.write_bytes(quantize_only(exposed, qdq_model, tails[layer]).SerializeToString())
            agreement = OutputAgreement(names=points)
            with load_runner(single_path) as runner:
                compare_with(reference, runner, [agreement])
            ratios = [stats.noise_ratio for stats in agreement.by_reference_name().values()]
            error = sum(ratios) / len(ratios) if ratios else 0.0
            out.append(Sensitivity(layer, op_types.get(layer, "?"), error, int(macs.get(layer, 0)), tails[layer]))
            if progress:
                progress(index + 1, len(layers), "layer sensitivity")
    return sorted(out, key=lambda s: -s.error / max(s.macs, 1))


@dataclass
class PartialResult:
    model: onnx.ModelProto
    agreement: Agreement | None
    float_layers: list[str]  # kept float by the search (beyond the base exclusions)
    target: float | None  # None: a float-MAC budget, not a target agreement
    met: bool
    sensitivity: list[Sensitivity]
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        metric, value = self.agreement.metric if self.agreement is not None else (None, None)
        return {"target": self.target, "metric": metric, "agreement": value, "met": self.met,
                "float_layers": self.float_layers, "steps": self.steps,
                "sensitivity": [{"layer": s.layer, "op_type": s.op_type, "macs": s.macs,
                                 "sqnr_db": round(s.sqnr_db, 2) if s.error > 0 else None}
                                for s in self.sensitivity]}


class _Search:
    """Quantizations tried so far, by the length of the float prefix of the ranking."""

    def __init__(self, ranking: list[Sensitivity], quantize: Quantize, judge: Judge,
                 progress: Progress | None) -> None:
        self.names = [s.layer for s in ranking]
        self.units = [s.unit or [s.layer] for s in ranking]
        self.quantize, self.judge, self.progress = quantize, judge, progress
        self.tried: dict[int, tuple[onnx.ModelProto, Agreement]] = {}
        self.steps: list[dict[str, Any]] = []

    def value(self, k: int) -> float:
        if k not in self.tried:
            started = time.perf_counter()
            model = self.quantize({name: "sensitive layer (partial quantization)" for unit in self.units[:k]
                                   for name in unit})
            agreement = self.judge(model)
            self.tried[k] = (model, agreement)
            metric, value = agreement.metric
            self.steps.append({"float_layers": k, "metric": metric, "agreement": value,
                               "seconds": round(time.perf_counter() - started, 2)})
            if self.progress:
                self.progress(len(self.steps), 0, "partial quantization search")
        return self.tried[k][1].metric[1]

    def shortest(self, target: float) -> int | None:
        """The shortest float prefix reaching `target` (None: not even all of it)."""
        low, k = 0, 1
        while k < len(self.names) and self.value(k) < target:
            low, k = k, k * 2
        high = min(k, len(self.names))
        if self.value(high) < target:
            return None
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if self.value(middle) >= target else (middle, high)
        return high


def partial_quantize(full: onnx.ModelProto, full_agreement: Agreement, float_model: onnx.ModelProto,
                     quantize: Quantize, judge: Judge, target: float, batches: Sequence[Batch],
                     macs: Mapping[str, int], progress: Progress | None = None) -> PartialResult:
    """The fewest MACs kept float so that the held-out agreement reaches `target` (or the
    best agreement found, if no prefix reaches it)."""
    if full_agreement.metric[1] >= target:
        return PartialResult(full, full_agreement, [], target, True, [])
    ranking = layer_sensitivity(float_model, full, batches, macs, progress)
    search = _Search(ranking, quantize, judge, progress)
    search.tried[0] = (full, full_agreement)
    k = search.shortest(target)
    met = k is not None
    if k is None:
        k = max(search.tried, key=lambda key: (search.tried[key][1].metric[1], -key))
    model, agreement = search.tried[k]
    return PartialResult(model, agreement, search.names[:k], target, met, ranking, search.steps)


def within_budget(full: onnx.ModelProto, float_model: onnx.ModelProto, quantize: Quantize, share: float,
                  batches: Sequence[Batch], macs: Mapping[str, int],
                  progress: Progress | None = None) -> PartialResult:
    """Label-free partial quantization: the most sensitive units (error per MAC) stay float
    while the float share of the conv MACs (layers already float included) stays within
    `share`; units too large for what is left are skipped."""
    quantized = set(quantized_layers(full))
    already = sum(count for layer, count in macs.items() if layer not in quantized)
    left, kept = share * sum(macs.values()) - already, []
    if left <= 0:     # the layers float already spend the budget: no ranking to pay for
        return PartialResult(full, None, [], None, True, [])
    ranking = layer_sensitivity(float_model, full, batches, macs, progress)
    for unit in ranking:
        if unit.error > 0 and unit.macs <= left:
            kept.append(unit)
            left -= unit.macs
    model = quantize({name: "sensitive layer (float-MAC budget)" for unit in kept for name in unit.unit or [unit.layer]})
    return PartialResult(model, None, [unit.layer for unit in kept], None, True, ranking)
