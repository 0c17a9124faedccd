"""Budgets: limits a candidate must meet before it is scored.

A budget reads what it needs from the structure and its analytic cost; the
latency budget (`search.latency`) implements the same protocol with a
predictor, so the evolution never changes when a new kind of budget appears.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from ..errors import MaedetError
from ..structure import Cost, Structure


class Budget(Protocol):
    name: str
    limit: float
    unit: str

    def usage(self, structure: Structure, cost: Cost) -> float: ...


@dataclass(frozen=True)
class CostBudget:
    """A budget on one field of the analytic cost: flops, params or layers."""

    name: str
    limit: float

    @property
    def unit(self) -> str:
        return {"flops": "MACs", "params": "parameters", "layers": "conv layers"}[self.name]

    def usage(self, structure: Structure, cost: Cost) -> float:
        return getattr(cost, self.name)


def cost_budgets(flops: float | None = None, params: float | None = None,
                 layers: int | None = None) -> list[CostBudget]:
    budgets = []
    for name, limit in (("layers", layers), ("params", params), ("flops", flops)):
        if limit is not None:
            if limit <= 0:
                raise MaedetError(f"budget must be positive, got {limit:g}", setting=name)
            budgets.append(CostBudget(name, float(limit)))
    return budgets


def first_violation(budgets: Sequence[Budget], structure: Structure, cost: Cost) -> str | None:
    """Name of the first budget the candidate exceeds, or None (cheapest budgets first)."""
    for budget in budgets:
        if budget.usage(structure, cost) > budget.limit:
            return budget.name
    return None


def check_seed(budgets: Sequence[Budget], structure: Structure, cost: Cost) -> None:
    """The search starts from the seed, so it must fit every budget."""
    for budget in budgets:
        used = budget.usage(structure, cost)
        if used > budget.limit:
            raise MaedetError(
                f"the seed exceeds the {budget.name} budget: {used:,.6g} > {budget.limit:,.6g} {budget.unit} "
                f"(over by {used - budget.limit:,.6g}, {100 * (used / budget.limit - 1):.1f}%); "
                "raise the budget or start from a smaller seed structure (init)")
