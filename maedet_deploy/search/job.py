"""A whole search run, start to finish: the library entry the `search` command and
the pipeline share (budgets, optional measured-latency budget, evolution, outputs)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..structure import Structure
from .budgets import Budget
from .evolution import SearchSettings, SearchState, load_checkpoint, new_state, run_search
from .latency import LatencyRun, LatencySettings, Verification
from .measurer import TimingSettings
from .outputs import write_outputs, write_pareto

ProfileProgress = Callable[[int, int, str], None]


@dataclass
class SearchJob:
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


@dataclass
class SearchOutcome:
    report: dict[str, Any]
    state: SearchState
    verification: Verification | None
    where: str | None

    @property
    def found(self) -> bool:
        """False only when a latency budget was set and no verified candidate fits it."""
        return self.verification is None or self.verification.winner is not None


def run_search_job(job: SearchJob, on_start: Callable[[str | None], None] | None = None,
                   on_profile: ProfileProgress | None = None,
                   on_batch: Callable[[SearchState, list[Budget]], None] | None = None,
                   on_verify: Callable[[str], None] | None = None) -> SearchOutcome:
    """Run the search described by `job`; callbacks only report progress."""
    budgets = list(job.budgets)
    latency = None
    if job.latency is not None:
        latency = LatencyRun(job.latency, job.settings.image_size, job.settings.space, job.init,
                             job.settings.max_channels, job.timing)
    try:
        if on_start:
            on_start(latency.where() if latency else None)
        if latency:
            budgets.append(latency.prepare(on_profile))
        state = load_checkpoint(job.out, job.settings) if job.resume else new_state(job.settings, job.init, budgets)
        if latency and job.resume:
            latency.guard.restore(state)

        def batch_done(current: SearchState) -> bool:
            changed = bool(latency and latency.guard(current))
            if on_batch:
                on_batch(current, budgets)
            return changed

        started = time.perf_counter()
        state = run_search(state, budgets, workers=job.workers, checkpoint_dir=job.out,
                           checkpoint_every=job.checkpoint_every, on_batch=batch_done)
        search_s = time.perf_counter() - started
        if latency is None:
            return SearchOutcome(write_outputs(job.out, state, budgets, job.top_k), state, None, None)
        if on_verify:
            on_verify(latency.where())
        verification, front, section = latency.finish(state, search_s, job.workers)
        where = latency.where()
    finally:
        if latency:
            latency.close()
    write_pareto(job.out, front, job.latency.limit_ms, f"score vs latency ({where})")
    report = write_outputs(job.out, state, budgets, job.top_k, {"latency": section},
                           winner=verification.winner is not None)
    return SearchOutcome(report, state, verification, where)
