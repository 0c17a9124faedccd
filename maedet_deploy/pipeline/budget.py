"""The latency budget, resolved once and kept as its own value: the number the search must meet,
and where it came from (given in ms, or the baseline detector's measured latency divided by a
speed-up). The settings are never rewritten with it, so what the user asked for stays visible."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .settings import Plan

if TYPE_CHECKING:
    from ..search import Executor


@dataclass(frozen=True)
class Budget:
    latency_ms: float
    source: str                       # "latency_ms": given; "speedup": baseline_ms / speedup
    speedup: float | None = None
    baseline_ms: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self, baseline: str) -> str:
        if self.source == "speedup":
            return (f"{self.latency_ms:g} ms, the {baseline} detector's {self.baseline_ms:.2f} ms "
                    f"/ {self.speedup:g}")
        return f"{self.latency_ms:g} ms, as given"


def resolve_budget(plan: Plan, executor: Executor) -> Budget:
    """The budget the search must meet; with a speed-up this measures the baseline detector (where
    and as the search measures candidates, and cached with them)."""
    settings = plan.settings
    if settings.speedup is None:
        return Budget(float(settings.latency_ms), "latency_ms")
    baseline_ms = measure_baseline(plan, executor)
    return Budget(round(baseline_ms / settings.speedup, 3), "speedup", settings.speedup, baseline_ms)


def latency_timing(plan: Plan):
    """How candidates and the baseline are timed."""
    from ..search import TimingSettings

    return TimingSettings.for_backend(plan.backend, patience=plan.settings.quiet_wait, round_s=plan.settings.round_s)


def latency_target(plan: Plan):
    """Where candidates and the baseline are timed (a cache key of the search's measurer)."""
    from ..search import LatencyTarget

    return LatencyTarget(plan.backend, "fp32", plan.settings.batch, plan.settings.threads)


def measure_baseline(plan: Plan, executor: Executor) -> float:
    """The baseline detector's latency, measured as the search measures candidates."""
    from ..search import open_measurer

    settings = plan.settings
    measurer = open_measurer(latency_target(plan), settings.latency_cache, latency_timing(plan), executor=executor)
    try:
        return measurer.networks([plan.baseline], settings.size, settings.scope)[0]
    finally:
        measurer.close()
