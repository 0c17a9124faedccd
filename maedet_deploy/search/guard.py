"""The latency budget during the evolution, and the guard that keeps the predictor honest.

Candidates pass the budget on the predicted latency raised by a safety margin
(the fitted networks' 90th-percentile under-prediction); every N batches the
guard measures the best members whole, refits the correction and margin, and
drops the members now over the budget. Its history lives in the search state,
so a resumed search replays it from the cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..errors import MaedetError
from ..structure import Cost, Structure, compute_cost
from .evolution import SearchState
from .population import Member, Population
from .predictor import LatencyPredictor
from .score import entropy_score
from .session import LatencySession


class LatencyBudget:
    """The latency budget as a `budgets.Budget`: usage is the predictor's number (the measured one
    for networks measured whole). Counts its own calls and time (in this process)."""

    name = "latency"
    unit = "ms"

    def __init__(self, latency_ms: float, predictor: LatencyPredictor) -> None:
        self.latency_ms = float(latency_ms)
        self.predictor = predictor
        self.calls = 0
        self.seconds = 0.0

    @property
    def limit(self) -> float:
        """The `budgets.Budget` protocol's name for every budget's limit."""
        return self.latency_ms

    def usage(self, structure: Structure, cost: Cost) -> float:
        start = time.perf_counter()
        value = self.predictor.predict(structure, cost)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return value


def seed_member(state: SearchState) -> Member:
    """The search's seed as a population member (the first one, seq 0)."""
    cost = compute_cost(state.init, state.settings.image_size)
    return Member(entropy_score(state.init, state.settings.alpha), 0, state.init, cost.params, cost.flops,
                  cost.layers)


def recheck_population(state: SearchState, budget: LatencyBudget) -> int:
    """Drop members the current predictor puts over the budget; returns how many. An emptied
    population restarts from the seed, which was measured within the budget."""
    kept = [m for m in state.population.members if budget.predictor.predict(m.structure) <= budget.latency_ms]
    dropped = len(state.population) - len(kept)
    if dropped:
        population = Population(state.population.capacity)
        for member in kept or [seed_member(state)]:
            population.offer(member)
        state.population = population
    return dropped


@dataclass(frozen=True)
class GuardCheck:
    """One check: which members were measured whole, what the predictor said before, what they
    measured, how many members left the population, and the correction fitted after."""

    batch: int
    candidates: int
    measured: tuple[Structure, ...]
    predicted_ms: tuple[float, ...]
    measured_ms: tuple[float, ...]
    dropped: int
    correction: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "candidates": self.candidates, "measured": [s.to_dicts() for s in self.measured],
                "predicted_ms": list(self.predicted_ms), "measured_ms": list(self.measured_ms),
                "dropped": self.dropped, "correction": list(self.correction)}


class LatencyGuard:
    """The evolution's on_batch hook: every `check_every` batches, measure the best `check_top`
    members whole, refit the correction, drop members now over budget."""

    def __init__(self, session: LatencySession, budget: LatencyBudget, settings: dict[str, Any], check_every: int,
                 check_top: int) -> None:
        self.session = session
        self.budget = budget
        self.settings = settings        # what a resumed search must have been started with
        self.check_every = check_every
        self.check_top = check_top
        self.checks: list[GuardCheck] = []
        self.seconds = 0.0

    def restore(self, state: SearchState) -> None:
        """Replay a resumed search's checks (measurements come back from the cache)."""
        saved = state.extensions.get("latency", {})
        if saved.get("settings", self.settings) != self.settings:
            raise MaedetError("the checkpoint was made with different latency settings; rerun with the original "
                              "options or use a new output folder", setting="resume")
        for check in saved.get("checks", []):
            measured = tuple(Structure.from_dicts(blocks) for blocks in check["measured"])
            self.session.measure(measured)
            self.checks.append(GuardCheck(check["batch"], check["candidates"], measured,
                                          tuple(check["predicted_ms"]), tuple(check["measured_ms"]), check["dropped"],
                                          tuple(check["correction"])))
        self.budget.predictor = self.session.predictor()

    def __call__(self, state: SearchState) -> bool:
        if state.batch_index % self.check_every or not self.check_top:
            return False
        top = [m.structure for m in state.population.top(self.check_top)]
        structures = tuple(s for s in top if self.budget.predictor.measured(s) is None)
        if not structures:
            return False
        start = time.perf_counter()
        predicted = tuple(self.budget.predictor.predicted(s) for s in structures)
        measured = tuple(self.session.measure(structures, self.budget.predictor))
        self.budget.predictor = self.session.predictor()
        dropped = recheck_population(state, self.budget)
        self.checks.append(GuardCheck(state.batch_index, state.counters.candidates, structures, predicted, measured,
                                      dropped, self.budget.predictor.correction))
        state.extensions["latency"] = {"settings": self.settings, "checks": [c.to_dict() for c in self.checks]}
        self.seconds += time.perf_counter() - start
        return True

    def errors(self) -> list[float]:
        """Relative errors of the predictor on the networks it was checked against (out of sample),
        contended measurements left out."""
        return [p / m - 1 for check in self.checks for s, p, m in zip(check.measured, check.predicted_ms,
                                                                        check.measured_ms)
                if not self.session.is_contended(s)]
