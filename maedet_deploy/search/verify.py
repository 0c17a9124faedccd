"""The end of a latency search: the top candidates measured whole (the winner is the best-scoring
one whose measured latency fits), and the score-vs-latency Pareto front of the final population."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..structure import Structure
from .evolution import SearchState
from .guard import LatencyBudget, recheck_population
from .population import Member
from .session import LatencySession


@dataclass(frozen=True)
class VerifiedCandidate:
    """One of the top candidates, measured whole. `predicted_ms` is what the predictor said before
    the network was first measured; `in_sample` marks the profile's own networks (the correction
    was fitted on them)."""

    rank: int
    score: float
    structure: Structure
    predicted_ms: float
    measured_ms: float
    in_sample: bool
    contended: bool
    within_budget: bool

    @property
    def error_pct(self) -> float:
        return 100 * (self.predicted_ms / self.measured_ms - 1)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "predicted_ms": self.predicted_ms,
                "measured_ms": self.measured_ms, "error_pct": self.error_pct, "in_sample": self.in_sample,
                "contended": self.contended, "within_budget": self.within_budget,
                "blocks": self.structure.to_dicts()}


@dataclass(frozen=True)
class Verification:
    rows: tuple[VerifiedCandidate, ...]
    winner: VerifiedCandidate | None

    def closest(self) -> VerifiedCandidate:
        return min(self.rows, key=lambda row: row.measured_ms)

    def out_of_sample_errors(self) -> list[float]:
        return [row.error_pct / 100 for row in self.rows if not row.in_sample and not row.contended]


def verify_top(state: SearchState, budget: LatencyBudget, session: LatencySession, top: int) -> Verification:
    """Measure the `top` best members whole; those over the budget leave the population, so its
    best member is the winner: the best-scoring candidate whose measured latency fits. When none of
    them fits, the next best are measured, down to the seed (measured within the budget before the
    search began) if the population empties."""
    rows: list[VerifiedCandidate] = []
    for _ in range(state.population.capacity + 1):
        measured = _measured_rows(state.population.top(top), budget, session)
        rows += measured
        fitting = [row for row in measured if row.within_budget]
        if fitting:
            recheck_population(state, budget)
            return Verification(tuple(rows), fitting[0])
        if not recheck_population(state, budget):
            break
    return Verification(tuple(rows), None)


def _measured_rows(members: Sequence[Member], budget: LatencyBudget,
                   session: LatencySession) -> list[VerifiedCandidate]:
    """The members measured whole (the cache first), with what the predictor said before; the
    predictor is refitted on them."""
    measured = session.measure([m.structure for m in members], budget.predictor)
    budget.predictor = session.predictor()
    rows = []
    for rank, (member, ms) in enumerate(zip(members, measured), 1):
        before = session.predicted_before.get(member.structure.key())
        predicted = before if before is not None else budget.predictor.predicted(member.structure)
        rows.append(VerifiedCandidate(rank, member.score, member.structure, predicted, ms, before is None,
                                      session.is_contended(member.structure), ms <= budget.latency_ms))
    return rows


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (score, latency) points no other point beats on both (higher score, lower latency)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front, best = [], -math.inf
    for index in order:
        if points[index][0] > best:
            front.append(index)
            best = points[index][0]
    return front


def pareto(state: SearchState, budget: LatencyBudget, session: LatencySession, limit: int = 10) -> list[dict[str, Any]]:
    """Score vs latency of the final population. Members are placed by their predicted latency
    and the front's members are measured, until the front (by measured latency where known)
    holds only measured members or `limit` members have been measured for it."""
    members = state.population.top(len(state.population))
    predicted = [budget.predictor.predicted(m.structure) for m in members]
    measured: dict[int, float] = {i: ms for i, m in enumerate(members)
                                  if (ms := budget.predictor.measured(m.structure)) is not None}
    spent = 0
    while True:
        points = [(m.score, measured.get(i, predicted[i])) for i, m in enumerate(members)]
        front = pareto_front(points)
        missing = [i for i in front if i not in measured]
        if not missing or spent >= limit:
            break
        batch = missing[:limit - spent]
        for i, ms in zip(batch, session.measure([members[i].structure for i in batch], budget.predictor)):
            measured[i] = ms
        spent += len(batch)
    return [{"score": m.score, "predicted_ms": predicted[i], "measured_ms": measured.get(i),
             "on_front": i in front, "within_budget": measured.get(i, predicted[i]) <= budget.latency_ms,
             "params": m.params, "flops": m.flops, "blocks": m.structure.to_dicts()}
            for i, m in enumerate(members)]
