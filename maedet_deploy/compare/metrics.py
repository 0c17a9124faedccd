"""How far one output is from a reference: one running accumulator for every check.

`OutputStats` takes one sample at a time (`add(reference, candidate)`) and keeps what
every consumer asks of two outputs: the tolerance verdict (an element passes when
|a - b| <= atol + rtol * |a|, numpy.isclose with the reference first; NaN/inf must
match exactly), max and mean absolute error, max relative error (over nonzero
reference elements), cosine similarity both over all samples together and for the
worst sample, and SQNR (10 log10 of signal over error energy). `compare` reads the
tolerance verdict, the calibration report the cosine and SQNR, export's verification
the max error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


def _cosine(dot: float, energy_a: float, energy_b: float) -> float | None:
    """None when exactly one side is all zeros (undefined, not 0); 1 when both are."""
    if energy_a > 0 and energy_b > 0:
        return dot / math.sqrt(energy_a * energy_b)
    return 1.0 if energy_a == energy_b == 0 else None


@dataclass
class OutputStats:
    name: str
    shape_a: list[int]
    shape_b: list[int]
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    elements: int = 0
    mismatches: int = 0          # elements outside tolerance, NaN/inf disagreements included
    nonfinite: int = 0           # NaN/inf disagreements
    max_abs: float = 0.0
    sum_abs: float = 0.0
    max_rel: float = 0.0
    dot: float = 0.0
    ref_energy: float = 0.0
    got_energy: float = 0.0
    noise_energy: float = 0.0
    worst_cosine: float | None = 1.0  # the lowest cosine of a single sample
    problem: str = ""            # structural: shapes differ, output missing

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """Fold one sample in; `a` is the reference."""
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            self.problem = self.problem or (f"shapes differ: {'x'.join(map(str, a.shape)) or 'scalar'} vs "
                                            f"{'x'.join(map(str, b.shape)) or 'scalar'}")
            return
        x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        self.elements += x.size
        finite = np.isfinite(x) & np.isfinite(y)
        same_special = ~finite & ((x == y) | (np.isnan(x) & np.isnan(y)))
        nonfinite = int(np.count_nonzero(~finite & ~same_special))
        x, y = x[finite], y[finite]
        diff = np.abs(x - y)
        self.nonfinite += nonfinite
        self.mismatches += int(np.count_nonzero(diff > self.atol + self.rtol * np.abs(x))) + nonfinite
        if x.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            nonzero = x != 0
            if nonzero.any():
                self.max_rel = max(self.max_rel, float((diff[nonzero] / np.abs(x[nonzero])).max()))
        self.sum_abs += float(diff.sum())
        dot, energy_x, energy_y = float(x @ y), float(x @ x), float(y @ y)
        self.dot, self.ref_energy, self.got_energy = self.dot + dot, self.ref_energy + energy_x, self.got_energy + energy_y
        self.noise_energy += float(diff @ diff)
        sample = _cosine(dot, energy_x, energy_y)
        self.worst_cosine = None if sample is None or self.worst_cosine is None else min(self.worst_cosine, sample)

    @property
    def mean_abs(self) -> float:
        return self.sum_abs / self.elements if self.elements else 0.0

    @property
    def cosine(self) -> float | None:
        """Over all samples together."""
        return _cosine(self.dot, self.ref_energy, self.got_energy)

    @property
    def sqnr_db(self) -> float:
        if self.noise_energy == 0:
            return math.inf
        if self.ref_energy == 0:
            return -math.inf
        return 10.0 * math.log10(self.ref_energy / self.noise_energy)

    @property
    def noise_ratio(self) -> float:
        """Error energy over signal energy (linear; what SQNR is the inverse of)."""
        if self.ref_energy:
            return self.noise_energy / self.ref_energy
        return 0.0 if self.noise_energy == 0 else math.inf

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


def compare_arrays(name: str, a: np.ndarray, b: np.ndarray, atol: float = DEFAULT_ATOL,
                   rtol: float = DEFAULT_RTOL) -> OutputStats:
    """One output of one sample; `a` is the reference."""
    stats = OutputStats(name, list(np.shape(a)), list(np.shape(b)), atol, rtol)
    stats.add(a, b)
    return stats


def combined_sqnr_db(stats: Mapping[str, OutputStats]) -> float:
    """One number for several outputs: the SQNR of their mean error-to-signal ratio."""
    ratios = [s.noise_ratio for s in stats.values()]
    mean = sum(ratios) / len(ratios) if ratios else 0.0
    return math.inf if mean == 0 else -10.0 * math.log10(mean)


def finite_or_none(value: float | None) -> float | None:
    """JSON has no inf: +inf SQNR (identical outputs) is reported as null."""
    return value if value is not None and math.isfinite(value) else None
