"""What a search leaves in its output folder, every file written atomically."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..atomic import atomic_path, write_text
from ..structure import compute_cost, structure_to_json, structure_to_reference_text
from .budgets import Budget
from .evolution import SearchState, candidates_per_second


@dataclass(frozen=True)
class BudgetUse:
    """How much of one budget the best member uses."""

    name: str
    limit: float
    used: float
    unit: str

    @property
    def fraction(self) -> float:
        return self.used / self.limit

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "limit": self.limit, "used": self.used, "unit": self.unit,
                "fraction": self.fraction}


def budget_usage(budgets: Sequence[Budget], state: SearchState) -> list[BudgetUse]:
    best = state.population.best()
    cost = compute_cost(best.structure, state.settings.image_size)
    return [BudgetUse(budget.name, budget.limit, budget.usage(best.structure, cost), budget.unit)
            for budget in budgets]


def search_report(state: SearchState, budgets: Sequence[Budget], extra: dict | None = None) -> dict[str, Any]:
    best = state.population.best()
    return {
        "settings": state.settings.to_dict(),
        "init": state.init.to_dicts(),
        "best": best.to_dict(),
        "budgets": [use.to_dict() for use in budget_usage(budgets, state)],
        "candidates": state.counters.candidates,
        "counters": asdict(state.counters),
        "candidates_per_second": candidates_per_second(state),
        "wall_seconds": state.counters.seconds,
        "improvements": len(state.improvements),
        **(extra or {}),
    }


def write_outputs(out: Path, state: SearchState, budgets: Sequence[Budget], top_k: int,
                  extra: dict | None = None, winner: bool = True) -> dict[str, Any]:
    """Every result file; without a `winner` (no candidate verified within a measured budget) the
    best_structure files are left out, and removed if an earlier run left them, so they never
    point at a structure that does not fit."""
    out = Path(out)
    best = state.population.best()
    if winner:
        write_text(out / "best_structure.json", structure_to_json(best.structure, name="search-best",
                                                                  score=best.score, params=best.params,
                                                                  flops=best.flops, layers=best.layers))
        write_text(out / "best_structure.txt", structure_to_reference_text(best.structure))
    else:
        for name in ("best_structure.json", "best_structure.txt"):
            (out / name).unlink(missing_ok=True)
    top = [{"rank": rank, **member.to_dict()} for rank, member in enumerate(state.population.top(top_k), 1)]
    write_text(out / "top_k.json", json.dumps(top, indent=1) + "\n")
    write_text(out / "search.jsonl", "".join(json.dumps(item) + "\n" for item in state.improvements))
    report = search_report(state, budgets, extra)
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    plot_progress(out / "progress.png", state)
    return report


def plot_progress(path: Path, state: SearchState) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [item["candidates"] for item in state.improvements] + [state.counters.candidates]
    ys = [item["score"] for item in state.improvements] + [state.improvements[-1]["score"]]
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=120)
    axis.step(xs, ys, where="post")
    axis.set_xlabel("candidates evaluated")
    axis.set_ylabel("best entropy score")
    axis.set_title(f"search progress (seed {state.settings.seed})")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def write_pareto(out: Path, rows: Sequence[dict[str, Any]], limit_ms: float, title: str) -> None:
    """pareto.json (every final member: score, predicted and measured latency, front flag) and
    pareto.png (score vs latency; measured members filled, predicted-only hollow)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    write_text(out / "pareto.json", json.dumps({"limit_ms": limit_ms, "members": list(rows)}, indent=1) + "\n")
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    guessed = [r for r in rows if r["measured_ms"] is None]
    measured = [r for r in rows if r["measured_ms"] is not None]
    front = sorted((r for r in rows if r["on_front"]), key=lambda r: r["measured_ms"] or r["predicted_ms"])
    axis.scatter([r["predicted_ms"] for r in guessed], [r["score"] for r in guessed], s=12, facecolors="none",
                 edgecolors="grey", label="predicted")
    axis.scatter([r["measured_ms"] for r in measured], [r["score"] for r in measured], s=18, color="tab:blue",
                 label="measured")
    axis.step([r["measured_ms"] or r["predicted_ms"] for r in front], [r["score"] for r in front], where="post",
              color="tab:blue", alpha=0.6, label="Pareto front")
    axis.axvline(limit_ms, color="tab:red", linestyle="--", label=f"budget {limit_ms:g} ms")
    axis.set_xlabel("latency (ms)")
    axis.set_ylabel("entropy score")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(out / "pareto.png") as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
