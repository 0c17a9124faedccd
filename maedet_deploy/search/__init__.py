"""Zero-shot search: the entropy score, the space, budgets, the evolution, and measured latency.

The public entry points, what the CLI and the pipeline use:
- a search: `SearchJob` (with `SearchSettings`, `cost_budgets`, `LatencySettings`,
  `LatencyTarget`, `TimingSettings`, `MeasureLimits`) -> `run_search_job` -> `SearchOutcome`
  (with the typed `LatencyOutcome` when a latency budget was set);
- a latency profile: `profile_latency` -> `ProfileOutcome`;
- measuring: `open_measurer` -> `Measurer` (cache first, measured where missing, each measurement
  committed as it arrives); `measure_window` measures requests in any process, and an
  `Executor` runs windows elsewhere: `open_executor(farm, device)` gives the in-process one
  (the default) or a Ray farm's (`search.farm`).
"""

from .budgets import Budget, CostBudget, cost_budgets
from .evolution import SearchSettings, SearchState
from .job import ProfileOutcome, SearchJob, SearchOutcome, profile_latency, run_search_job
from .latency import SCOPES, LatencyOutcome, LatencySettings
from .latency_cache import Entry, LatencyCache
from .measurer import Executor, InProcessExecutor, MeasureCounters, Measurer, open_executor, open_measurer
from .outputs import BudgetUse, budget_usage
from .requests import Request, block_item, block_requests, network_item, network_requests
from .score import DEFAULT_ALPHA, parse_alpha
from .session import ErrorSummary
from .space import SPACES
from .target import TARGET_PRECISIONS, LatencyTarget, MeasureLimits, TimingSettings
from .verify import Verification, VerifiedCandidate
from .window import measure_window

__all__ = [
    "Budget", "BudgetUse", "CostBudget", "DEFAULT_ALPHA", "Entry", "ErrorSummary", "Executor", "InProcessExecutor",
    "LatencyCache", "LatencyOutcome", "LatencySettings", "LatencyTarget", "MeasureCounters", "MeasureLimits",
    "Measurer", "ProfileOutcome", "Request", "SCOPES", "SPACES", "SearchJob", "SearchOutcome", "SearchSettings",
    "SearchState", "TARGET_PRECISIONS", "TimingSettings", "Verification", "VerifiedCandidate", "block_item",
    "block_requests", "budget_usage", "cost_budgets", "measure_window", "network_item", "network_requests",
    "open_executor", "open_measurer", "parse_alpha", "profile_latency", "run_search_job",
]
