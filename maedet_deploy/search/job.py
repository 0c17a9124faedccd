"""A whole search run, start to finish: the library entry the `search` command and the pipeline share
(budgets, optional measured-latency budget, evolution, outputs), and the `profile` entry."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import MaedetError
from ..progress import Progress
from ..structure import Structure
from .budgets import Budget
from .evolution import CHECKPOINT, SearchSettings, SearchState, load_checkpoint, new_state, run_search
from .latency import LatencyOutcome, LatencyRun, LatencySettings
from .measurer import Executor, MeasureCounters
from .outputs import BudgetUse, budget_usage, write_outputs, write_pareto
from .target import MeasureLimits, TimingSettings

EXISTING_CHECKPOINT = ("replace", "refuse")


@dataclass
class SearchJob:
    """`resume`: continue the search checkpointed in `out`. Without it, `existing_checkpoint` says
    what happens to one found there: 'replace' it, or 'refuse' to start (the `search` command)."""

    out: Path
    settings: SearchSettings
    init: Structure
    budgets: list[Budget] = field(default_factory=list)
    latency: LatencySettings | None = None
    timing: TimingSettings | None = None
    workers: int = 1
    checkpoint_every: float = 30.0
    resume: bool = False
    top_k: int = 10
    limits: MeasureLimits | None = None
    executor: Executor | None = None
    existing_checkpoint: str = "replace"

    def check_out(self) -> None:
        if self.existing_checkpoint not in EXISTING_CHECKPOINT:
            raise ValueError(f"existing_checkpoint must be one of {EXISTING_CHECKPOINT}")
        if not self.resume and self.existing_checkpoint == "refuse" and (Path(self.out) / CHECKPOINT).is_file():
            raise MaedetError(f"{self.out} holds the checkpoint of an earlier search: pass resume to continue it, "
                              "or choose another output folder", setting="resume")


@dataclass
class SearchOutcome:
    """`report`: report.json's content; `budgets`: the best member's use of each budget; `latency`:
    the latency section, typed (None without a latency budget)."""

    report: dict[str, Any]
    state: SearchState
    budgets: list[BudgetUse]
    latency: LatencyOutcome | None

    @property
    def found(self) -> bool:
        """False only when a latency budget was set and no verified candidate fits it."""
        return self.latency is None or self.latency.winner is not None

    @property
    def verification(self):
        return None if self.latency is None else self.latency.verification

    @property
    def where(self) -> str | None:
        return None if self.latency is None else self.latency.where


@dataclass
class SearchCallbacks:
    """Progress only: `start(where)` before anything (where latency is measured, or None),
    `profile` while the latency profile is measured, `batch(state, budgets)` after every batch,
    `verify(where)` before the final measurements."""

    start: Callable[[str | None], None] | None = None
    profile: Progress | None = None
    batch: Callable[[SearchState, list[Budget]], None] | None = None
    verify: Callable[[str], None] | None = None


def run_search_job(job: SearchJob, on_start: Callable[[str | None], None] | None = None,
                   on_profile: Progress | None = None,
                   on_batch: Callable[[SearchState, list[Budget]], None] | None = None,
                   on_verify: Callable[[str], None] | None = None) -> SearchOutcome:
    """Run the search described by `job`; callbacks only report progress."""
    job.check_out()
    calls = SearchCallbacks(on_start, on_profile, on_batch, on_verify)
    if job.latency is None:
        if calls.start:
            calls.start(None)
        state, budgets, _ = _evolve(job, list(job.budgets), None, calls)
        return SearchOutcome(write_outputs(job.out, state, budgets, job.top_k), state, budget_usage(budgets, state),
                             None)
    latency = LatencyRun(job.latency, job.settings.image_size, job.settings.space, job.init,
                         job.settings.max_channels, job.timing, job.limits, job.executor)
    try:
        if calls.start:
            calls.start(latency.where())
        budgets = [*job.budgets, latency.prepare(calls.profile)]
        state, budgets, search_s = _evolve(job, budgets, latency, calls)
        if calls.verify:
            calls.verify(latency.where())
        outcome = latency.finish(state, search_s, job.workers)
    finally:
        latency.close()
    write_pareto(job.out, outcome.pareto, job.latency.latency_ms, f"score vs latency ({outcome.where})")
    report = write_outputs(job.out, state, budgets, job.top_k, {"latency": outcome.to_dict()},
                           winner=outcome.winner is not None)
    return SearchOutcome(report, state, budget_usage(budgets, state), outcome)


def _evolve(job: SearchJob, budgets: list[Budget], latency: LatencyRun | None,
            calls: SearchCallbacks) -> tuple[SearchState, list[Budget], float]:
    """The evolution, with the latency guard after every batch; returns its wall time too."""
    state = load_checkpoint(job.out, job.settings) if job.resume else new_state(job.settings, job.init, budgets)
    if latency and job.resume:
        latency.guard.restore(state)

    def batch_done(current: SearchState) -> bool:
        changed = bool(latency and latency.guard(current))
        if calls.batch:
            calls.batch(current, budgets)
        return changed

    started = time.perf_counter()
    state = run_search(state, budgets, workers=job.workers, checkpoint_dir=job.out,
                       checkpoint_every=job.checkpoint_every, on_batch=batch_done)
    return state, budgets, time.perf_counter() - started


@dataclass
class ProfileOutcome:
    """What `profile` measured: where, the seed's latency, how long it took and how well the
    fitted predictor explains its own measurements."""

    cache: str
    device: str
    where: str
    seed_ms: float
    seconds: float
    counters: MeasureCounters
    fit: dict[str, Any]


def profile_latency(settings: LatencySettings, image_size: tuple[int, int], space: str, init: Structure,
                    max_channels: int = 2048, timing: TimingSettings | None = None,
                    limits: MeasureLimits | None = None, executor: Executor | None = None,
                    progress: Progress | None = None) -> ProfileOutcome:
    """Measure what a latency search with these settings fits its predictor on (the seed, then the
    profile plan), so a later search starts at once. Cached entries are reused."""
    run = LatencyRun(settings, image_size, space, init, max_channels, timing, limits, executor)
    try:
        budget = run.prepare(progress)
        return ProfileOutcome(str(run.measurer.cache.path), run.measurer.cache.device, run.where(), run.seed_ms,
                              run.profile_s, run.measurer.counters, run.session.fit_report(budget.predictor))
    finally:
        run.close()
