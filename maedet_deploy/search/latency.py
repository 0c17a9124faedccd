"""Hardware-aware search: what `search --latency-ms` adds around the evolution, and its report.

Before: the seed measured whole (the first measurement, so an unusable backend
fails fast), then the profile plan (`plan`), measured through the cache
(`measurer`) and fitted into the predictor (`session`, `predictor`). During: the
budget and the guard (`guard`). After: the top candidates measured whole and the
Pareto front (`verify`), and the report (`LatencyOutcome`). A search uses only
the plan and its own measurements (looked up in the cache, measured when
missing), never other searches' results, so the same seed and cache give the
same search, and a second run measures nothing new.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import MaedetError
from ..progress import Progress
from ..structure import Structure
from .evolution import SearchState
from .guard import LatencyBudget, LatencyGuard
from .measurer import Executor, MeasureCounters, Measurer, open_measurer
from .session import ErrorSummary, LatencySession
from .target import LatencyTarget, MeasureLimits, TimingSettings
from .verify import Verification, VerifiedCandidate, pareto, verify_top

SCOPES = ("backbone", "detector")


@dataclass
class LatencySettings:
    """A measured-latency budget and how to keep it; each field has its command-line flag's name."""

    latency_ms: float
    target: LatencyTarget = field(default_factory=LatencyTarget)
    latency_scope: str = "backbone"
    verify_top: int = 3
    latency_check_every: int = 40     # batches between guard checks
    check_top: int = 2                # members measured whole per check
    latency_cache: str | None = None
    profile_walks: int = 12
    latency_prior: str | None = None  # a cache holding another device's or target's profile of this plan

    def __post_init__(self) -> None:
        if not self.latency_ms > 0:
            raise MaedetError(f"must be positive, got {self.latency_ms:g}", setting="latency_ms")
        if self.latency_scope not in SCOPES:
            raise MaedetError(f"unknown latency scope {self.latency_scope!r} (choose from {', '.join(SCOPES)})",
                              setting="latency_scope")
        for name in ("verify_top", "latency_check_every", "profile_walks"):
            if getattr(self, name) < 1:
                raise MaedetError(f"must be >= 1, got {getattr(self, name)}", setting=name)
        if self.check_top < 0:
            raise MaedetError(f"must be >= 0, got {self.check_top}", setting="check_top")

    def to_dict(self) -> dict[str, Any]:
        """As the report and the checkpoint record them (`limit_ms`: the budget, as reports always named it)."""
        return {"limit_ms": self.latency_ms, "target": self.target.key(), "scope": self.latency_scope,
                "verify_top": self.verify_top, "check_every": self.latency_check_every, "check_top": self.check_top,
                "profile_walks": self.profile_walks, "latency_prior": self.latency_prior}


@dataclass(frozen=True)
class LatencyTimes:
    """Wall time of a latency search, split (seconds). `predicting` is None when workers did it."""

    profile: float
    search: float
    predicting: float | None
    guard: float
    verify: float
    pareto: float
    measuring: float
    measuring_after_search: float
    fitting: float

    @property
    def scoring(self) -> float:
        return self.search - self.guard - (self.predicting or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"profile": round(self.profile, 3), "search": round(self.search, 3), "scoring": round(self.scoring, 3),
                "predicting": None if self.predicting is None else round(self.predicting, 4),
                "predicting_note": None if self.predicting is not None else "in worker processes, not timed",
                "guard": round(self.guard, 3), "verify": round(self.verify, 3), "pareto": round(self.pareto, 3),
                "measuring": round(self.measuring, 3), "measuring_after_search": round(self.measuring_after_search, 3),
                "fitting": round(self.fitting, 3)}


@dataclass
class LatencyOutcome:
    """What a latency search found and how: the `latency` section of report.json (`to_dict`)."""

    settings: LatencySettings
    where: str
    device: dict[str, Any]
    cache: str
    cache_target: str
    seed_ms: float
    verification: Verification
    verified_error: ErrorSummary
    guard_error: ErrorSummary
    fit: dict[str, Any]
    model: dict[str, Any]
    guard_checks: list[dict[str, Any]]
    counters: MeasureCounters
    times: LatencyTimes
    predictions: int
    pareto: list[dict[str, Any]]
    farm: dict[str, Any] | None = None     # which farm node measured what (None: measured in this process)

    @property
    def winner(self) -> VerifiedCandidate | None:
        return self.verification.winner

    def to_dict(self) -> dict[str, Any]:
        winner = self.winner
        return {
            "settings": self.settings.to_dict(), "device": self.device, "cache": self.cache,
            "cache_target": self.cache_target, "seed_measured_ms": self.seed_ms,
            "status": "ok" if winner else "no verified candidate within the budget",
            "winner": None if winner is None else {k: v for k, v in winner.to_dict().items()
                                                   if k in ("rank", "score", "predicted_ms", "measured_ms", "error_pct")},
            "verified": [row.to_dict() for row in self.verification.rows],
            "predictor": {"verified_out_of_sample": self.verified_error.to_dict(),
                          "guard_checks": self.guard_error.to_dict(), **self.fit, "model": self.model},
            "guard": {"checks": len(self.guard_checks), "measured": sum(len(c["measured"]) for c in self.guard_checks),
                      "dropped": sum(c["dropped"] for c in self.guard_checks)},
            "measurements": self.counters.to_dict(),
            "time_s": self.times.to_dict(),
            "predictions": self.predictions,
            "farm": self.farm,
            "pareto": {"members": len(self.pareto), "front": sum(r["on_front"] for r in self.pareto),
                       "measured": sum(r["measured_ms"] is not None for r in self.pareto)},
        }


class LatencyRun:
    """The latency side of one search (or one `profile`): the seed check and the profile before,
    the budget and the guard during, verification and the Pareto front after."""

    def __init__(self, settings: LatencySettings, image_size: tuple[int, int], space: str, init: Structure,
                 max_channels: int = 2048, timing: TimingSettings | None = None, limits: MeasureLimits | None = None,
                 executor: Executor | None = None) -> None:
        self.settings = settings
        self.measurer: Measurer = open_measurer(settings.target, settings.latency_cache, timing, limits, executor)
        self.session = LatencySession(self.measurer, space, init, image_size, settings.latency_scope, max_channels,
                                      settings.profile_walks, settings.latency_prior)
        self.seed_ms: float | None = None
        self.budget: LatencyBudget | None = None
        self.guard: LatencyGuard | None = None
        self.profile_s = 0.0

    def where(self) -> str:
        size = self.session.image_size
        return f"{self.settings.target.key()}, {self.settings.latency_scope} at {size[0]}x{size[1]}"

    def prepare(self, progress: Progress | None = None) -> LatencyBudget:
        """Measure the seed (first: an unusable backend fails here), then the profile plan."""
        start = time.perf_counter()
        self.seed_ms = self.session.seed_ms()
        if self.seed_ms > self.settings.latency_ms:
            raise MaedetError(f"the seed's measured latency {self.seed_ms:.3f} ms exceeds the budget "
                              f"{self.settings.latency_ms:g} ms ({self.where()}); raise the budget or start from a "
                              "smaller seed structure", setting="latency_ms")
        predictor = self.session.prepare(progress)
        self.profile_s = time.perf_counter() - start
        self.budget = LatencyBudget(self.settings.latency_ms, predictor)
        self.guard = LatencyGuard(self.session, self.budget, self.settings.to_dict(),
                                  self.settings.latency_check_every, self.settings.check_top)
        return self.budget

    def finish(self, state: SearchState, search_s: float, workers: int = 1, pareto_limit: int = 10) -> LatencyOutcome:
        """Verify the top candidates and measure the Pareto front. `search_s` is the wall time of the
        evolution (run_search), split in the outcome into scoring, predicting and the guard's measuring."""
        start = time.perf_counter()
        measuring_before = self.measurer.counters.seconds
        verification = verify_top(state, self.budget, self.session, self.settings.verify_top)
        verify_s = time.perf_counter() - start
        start = time.perf_counter()
        front = pareto(state, self.budget, self.session, pareto_limit)
        times = LatencyTimes(self.profile_s, search_s, self.budget.seconds if workers == 1 else None,
                             self.guard.seconds, verify_s, time.perf_counter() - start, self.measurer.counters.seconds,
                             self.measurer.counters.seconds - measuring_before, self.session.fit_s)
        cache, executor = self.measurer.cache, self.measurer.executor
        device, fingerprint = executor.device()
        return LatencyOutcome(
            self.settings, self.where(), {"fingerprint_id": device, **fingerprint}, str(cache.path),
            cache.target, self.seed_ms, verification, ErrorSummary.of(verification.out_of_sample_errors()),
            ErrorSummary.of(self.guard.errors()), self.session.fit_report(self.budget.predictor),
            self.budget.predictor.to_dict(), [c.to_dict() for c in self.guard.checks], self.measurer.counters, times,
            self.budget.calls, front, executor.report())

    def close(self) -> None:
        self.measurer.close()
