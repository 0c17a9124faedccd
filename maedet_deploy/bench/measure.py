"""The one timing loop of the product: warm up, time `runner.infer` one call at a time, summarise.

Search calls it for thousands of candidates, so the loop is bare (a local
bound method, `perf_counter_ns`, a preallocated list) and the cheap mode is
just small numbers: `measure(runner, feed, warmup=0, warmup_iterations=2,
iterations=10)`. The garbage collector is paused while timing, as `timeit`
does, so a collection never lands inside one sample.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Mapping

import numpy as np

from ..backends.base import Runner
from ..errors import MaedetError

CV_THRESHOLD = 0.025       # trtexec's stability warning: coefficient of variation above 2.5%
FEW_ITERATIONS = 10        # fewer samples than this give no usable percentiles
DEFAULT_DURATION = 1.0     # seconds, when neither iterations nor duration is given
ROUND_SPREAD = 0.10        # round medians further apart than this: the machine changed speed mid-run


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency of one runner on one feed. Times in milliseconds; `cv` is std/mean
    (a fraction); `median_ci_ms` is a distribution-free 95% interval for the median,
    the noise to compare two medians against. Timed in rounds (`summarise`), the
    interval also spans every round's median: a host whose speed changed during
    the run must not report the narrow interval of a steady one."""

    iterations: int
    batch: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    cv: float
    median_ci_ms: tuple[float, float]
    wall_s: float
    throughput_fps: float      # calls per second over the timed loop
    images_per_s: float        # throughput_fps * batch
    warmup_iterations: int
    warmup_s: float
    warnings: tuple[str, ...] = ()
    round_medians_ms: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        data = asdict(self)
        data["median_ci_ms"] = list(self.median_ci_ms)
        data["warnings"] = list(self.warnings)
        data["round_medians_ms"] = list(self.round_medians_ms)
        return data

    @classmethod
    def from_times(cls, times_ns: list[int] | np.ndarray, wall_ns: int, batch: int = 1, warmup_iterations: int = 0,
                   warmup_ns: int = 0, cv_threshold: float = CV_THRESHOLD) -> "LatencyStats":
        ms = np.sort(np.asarray(times_ns, dtype=np.float64)) / 1e6
        count = len(ms)
        if count == 0:
            raise MaedetError("no timed iterations")
        mean = float(ms.mean())
        std = float(ms.std(ddof=1)) if count > 1 else 0.0
        p90, p95, p99 = (float(v) for v in np.percentile(ms, (90, 95, 99)))
        # Order statistics bracketing the median with ~95% coverage (binomial, normal approximation).
        half = 1.96 * math.sqrt(count) / 2
        low = max(0, math.floor(count / 2 - half) - 1)
        high = min(count - 1, math.ceil(count / 2 + half))
        cv = std / mean if mean > 0 else 0.0
        warnings = []
        if count < FEW_ITERATIONS:
            warnings.append(f"only {count} timed iterations: percentiles and noise figures are rough")
        if cv > cv_threshold:
            warnings.append(f"unstable: coefficient of variation {100 * cv:.1f}% > {100 * cv_threshold:.1f}% "
                            "(other load on the machine, frequency scaling or too short a run)")
        fps = count / (wall_ns / 1e9) if wall_ns > 0 else 0.0
        return cls(count, batch, float(ms[0]), mean, float(np.median(ms)), p90, p95, p99, float(ms[-1]), std, cv,
                   (float(ms[low]), float(ms[high])), wall_ns / 1e9, fps, fps * batch, warmup_iterations,
                   warmup_ns / 1e9, tuple(warnings))


def batch_size(feed: Mapping[str, np.ndarray]) -> int:
    for array in feed.values():
        return int(array.shape[0]) if np.ndim(array) else 1
    return 1


@dataclass(frozen=True)
class Timings:
    """Raw samples of one timing loop (nanoseconds), before they are summarised."""

    times_ns: list[int]
    wall_ns: int
    warmup_iterations: int
    warmup_ns: int


def measure(runner: Runner, feed: Mapping[str, np.ndarray], *, warmup: float = 0.2, warmup_iterations: int = 1,
            iterations: int | None = None, duration: float | None = None, min_iterations: int = FEW_ITERATIONS,
            batch: int | None = None, cv_threshold: float = CV_THRESHOLD) -> LatencyStats:
    """Time `runner.infer(feed)`.

    Warm-up: at least `warmup_iterations` calls and at least `warmup` seconds.
    Then exactly `iterations` calls, or calls for `duration` seconds (at least
    `min_iterations`); neither given means DEFAULT_DURATION seconds. `batch`
    (images per call, for images/s) defaults to the first input's leading dim."""
    raw = time_loop(runner, feed, warmup=warmup, warmup_iterations=warmup_iterations, iterations=iterations,
                    duration=duration, min_iterations=min_iterations)
    return summarise([raw], batch if batch is not None else batch_size(feed), cv_threshold)


def summarise(loops: list[Timings], batch: int, cv_threshold: float = CV_THRESHOLD) -> LatencyStats:
    """One summary of one or more timing loops of the same runner and feed (interleaved rounds).

    With several rounds the median's interval is widened to every round's median, and
    rounds more than ROUND_SPREAD apart are a warning: the machine's speed changed."""
    stats = LatencyStats.from_times([t for loop in loops for t in loop.times_ns],
                                    sum(loop.wall_ns for loop in loops), batch,
                                    sum(loop.warmup_iterations for loop in loops),
                                    sum(loop.warmup_ns for loop in loops), cv_threshold)
    if len(loops) < 2:
        return stats
    medians = tuple(float(np.median(loop.times_ns)) / 1e6 for loop in loops)
    low, high = min(stats.median_ci_ms[0], *medians), max(stats.median_ci_ms[1], *medians)
    warnings = stats.warnings
    if max(medians) > (1 + ROUND_SPREAD) * min(medians):
        warnings += (f"round medians range {min(medians):.3g}-{max(medians):.3g} ms: the machine's speed changed "
                     "during the run (shared host, thermal or power limits); the median interval covers them",)
    return replace(stats, median_ci_ms=(low, high), warnings=warnings, round_medians_ms=medians)


def time_loop(runner: Runner, feed: Mapping[str, np.ndarray], *, warmup: float = 0.2, warmup_iterations: int = 1,
              iterations: int | None = None, duration: float | None = None,
              min_iterations: int = FEW_ITERATIONS) -> Timings:
    """The loop itself (see `measure`): warm-up, then one timed call at a time, GC paused."""
    if iterations is not None and duration is not None:
        raise MaedetError("give iterations or duration, not both")
    if iterations is not None and iterations < 1:
        raise MaedetError(f"iterations must be >= 1, got {iterations}")
    if duration is not None and duration <= 0:
        raise MaedetError(f"duration must be > 0 seconds, got {duration}")
    if warmup < 0 or warmup_iterations < 0:
        raise MaedetError("warm-up must be >= 0")
    infer = runner.infer
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        warm_deadline = start + int(warmup * 1e9)
        warm = 0
        while warm < warmup_iterations or clock() < warm_deadline:
            infer(feed)
            warm += 1
        warm_ns = clock() - start
        if iterations is not None:
            times = [0] * iterations
            loop_start = clock()
            for index in range(iterations):
                t0 = clock()
                infer(feed)
                times[index] = clock() - t0
        else:
            times = []
            loop_start = clock()
            deadline = loop_start + int((duration if duration is not None else DEFAULT_DURATION) * 1e9)
            t1 = loop_start
            while t1 < deadline or len(times) < min_iterations:
                t0 = clock()
                infer(feed)
                t1 = clock()
                times.append(t1 - t0)
        wall = clock() - loop_start
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timings(times, wall, warm, warm_ns)
