"""Run the same batches through two runners and judge the candidate's outputs against the
reference's with pluggable metrics (Polygraphy's Comparator with its `compare_func`).

The reference runs once (`ReferenceRun`), and any number of candidates are compared
against its kept outputs, each through any metrics: `OutputAgreement` (per output:
tolerances, errors, cosine, SQNR) is built in; `calib` adds detection agreement. A
metric is any object with `add(batch, reference_outputs, candidate_outputs)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np

from ..backends.base import Runner, TensorSpec
from ..backends.fingerprint import device_fingerprint, fingerprint_id
from ..bench.feed import make_feed
from ..errors import MaedetError
from ..inputs import Batch
from ..progress import Progress
from .metrics import DEFAULT_ATOL, DEFAULT_RTOL, OutputStats

Outputs = Mapping[str, np.ndarray]


class Metric(Protocol):
    def add(self, batch: Batch, reference: Outputs, candidate: Outputs) -> None: ...


def as_batch(feed: Batch | Mapping[str, np.ndarray]) -> Batch:
    """A plain feed dict is a batch whose items are all real."""
    if isinstance(feed, Batch):
        return feed
    size = len(next(iter(feed.values()))) if feed and np.ndim(next(iter(feed.values()))) else 1
    return Batch(dict(feed), [None] * size, size)


def pair_outputs(names_a: Sequence[str], names_b: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """Outputs match by name; two models with the same number of outputs and no common
    names (e.g. an eager module's output0) match by position."""
    if not set(names_a) & set(names_b) and len(names_a) == len(names_b):
        return list(zip(names_a, names_b))
    pairs: list[tuple[str | None, str | None]] = [(n, n if n in names_b else None) for n in names_a]
    return pairs + [(None, n) for n in names_b if n not in names_a]


def valid_items(array: np.ndarray, batch: Batch) -> np.ndarray:
    """The real items of a batched output (padding items repeat the last sample)."""
    return array[:batch.valid] if np.ndim(array) and len(array) == len(batch.metas) else array


class OutputAgreement:
    """Per output pair, an OutputStats over all batches (`names`: only these reference outputs)."""

    def __init__(self, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, names: Iterable[str] | None = None):
        self.atol, self.rtol = atol, rtol
        self.names = set(names) if names is not None else None
        self.stats: dict[tuple[str | None, str | None], OutputStats] = {}

    def add(self, batch: Batch, reference: Outputs, candidate: Outputs) -> None:
        names = [n for n in reference if self.names is None or n in self.names]
        for name_a, name_b in pair_outputs(names, [n for n in candidate if self.names is None or n in self.names]):
            key = (name_a, name_b)
            if key not in self.stats:
                first = reference[name_a] if name_a else candidate[name_b]
                label = name_a if name_a == name_b or name_b is None else name_b if name_a is None else \
                    f"{name_a}|{name_b}"
                self.stats[key] = OutputStats(label, list(np.shape(first)) if name_a else [],
                                              list(np.shape(candidate[name_b])) if name_b else [], self.atol, self.rtol)
            entry = self.stats[key]
            if name_a is None or name_b is None:
                entry.problem = f"only the {'first' if name_a else 'second'} model has this output"
                continue
            entry.add(valid_items(reference[name_a], batch), valid_items(candidate[name_b], batch))

    def by_reference_name(self) -> dict[str, OutputStats]:
        return {a: s for (a, b), s in self.stats.items() if a is not None and b is not None}


@dataclass
class ReferenceRun:
    """A reference runner's outputs on every batch of `data` (which must iterate the same
    way each time), kept so candidates are compared without running the reference again."""

    data: Iterable[Batch]
    inputs: list[str]
    outputs: list[dict[str, np.ndarray]]


def run_reference(runner: Runner, data: Iterable[Batch | Mapping[str, np.ndarray]],
                  progress: Progress | None = None, what: str = "reference") -> ReferenceRun:
    total = len(data) if hasattr(data, "__len__") else 0
    outputs = []
    for index, feed in enumerate(data):
        outputs.append(runner.infer(as_batch(feed).feed))
        if progress:
            progress(index + 1, total, what)
    if not outputs:
        raise MaedetError("nothing to compare: no input samples")
    return ReferenceRun(data, sorted(s.name for s in runner.inputs), outputs)


def compare_with(reference: ReferenceRun, candidate: Runner, metrics: Sequence[Metric],
                 progress: Progress | None = None, what: str = "compare") -> int:
    """Feed every batch to `candidate` and every metric; returns the number of samples."""
    _same_inputs(reference.inputs, candidate)
    samples = 0
    for index, (feed, kept) in enumerate(zip(reference.data, reference.outputs)):
        batch = as_batch(feed)
        got = candidate.infer(batch.feed)
        for metric in metrics:
            metric.add(batch, kept, got)
        samples += batch.valid
        if progress:
            progress(index + 1, len(reference.outputs), what)
    return samples


def _same_inputs(names: list[str], candidate: Runner) -> None:
    other = sorted(s.name for s in candidate.inputs)
    if other != names:
        raise MaedetError(f"the two models take different inputs: {', '.join(names)} vs {', '.join(other)}")


@dataclass
class CompareResult:
    a: dict
    b: dict
    atol: float
    rtol: float
    samples: int
    outputs: list[OutputStats]
    fingerprint: dict = field(default_factory=device_fingerprint)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        outputs = [{"name": o.name, "shape_a": o.shape_a, "shape_b": o.shape_b, "max_abs": o.max_abs,
                    "mean_abs": o.mean_abs, "max_rel": o.max_rel, "cosine": o.worst_cosine,
                    "mismatches": o.mismatches, "nonfinite": o.nonfinite, "elements": o.elements,
                    "problem": o.problem, "passed": o.passed, "message": o.message} for o in self.outputs]
        return {"format": "maedet-compare/1", "passed": self.passed, "a": self.a, "b": self.b, "atol": self.atol,
                "rtol": self.rtol, "samples": self.samples, "outputs": outputs, "created": self.created,
                "fingerprint": self.fingerprint, "fingerprint_id": fingerprint_id(self.fingerprint)}


def random_feeds(inputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]] | None = None,
                 samples: int = 1, seed: int = 0) -> list[Batch]:
    """`samples` seeded random feeds (seed, seed + 1, ...) from the declared inputs."""
    if samples < 1:
        raise MaedetError(f"must be >= 1, got {samples}", setting="samples")
    return [as_batch(make_feed(inputs, shapes, seed=seed + index)) for index in range(samples)]


def compare_runners(a: Runner, b: Runner, feeds: Iterable[Batch | Mapping[str, np.ndarray]],
                    atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                    labels: tuple[dict, dict] = ({}, {})) -> CompareResult:
    """Every feed through both runners in turn (nothing kept); per output, every sample
    against the tolerances."""
    _same_inputs(sorted(s.name for s in a.inputs), b)
    agreement, samples = OutputAgreement(atol, rtol), 0
    for feed in feeds:
        batch = as_batch(feed)
        agreement.add(batch, a.infer(batch.feed), b.infer(batch.feed))
        samples += batch.valid
    if not samples:
        raise MaedetError("nothing to compare: no input samples")
    return CompareResult(dict(labels[0]), dict(labels[1]), atol, rtol, samples, list(agreement.stats.values()))
