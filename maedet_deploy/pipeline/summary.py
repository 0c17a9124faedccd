"""The pipeline's summary: the stages' typed results side by side, what the report renders and
`summary.json` holds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .budget import Budget
from .results import Backbone, BenchSummary, CalibrationResult, SearchResult
from .settings import Plan
from .steps import bench_summary, calibration_result, export_result, search_result

PARETO_PNG = "search/pareto.png"


@dataclass(frozen=True)
class StageTime:
    seconds: float
    reused: bool


@dataclass(frozen=True)
class PipelineSummary:
    out: str
    created: str
    budget: Budget
    image_size: tuple[int, int]
    batch: int
    scope: str
    backend: str
    search: SearchResult
    search_seconds: float
    baseline: Backbone
    calibration: CalibrationResult
    images: str
    bench: BenchSummary
    stages: dict[str, StageTime]
    commands: list[str]

    @classmethod
    def collect(cls, plan: Plan, budget: Budget, stages: dict[str, Any], commands: list[str]) -> "PipelineSummary":
        """From the plan and the four finished stages (name -> StageResult)."""
        settings = plan.settings
        return cls(str(settings.out), datetime.now(timezone.utc).isoformat(timespec="seconds"), budget,
                   settings.size, settings.batch, settings.scope, plan.backend, search_result(stages["search"]),
                   stages["search"].seconds, export_result(stages["export"]).baseline_figures,
                   calibration_result(stages["calibrate"]), str(plan.images),
                   bench_summary(stages["bench"], settings),
                   {name: StageTime(stage.seconds, stage.reused) for name, stage in stages.items()}, commands)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.bench.fingerprint

    def to_dict(self) -> dict[str, Any]:
        """`summary.json`: the fields it has always had, plus where the budget came from."""
        search = self.search
        return {
            "out": self.out, "created": self.created, "latency_ms": self.budget.latency_ms,
            "speedup": self.budget.speedup, "baseline_ms": self.budget.baseline_ms,
            "budget_source": self.budget.source, "image_size": list(self.image_size), "batch": self.batch,
            "search": {"best": search.best, "candidates": search.candidates, "seconds": self.search_seconds,
                       "time_s": search.time_s,
                       "latency": {"scope": self.scope, "backend": self.backend, "target": search.target,
                                   "seed_ms": search.seed_ms, **search.winner, "measurements": search.measured,
                                   "cached": search.cached}},
            "baseline": self.baseline.to_dict(), "pareto_png": PARETO_PNG,
            "bench": {"rows": [{**line.stats, "model": line.model, "part": line.part,
                                "speedup_vs_baseline": line.speedup_vs_baseline} for line in self.bench.lines],
                      "baseline": self.bench.baseline, "seconds": self.bench.seconds, "rounds": self.bench.rounds,
                      "warnings": self.bench.warnings},
            "calibration": {**self.calibration.to_dict(), "images": self.images},
            "fingerprint": self.fingerprint,
            "stages": {name: {"seconds": t.seconds, "reused": t.reused} for name, t in self.stages.items()},
            "commands": self.commands,
        }
