"""Partial quantization: keep the most sensitive layers float until a target
agreement is met.

1. Sensitivity, one layer at a time: for each quantized compute layer (Conv,
   ConvTranspose, Gemm, MatMul) of the full Q/DQ model, the float model with only
   that layer's input and weight Q/DQ grafted in (taken from the Q/DQ model, so
   the scales are exactly the calibrated ones; no re-quantization per layer) is
   run on a few calibration batches; the layer's sensitivity is the combined
   SQNR of the outputs (of the NMS inputs, when the graph has NMS, since the
   selected detections move discontinuously); lower = more sensitive.
2. Search: layers sorted by sensitivity; the first k stay float for
   k = 1, 2, 4, ... until the held-out agreement (mAP@0.5 agreement for
   detectors, else the lowest output cosine) reaches the target, then a
   bisection finds the smallest such k. Each step is one real quantization
   (onnxruntime, calibration reused) and one held-out comparison.

The held-out set decides when to stop, so the final agreement is measured on the
data the choice was made with; the ranking uses calibration data only.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from ..backends import load_runner
from .data import Batch
from .graph import COMPUTE_OPS, expose, producers, raw_points
from .int8 import Calibration, Prepared, quantize_qdq, qdq_summary
from .metrics import TensorAgreement, combined_sqnr_db
from .report import Evaluator, agreement_score

Progress = Callable[[str, int, int], None]


def quantized_layers(qdq_model: onnx.ModelProto) -> list[str]:
    """Compute layers of a Q/DQ model that read at least one dequantized input."""
    made_by = producers(qdq_model)
    return [node.name for node in qdq_model.graph.node if node.op_type in COMPUTE_OPS
            and any(made_by.get(i) is not None and made_by[i].op_type == "DequantizeLinear" for i in node.input)]


def quantize_only(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, layers: Sequence[str]) -> onnx.ModelProto:
    """`float_model` with only `layers` quantized: their input/weight Q/DQ nodes copied
    from `qdq_model` (made from the same prepared model, so names match)."""
    model = copy.deepcopy(float_model)
    q_made_by = producers(qdq_model)
    q_nodes = {node.name: node for node in qdq_model.graph.node}
    q_inits = {init.name: init for init in qdq_model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    have_tensors = {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.initializer}
    added: list[onnx.NodeProto] = []
    for name in layers:
        q_node, node = q_nodes[name], nodes[name]
        for slot, tensor in enumerate(q_node.input):
            chain = []
            producer = q_made_by.get(tensor)
            while producer is not None and producer.op_type in ("DequantizeLinear", "QuantizeLinear"):
                chain.append(producer)
                producer = q_made_by.get(producer.input[0])
            if not chain:
                continue
            for step in reversed(chain):
                if step.output[0] in have_tensors:
                    continue
                for arg in step.input:
                    if arg in q_inits and arg not in have_tensors:
                        model.graph.initializer.append(q_inits[arg])
                        have_tensors.add(arg)
                added.append(step)
                have_tensors.add(step.output[0])
            node.input[slot] = tensor
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
    sqnr_db: float  # combined output SQNR with only this layer quantized


def layer_sensitivity(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, batches: Sequence[Batch],
                      layers: Sequence[str] | None = None, progress: Progress | None = None) -> list[Sensitivity]:
    """One-layer-at-a-time sensitivity, most sensitive first."""
    layers = list(layers) if layers is not None else quantized_layers(qdq_model)
    points = raw_points(float_model)
    runner = load_runner(expose(float_model, points.values()).SerializeToString(), "onnxruntime")
    reference = []
    for batch in batches:
        outputs = runner.infer(batch.feed)
        reference.append({label: outputs[name] for label, name in points.items()})
    runner.close()
    op_types = {node.name: node.op_type for node in float_model.graph.node}
    out = []
    for index, layer in enumerate(layers):
        model = expose(quantize_only(float_model, qdq_model, [layer]), points.values())
        runner = load_runner(model.SerializeToString(), "onnxruntime")
        stats = {label: TensorAgreement() for label in points}
        for batch, ref in zip(batches, reference):
            outputs = runner.infer(batch.feed)
            for label, name in points.items():
                stats[label].add(ref[label], outputs[name])
        runner.close()
        out.append(Sensitivity(layer, op_types.get(layer, "?"), combined_sqnr_db(stats)))
        if progress:
            progress("sensitivity", index + 1, len(layers))
    return sorted(out, key=lambda s: s.sqnr_db)


@dataclass
class PartialResult:
    model: onnx.ModelProto
    float_layers: list[str]  # kept float by the search (beyond the base exclusions)
    metric: str
    agreement: float
    target: float
    met: bool
    sensitivity: list[Sensitivity]
    steps: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "metric": self.metric, "agreement": self.agreement, "met": self.met,
                "float_layers": self.float_layers,
                "steps": self.steps,
                "sensitivity": [{"layer": s.layer, "op_type": s.op_type,
                                 "sqnr_db": s.sqnr_db if np.isfinite(s.sqnr_db) else None}
                                for s in self.sensitivity]}


def partial_quantize(prepared: Prepared, calibration: Calibration, evaluator: Evaluator, target: float,
                     base_exclusions: dict[str, str], sensitivity_batches: Sequence[Batch],
                     placement: str = "tensorrt", per_channel: bool = True,
                     full: tuple[onnx.ModelProto, dict[str, Any]] | None = None,
                     progress: Progress | None = None) -> PartialResult:
    """Smallest set of most-sensitive layers to keep float so that the held-out
    agreement reaches `target` (or every layer float, if it never does)."""
    if full is None:
        model = quantize_qdq(prepared, calibration, base_exclusions, placement, per_channel)
        full = (model, evaluator.compare(model))
    steps: list[dict[str, Any]] = []
    tried: dict[int, tuple[onnx.ModelProto, dict[str, Any], float]] = {}

    def record(k: int, model: onnx.ModelProto, report: dict[str, Any], seconds: float) -> float:
        metric, value = agreement_score(report)
        tried[k] = (model, report, value)
        steps.append({"float_layers": k, "metric": metric, "agreement": value, "seconds": round(seconds, 2),
                      "quantized_layers": qdq_summary(model)["quantized_layers"]})
        return value

    record(0, *full, 0.0)
    metric = agreement_score(full[1])[0]
    if tried[0][2] >= target:
        return PartialResult(full[0], [], metric, tried[0][2], target, True, [], steps, full[1])
    ranking = layer_sensitivity(prepared.model, full[0], sensitivity_batches, progress=progress)
    names = [s.layer for s in ranking]

    def attempt(k: int) -> float:
        if k in tried:
            return tried[k][2]
        started = time.perf_counter()
        excluded = {**base_exclusions, **{name: "sensitive layer" for name in names[:k]}}
        model = quantize_qdq(prepared, calibration, excluded, placement, per_channel)
        report = evaluator.compare(model)
        value = record(k, model, report, time.perf_counter() - started)
        if progress:
            progress("search", k, len(names))
        return value

    low, high = 0, None
    k = 1
    while k < len(names):
        if attempt(k) >= target:
            high = k
            break
        low, k = k, k * 2
    if high is None:
        high = len(names)
        if attempt(high) < target:
            best = max(tried, key=lambda key: (tried[key][2], -key))
            model, report, value = tried[best]
            return PartialResult(model, names[:best], metric, value, target, False, ranking, steps, report)
    while high - low > 1:
        middle = (low + high) // 2
        if attempt(middle) >= target:
            high = middle
        else:
            low = middle
    model, report, value = tried[high]
    return PartialResult(model, names[:high], metric, value, target, True, ranking, steps, report)
