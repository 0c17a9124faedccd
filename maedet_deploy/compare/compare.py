"""Run the same inputs through two runners and compare every output (Polygraphy's comparator idea).

An element passes when |a - b| <= atol + rtol * |a| (numpy.isclose, with the
first runner as reference); an output passes when all its elements do and its
shapes agree. Reported per output, worst case over all samples: max and mean
absolute error, max relative error (over nonzero reference elements), cosine
similarity (None when exactly one side is all zeros: undefined) and the count
of failing elements. Random inputs can leave a detector's outputs at zero
everywhere (nothing looks like an object), hiding real differences: compare on
real images (`image_feeds`) before trusting a pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..backends.base import Runner, TensorSpec
from ..bench.feed import make_feed
from ..backends.fingerprint import device_fingerprint, fingerprint_id
from ..errors import MaedetError

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


@dataclass
class OutputComparison:
    name: str
    shape_a: list[int]
    shape_b: list[int]
    max_abs: float = 0.0
    mean_abs: float = 0.0
    max_rel: float = 0.0
    cosine: float | None = 1.0
    mismatches: int = 0          # elements outside tolerance, NaN/inf disagreements included
    nonfinite: int = 0           # NaN/inf disagreements
    elements: int = 0
    problem: str = ""            # structural: shapes differ, output missing

    @property
    def passed(self) -> bool:
        return not self.problem and self.mismatches == 0

    @property
    def message(self) -> str:
        if self.problem:
            return self.problem
        parts = [f"{self.nonfinite} NaN/inf values differ"] if self.nonfinite else []
        if self.mismatches > self.nonfinite:
            parts.append(f"{self.mismatches - self.nonfinite} of {self.elements} elements outside atol + rtol * |a|")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "message": self.message}

    def merge(self, other: "OutputComparison") -> None:
        """Fold another sample in: worst case for errors and cosine, sums for counts."""
        total = self.elements + other.elements
        if total:
            self.mean_abs = (self.mean_abs * self.elements + other.mean_abs * other.elements) / total
        self.max_abs = max(self.max_abs, other.max_abs)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.cosine = None if self.cosine is None or other.cosine is None else min(self.cosine, other.cosine)
        self.mismatches += other.mismatches
        self.nonfinite += other.nonfinite
        self.elements = total
        self.problem = self.problem or other.problem


def compare_arrays(name: str, a: np.ndarray, b: np.ndarray, atol: float = DEFAULT_ATOL,
                   rtol: float = DEFAULT_RTOL) -> OutputComparison:
    """One output of one sample; `a` is the reference for relative errors."""
    result = OutputComparison(name, list(a.shape), list(b.shape))
    if a.shape != b.shape:
        result.problem = (f"shapes differ: {'x'.join(map(str, a.shape)) or 'scalar'} vs "
                          f"{'x'.join(map(str, b.shape)) or 'scalar'}")
        return result
    x = a.astype(np.float64).ravel()
    y = b.astype(np.float64).ravel()
    result.elements = x.size
    if not x.size:
        return result
    finite = np.isfinite(x) & np.isfinite(y)
    same_special = ~finite & ((x == y) | (np.isnan(x) & np.isnan(y)))
    result.nonfinite = int(np.count_nonzero(~finite & ~same_special))
    x, y = x[finite], y[finite]
    diff = np.abs(x - y)
    close = diff <= atol + rtol * np.abs(x)
    result.mismatches = int(np.count_nonzero(~close)) + result.nonfinite
    if x.size:
        result.max_abs = float(diff.max())
        result.mean_abs = float(diff.mean())
        nonzero = x != 0
        result.max_rel = float((diff[nonzero] / np.abs(x[nonzero])).max()) if nonzero.any() else 0.0
        norm_x, norm_y = np.linalg.norm(x), np.linalg.norm(y)
        if norm_x > 0 and norm_y > 0:
            result.cosine = float(x @ y / (norm_x * norm_y))
        elif norm_x > 0 or norm_y > 0:
            result.cosine = None
    return result


@dataclass
class CompareResult:
    a: dict
    b: dict
    atol: float
    rtol: float
    samples: int
    outputs: list[OutputComparison]
    fingerprint: dict = field(default_factory=device_fingerprint)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        return {"format": "maedet-compare/1", "passed": self.passed, "a": self.a, "b": self.b, "atol": self.atol,
                "rtol": self.rtol, "samples": self.samples, "outputs": [o.to_dict() for o in self.outputs],
                "created": self.created, "fingerprint": self.fingerprint,
                "fingerprint_id": fingerprint_id(self.fingerprint)}


def pair_outputs(names_a: list[str], names_b: list[str]) -> list[tuple[str | None, str | None]]:
    """Outputs match by name; two models with the same number of outputs and no common
    names (e.g. an eager module's output0) match by position."""
    if not set(names_a) & set(names_b) and len(names_a) == len(names_b):
        return list(zip(names_a, names_b))
    pairs: list[tuple[str | None, str | None]] = [(n, n if n in names_b else None) for n in names_a]
    return pairs + [(None, n) for n in names_b if n not in names_a]


def random_feeds(inputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]] | None = None,
                 samples: int = 1, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """`samples` seeded random feeds (seed, seed + 1, ...) from the declared inputs."""
    if samples < 1:
        raise MaedetError(f"samples must be >= 1, got {samples}")
    for index in range(samples):
        yield make_feed(inputs, shapes, seed=seed + index)


def compare_runners(a: Runner, b: Runner, feeds: Iterable[Mapping[str, np.ndarray]], atol: float = DEFAULT_ATOL,
                    rtol: float = DEFAULT_RTOL, labels: tuple[dict, dict] = ({}, {})) -> CompareResult:
    """Every feed through both runners; per output, the worst case over feeds."""
    names_a = sorted(s.name for s in a.inputs)
    names_b = sorted(s.name for s in b.inputs)
    if names_a != names_b:
        raise MaedetError(f"the two models take different inputs: {', '.join(names_a)} vs {', '.join(names_b)}")
    merged: dict[tuple, OutputComparison] = {}
    samples = 0
    for feed in feeds:
        out_a, out_b = a.infer(feed), b.infer(feed)
        samples += 1
        for name_a, name_b in pair_outputs(list(out_a), list(out_b)):
            if name_a is None or name_b is None:
                missing = name_a or name_b
                shape = list((out_a if name_a else out_b)[missing].shape)
                entry = OutputComparison(missing, shape if name_a else [], shape if name_b else [],
                                         problem=f"only the {'first' if name_a else 'second'} model has this output")
            else:
                entry = compare_arrays(name_a if name_a == name_b else f"{name_a}|{name_b}", out_a[name_a],
                                       out_b[name_b], atol, rtol)
            key = (name_a, name_b)
            if key in merged:
                merged[key].merge(entry)
            else:
                merged[key] = entry
    if not samples:
        raise MaedetError("nothing to compare: no input samples")
    return CompareResult(dict(labels[0]), dict(labels[1]), atol, rtol, samples, list(merged.values()))
