"""The latency predictor: measured blocks, a regression for the rest, and a whole-network correction.

Three layers, each fitted on measurements from the target (see `session` and `plan`):
- a block measured alone (export + bench) is looked up exactly;
- any other block is predicted by a non-negative linear regression on its
  features: multiply-accumulates per conv kind (1x1, dense 3x3 / 5x5 at stride
  1 or 2, depthwise, the stem), the activation elements and weights it moves,
  its op count and a per-block constant. A CPU or GPU spends time roughly in
  proportion to each of these, at a rate that depends on the kind, which is
  what the coefficients learn. Channels count as the device computes them:
  rounded up to the step its kernels work in (ONNX Runtime's NCHWc layout
  blocks channels by 16 on AVX-512, by 8 on AVX2), the step that predicts
  held-out blocks best (on a 2-core AVX-512 VM, 16: block CV 7.4% -> 5.0%,
  held-out networks' MAPE 2.6-3.0% -> 1.9-2.5%);
- the sum over blocks is corrected, fitted on whole-network measurements: by a
  scale for a backbone (it absorbs fusion across blocks and per-run overhead),
  by `a * sum + b + c * lateral MACs` for a detector (the fixed-width neck and
  head, and the lateral convs whose widths follow the backbone's stages).
A network measured whole is looked up exactly, so the seed and every verified
candidate are judged by their measured number.

Pure numpy and plain data, so budgets holding a predictor pickle cheaply into
search workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from ..structure import STEM, Block, Cost, Structure, compute_cost
from ..structure.cost import Conv, block_inputs, down, unit_layout
from .requests import NECK_CHANNELS

FEATURES = ("stem", "pw", "k3", "k5", "k3s2", "k5s2", "dw3", "dw5", "dw3s2", "dw5s2",
            "act", "weights", "ops", "block")
_INDEX = {name: i for i, name in enumerate(FEATURES)}
DETECTOR_LEVELS = 3      # the detector reads the last three stages
MEGA = 1e-6              # features in millions keep the least-squares columns comparable
CHANNEL_STEPS = (1, 8, 16, 32)   # the channel granularities a device may compute in


def _conv_name(kernel: int, stride: int, depthwise: bool) -> str:
    if kernel == 1 and not depthwise:
        return "pw"
    base = ("dw" if depthwise else "k") + ("3" if kernel <= 3 else "5")
    return base + ("s2" if stride == 2 else "")


def _add_conv(features: np.ndarray, conv: Conv, batch: int, name: str | None = None) -> None:
    """One conv (+ folded BN, fused ReLU): its MACs under its kind, elements read and written, weights."""
    features[_INDEX[name or _conv_name(conv.kernel, conv.stride, conv.groups > 1)]] += \
        conv.weights * conv.pixels_out * batch * MEGA
    features[_INDEX["act"]] += (conv.cin * conv.pixels_in + conv.cout * conv.pixels_out) * batch * MEGA
    features[_INDEX["weights"]] += conv.weights * MEGA
    features[_INDEX["ops"]] += 1


def _add_unit(features: np.ndarray, kind: str, cin: int, cout: int, btn: int, kernel: int, stride: int,
              height: int, width: int, first: bool, batch: int) -> None:
    """The convs, pool and add of one residual unit (`structure.cost.unit_layout`)."""
    pix_in = height * width
    pix_out = down(height, stride) * down(width, stride)
    convs, project = unit_layout(kind, cin, cout, btn, kernel, stride, pix_in, pix_out, first)
    for conv in convs:
        _add_conv(features, conv, batch)
    if stride == 2:
        features[_INDEX["act"]] += (cin * pix_in + cin * pix_out) * batch * MEGA
        features[_INDEX["ops"]] += 1
    if project:
        _add_conv(features, Conv(cin, cout, 1, 1, 1, pix_out, pix_out), batch)
    features[_INDEX["act"]] += 3 * cout * pix_out * batch * MEGA   # the residual add reads two maps, writes one
    features[_INDEX["ops"]] += 1


def _round_up(channels: int, step: int) -> int:
    return -(-channels // step) * step


def computed_as(block: Block, step: int) -> Block:
    """The block with its channels rounded up to the device's step: a kernel that works on blocks of
    `step` channels pads the rest (the stem's 3 input channels are read as they are)."""
    if step == 1:
        return block
    cin = block.cin if block.kind == STEM else _round_up(block.cin, step)
    return replace(block, cin=cin, cout=_round_up(block.cout, step), btn=_round_up(block.btn, step))


def block_features(block: Block, height: int, width: int, batch: int = 1, channel_step: int = 1) -> np.ndarray:
    """Feature vector (FEATURES order) of a block at its input size, channels rounded up to `channel_step`."""
    block = computed_as(block, channel_step)
    features = np.zeros(len(FEATURES))
    features[_INDEX["block"]] = 1.0
    if block.kind == STEM:
        out = down(height, block.stride) * down(width, block.stride)
        _add_conv(features, Conv(block.cin, block.cout, block.kernel, block.stride, 1, height * width, out), batch,
                  name="stem")
        return features
    _add_unit(features, block.kind, block.cin, block.cout, block.btn, block.kernel, block.stride, height, width,
              True, batch)
    out_h, out_w = down(height, block.stride), down(width, block.stride)
    if block.depth > 1:
        rest = np.zeros(len(FEATURES))
        _add_unit(rest, block.kind, block.cout, block.cout, block.btn, block.kernel, 1, out_h, out_w, False, batch)
        features += (block.depth - 1) * rest
    return features


def lateral_macs(cost: Cost, batch: int = 1) -> float:
    """MACs (millions) of the detector neck's 1x1 lateral convs: the part of neck and head that
    changes with the candidate (the rest runs at the fixed neck width)."""
    stages = cost.stages[-DETECTOR_LEVELS:]
    return sum(s.channels * NECK_CHANNELS * s.height * s.width for s in stages) * batch * MEGA


def nnls(matrix: np.ndarray, target: np.ndarray, tolerance: float = 1e-10) -> np.ndarray:
    """Non-negative least squares (Lawson and Hanson's active set): latencies add, so no
    feature may buy time back, which keeps extrapolation to unseen blocks sane."""
    rows, cols = matrix.shape
    scale = np.linalg.norm(matrix, axis=0)
    scale[scale == 0] = 1.0
    a = matrix / scale
    x = np.zeros(cols)
    active = np.zeros(cols, dtype=bool)
    gradient = a.T @ (target - a @ x)
    for _ in range(3 * cols):
        free = ~active & (gradient > tolerance)
        if not free.any():
            break
        active[np.argmax(np.where(free, gradient, -np.inf))] = True
        while True:
            z = np.zeros(cols)
            z[active] = np.linalg.lstsq(a[:, active], target, rcond=None)[0]
            if (z[active] > tolerance).all():
                x = z
                break
            shrinking = active & (z <= tolerance)
            step = np.min(x[shrinking] / (x[shrinking] - z[shrinking]))
            x = x + step * (z - x)
            active &= x > tolerance
            x[~active] = 0.0
        gradient = a.T @ (target - a @ x)
    return x / scale


def fit_blocks(features: np.ndarray, latency_ms: np.ndarray) -> np.ndarray:
    """Coefficients (ms per feature unit) minimising the squared relative error."""
    weight = 1.0 / latency_ms
    return nnls(features * weight[:, None], latency_ms * weight)


def cross_validated_errors(blocks: Sequence[tuple[Block, int, int, float]], batch: int = 1, folds: int = 5,
                           seed: int = 0, channel_step: int = 1) -> list[float]:
    """Relative error of each measured block as predicted by a regression fitted without it (k-fold):
    how well the regression generalizes to the blocks a search meets but never measures."""
    features = np.array([block_features(b, h, w, batch, channel_step) for b, h, w, _ in blocks])
    latency = np.array([ms for *_, ms in blocks])
    order = np.random.default_rng(seed).permutation(len(latency))
    errors = np.zeros(len(latency))
    for part in np.array_split(order, min(folds, len(latency))):
        train = np.setdiff1d(order, part)
        coef = fit_blocks(features[train], latency[train])
        errors[part] = features[part] @ coef / latency[part] - 1.0
    return errors.tolist()


def fitted_channel_step(blocks: Sequence[tuple[Block, int, int, float]], batch: int = 1) -> int:
    """The channel step this device computes in, learned from its measured blocks: the one whose
    regression predicts held-out blocks best (the smallest step on a tie)."""
    def cv_mape(step: int) -> float:
        return float(np.mean(np.abs(cross_validated_errors(blocks, batch, channel_step=step))))
    return min(CHANNEL_STEPS, key=cv_mape)


@dataclass
class LatencyPredictor:
    """Predicts the latency (ms) of a whole candidate at one image size and scope on one target."""

    image_size: tuple[int, int]
    scope: str
    batch: int
    coef: np.ndarray
    correction: tuple[float, ...] = (1.0,)
    margin: float = 0.0
    measured_blocks: dict[tuple, float] = field(default_factory=dict)
    measured_networks: dict[tuple, float] = field(default_factory=dict)
    prior_blocks: dict[tuple, float] = field(default_factory=dict)   # another target's, scaled to this one
    channel_step: int = 1
    _memo: dict[tuple, float] = field(default_factory=dict, repr=False)

    def block_ms(self, block: Block, height: int, width: int) -> float:
        key = (block.key(), height, width)
        value = self._memo.get(key)
        if value is None:
            value = self.measured_blocks.get(key, self.prior_blocks.get(key))
            if value is None:
                value = float(block_features(block, height, width, self.batch, self.channel_step) @ self.coef)
            self._memo[key] = value
        return value

    def raw_ms(self, structure: Structure) -> float:
        """Sum of the blocks' latencies, before the whole-network correction."""
        return sum(self.block_ms(block, h, w) for block, h, w in block_inputs(structure, self.image_size))

    def correction_features(self, structure: Structure, cost: Cost | None = None) -> list[float]:
        """The backbone's correction is a scale (its blocks are the whole network: a positive offset
        fitted on a few walks only adds noise, measured); the detector's adds the fixed neck and head
        and the lateral convs that follow the backbone's widths."""
        if self.scope != "detector":
            return [self.raw_ms(structure)]
        return [self.raw_ms(structure), 1.0, lateral_macs(cost or compute_cost(structure, self.image_size),
                                                          self.batch)]

    def predicted(self, structure: Structure, cost: Cost | None = None) -> float:
        """The model's number, even for a network that was measured whole."""
        return float(np.dot(self.correction, self.correction_features(structure, cost)[:len(self.correction)]))

    def predict(self, structure: Structure, cost: Cost | None = None) -> float:
        """The measured latency when the network was measured whole, else the model's number
        raised by the safety margin, so what passes the budget tends to measure within it."""
        measured = self.measured_networks.get(structure.key())
        return measured if measured is not None else self.predicted(structure, cost) * (1.0 + self.margin)

    def measured(self, structure: Structure) -> float | None:
        return self.measured_networks.get(structure.key())

    def with_correction(self, networks: Sequence[tuple[Structure, float]]) -> "LatencyPredictor":
        """A copy whose correction is fitted on these whole-network measurements (relative least squares,
        non-negative: a scale, the fixed neck and head, a cost per lateral MAC; a negative term fitted
        on networks close together extrapolates wildly to the ones the search moves on to).

        With fewer measurements than terms, the terms are dropped from the end
        (lateral MACs, then the offset), down to a pure scale. The safety margin is
        the 90th percentile of the fitted networks' under-prediction (from 3 networks on)."""
        rows = np.array([self.correction_features(s) for s, _ in networks]) if networks else np.zeros((0, 1))
        measured = np.array([ms for _, ms in networks])
        terms = min(rows.shape[1], max(1, len(networks) - 1))
        if not networks:
            correction: tuple[float, ...] = (1.0,)
        else:
            weight = 1.0 / measured
            correction = tuple(float(v) for v in nnls(rows[:, :terms] * weight[:, None], measured * weight))
        margin = 0.0
        if len(networks) >= 3:
            predicted = rows[:, :terms] @ np.array(correction)
            margin = max(0.0, float(np.quantile(measured / predicted - 1.0, 0.9)))
        return LatencyPredictor(self.image_size, self.scope, self.batch, self.coef, correction, margin,
                                self.measured_blocks, {s.key(): ms for s, ms in networks}, self.prior_blocks,
                                self.channel_step)

    def to_dict(self) -> dict:
        names = ["scale", "offset_ms", "ms_per_lateral_mmac"][:len(self.correction)]
        return {"coefficients_ms": {name: float(c) for name, c in zip(FEATURES, self.coef)},
                "correction": dict(zip(names, self.correction)), "margin": self.margin,
                "channel_step": self.channel_step, "measured_blocks": len(self.measured_blocks),
                "measured_networks": len(self.measured_networks), "prior_blocks": len(self.prior_blocks)}


def build_predictor(image_size: tuple[int, int], scope: str, batch: int,
                    blocks: Sequence[tuple[Block, int, int, float]],
                    networks: Sequence[tuple[Structure, float]]) -> LatencyPredictor:
    """Fit the block regression on measured blocks (at the channel step they show), then the
    correction on measured networks."""
    if not blocks:
        raise ValueError("the latency predictor needs measured blocks")
    step = fitted_channel_step(blocks, batch)
    features = np.array([block_features(b, h, w, batch, step) for b, h, w, _ in blocks])
    latency = np.array([ms for *_, ms in blocks])
    base = LatencyPredictor(image_size, scope, batch, fit_blocks(features, latency),
                            measured_blocks={(b.key(), h, w): ms for b, h, w, ms in blocks}, channel_step=step)
    return base.with_correction(networks)


def adapt_predictor(source: LatencyPredictor, blocks: Sequence[tuple[Block, int, int, float]]) -> LatencyPredictor:
    """A predictor fitted on another device or target (`source`), scaled to this one by a handful
    of blocks measured here, the way LitePred adapts to a new device from a few samples: one
    scale, fitted by relative least squares, on the source's regression and its measured blocks;
    the blocks measured here are looked up exactly. The correction is fitted afterwards, here."""
    if not blocks:
        raise ValueError("adapting a predictor needs blocks measured on this target")
    there = np.array([source.block_ms(b, h, w) for b, h, w, _ in blocks])
    here = np.array([ms for *_, ms in blocks])
    scale = float(np.sum(there / here) / np.sum((there / here) ** 2))
    return LatencyPredictor(source.image_size, source.scope, source.batch, scale * source.coef,
                            measured_blocks={(b.key(), h, w): ms for b, h, w, ms in blocks},
                            prior_blocks={key: scale * ms for key, ms in source.measured_blocks.items()},
                            channel_step=source.channel_step)
