"""Hardware-aware search: latency measured on the target, predicted in between, verified at the end.

Measuring (`measurer`): a candidate, or one block at its input size, is
exported to ONNX (random weights) and timed with the product's one timing
loop on the chosen backend, in short visits spread over the batch being
measured, keeping the fastest quiet one (see `measurer` for why). A
measurement that never got quiet visits is marked contended, kept (it errs on
the slow, safe side) but left out of every fit. Every measurement goes to the
SQLite cache (`latency_cache`), keyed by device fingerprint, target and timing
protocol, and is reused by later searches and other processes.

Predicting (`predictor`): the profile plan (`profile_plan`) is a fixed,
seeded sample of blocks and whole networks from the space around the seed;
measured once (by `maedet-deploy profile`, or on demand by the first
search), it fits the block regression and the whole-network correction.

Staying honest (`LatencyGuard`): candidates pass the budget on the predicted
latency raised by a safety margin (the fitted networks' 90th-percentile
under-prediction); every N batches the best members are measured whole, the
correction and margin are refitted, and members now over the budget leave the
population. At the end the top candidates are measured whole
and the winner is the best-scoring one whose measured latency fits
(`verify_top`). A search uses only the plan and its own measurements (looked
up in the cache, measured when missing), never other searches' results, so
the same seed and cache give the same search, and a second run measures
nothing new.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from ..errors import MaedetError
from ..structure import Block, Cost, Structure, compute_cost
from ..structure.cost import as_hw
from .measurer import (LatencyTarget, Measurer, Progress, TimingSettings, block_item, block_requests,
                       network_item, network_requests, open_measurer)
from .population import Member, Population
from .predictor import LatencyPredictor, block_inputs, build_predictor, cross_validated_errors
from .score import entropy_score
from .space import Mutator, get_space, round8

SCOPES = ("backbone", "detector")


# ---- the profile plan ------------------------------------------------------------------------------

PLAN_SEED = 0
PLAN_SPREAD = 2.0        # channels sampled within [seed / spread, seed * spread] per position
PLAN_DEPTHS = (1, 1, 2, 3)
WALK_STEPS = (4, 40)     # mutations per walk from the seed


@dataclass(frozen=True)
class ProfilePlan:
    """What to measure before a search: blocks at their input sizes and whole networks."""

    blocks: tuple[tuple[Block, int, int], ...]
    networks: tuple[Structure, ...]


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high))) if high > low else low


def random_network(rng: random.Random, seed_structure: Structure, mutator: Mutator) -> Structure:
    """A random network of the space with the seed's strides and block count, channels within
    PLAN_SPREAD of the seed's at every position, non-decreasing as the space keeps them."""
    space = mutator.space
    stem = seed_structure.blocks[0]
    cap = space.max_channels
    stem_out = min(cap, round8(_log_uniform(rng, stem.cout / PLAN_SPREAD, stem.cout * PLAN_SPREAD)))
    blocks = [replace(stem, cout=stem_out)]
    for index, seed_block in enumerate(seed_structure.blocks[1:], 1):
        cin = blocks[-1].cout
        low = max(cin, seed_block.cout / PLAN_SPREAD)
        high = max(low, min(4 * cin, cap, seed_block.cout * PLAN_SPREAD))
        cout = max(cin, min(4 * cin, cap, round8(_log_uniform(rng, low, high))))
        if space.expansion_ratios:
            btn = round8(cout * rng.choice(space.expansion_ratios))
        else:
            btn = min(cout, max(8, round8(_log_uniform(rng, max(8, cout / 10), cout))))
        depth = min(rng.choice(PLAN_DEPTHS), space.first_block_max_depth if index == 1 else 99)
        kernel = min(rng.choice(space.kernels), mutator.kernel_caps[index])
        blocks.append(Block(seed_block.kind, cin, cout, seed_block.stride, kernel, depth, btn))
    return Structure(tuple(blocks))


def mutation_walks(mutator: Mutator, start: Structure, rng: random.Random, count: int,
                   exclude: set[tuple] = frozenset()) -> list[Structure]:
    """`count` distinct networks, each WALK_STEPS random mutations from `start`: the neighbourhood
    an evolutionary search from `start` explores (fewer if the space is too small to hold them)."""
    walks, seen = [], set(exclude) | {start.key()}
    for _ in range(50 * count):
        if len(walks) == count:
            break
        structure = start
        for _ in range(rng.randint(*WALK_STEPS)):
            structure = mutator.mutate(structure, rng)
        if structure.key() not in seen:
            seen.add(structure.key())
            walks.append(structure)
    return walks


def profile_plan(space: str, seed_structure: Structure, image_size: tuple[int, int], max_channels: int = 2048,
                 networks: int = 24, whole: int = 8) -> ProfilePlan:
    """The blocks of the seed, of `networks` random networks around it and of `whole` mutation
    walks from it (every block at its input size); measured whole: the seed, the walks and
    `whole // 2` of the random networks.

    Random networks spread the block regression over the space; the walks are what the search
    meets, so most of the whole-network correction's data are networks like the ones it will
    judge (random networks add up from their blocks differently: on a 2-core CPU their block
    sums were 1% under their measured latency, the walks' 4% over), and the random ones give it
    the range to extrapolate from. Seeded, so every search and `profile` with the same arguments
    ask for the same measurements."""
    if networks < 1 or whole < 1:
        raise MaedetError(f"the profile needs >= 1 random networks and >= 1 whole ones, got {networks} and {whole}")
    mutator = Mutator(get_space(space, max_channels), seed_structure, image_size)
    rng = random.Random(PLAN_SEED)
    sampled = [random_network(rng, seed_structure, mutator) for _ in range(networks)]
    walks = mutation_walks(mutator, seed_structure, rng, whole)
    placed: dict[tuple, tuple[Block, int, int]] = {}
    for structure in (seed_structure, *walks, *sampled):
        for block, height, width in block_inputs(structure, image_size):
            placed.setdefault((block.key(), height, width), (block, height, width))
    return ProfilePlan(tuple(placed.values()), (seed_structure, *walks, *sampled[:max(1, whole // 2)]))


# ---- a search session: measurer, plan, predictor ----------------------------------------------------


@dataclass
class LatencySettings:
    limit_ms: float
    target: LatencyTarget = field(default_factory=LatencyTarget)
    scope: str = "backbone"
    verify_top: int = 3
    check_every: int = 40        # batches between guard checks
    check_top: int = 2           # members measured whole per check
    cache_path: str | None = None
    plan_networks: int = 24
    plan_whole: int = 8

    def __post_init__(self) -> None:
        if not self.limit_ms > 0:
            raise MaedetError(f"--latency-ms must be positive, got {self.limit_ms:g}")
        if self.scope not in SCOPES:
            raise MaedetError(f"unknown latency scope {self.scope!r} (choose from {', '.join(SCOPES)})")
        if self.verify_top < 1 or self.check_every < 1 or self.check_top < 0:
            raise MaedetError("--verify-top and --latency-check-every must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {"limit_ms": self.limit_ms, "target": self.target.key(), "scope": self.scope,
                "verify_top": self.verify_top, "check_every": self.check_every, "check_top": self.check_top,
                "plan_networks": self.plan_networks, "plan_whole": self.plan_whole}


class LatencySession:
    """The measurements and predictor of one search (or one `profile`) at one image size and scope."""

    def __init__(self, measurer: Measurer, space: str, init: Structure, image_size: tuple[int, int], scope: str,
                 max_channels: int = 2048, plan_networks: int = 24, plan_whole: int = 8) -> None:
        self.measurer = measurer
        self.space = space
        self.init = init
        self.image_size = as_hw(image_size)
        self.scope = scope
        self.plan = profile_plan(space, init, self.image_size, max_channels, plan_networks, plan_whole)
        self.plan_networks: list[tuple[Structure, float]] = []
        self.extra_networks: list[tuple[Structure, float]] = []   # measured by this search, in order
        self.predicted_before: dict[tuple, float] = {}   # what the predictor said before each was measured
        self.base: LatencyPredictor | None = None
        self.fit_s = 0.0
        self.block_errors: list[float] = []

    def seed_ms(self) -> float:
        """The seed measured whole: the first measurement, so a backend that cannot run fails fast."""
        return self.measurer.networks([self.init], self.image_size, self.scope)[0]

    def prepare(self, progress: Progress | None = None) -> LatencyPredictor:
        """Measure what the plan asks (cached entries are reused) and fit the predictor. Blocks and
        networks are one batch, so the correction is fitted on networks timed alongside the blocks."""
        blocks = self.plan.blocks
        measured = self.measurer.measure(block_requests(blocks) + network_requests(self.plan.networks,
                                                                                   self.image_size, self.scope),
                                         progress)
        block_ms, network_ms = measured[:len(blocks)], measured[len(blocks):]
        start = time.perf_counter()
        # Blocks timed while other programs held the CPU are left to the regression, while
        # enough quiet ones remain to fit it.
        samples = [(b, h, w, ms) for (b, h, w), ms in zip(blocks, block_ms)]
        quiet = [sample for sample in samples if block_item(*sample[:3]) not in self.measurer.contended]
        samples = quiet if len(quiet) >= len(samples) // 2 else samples
        self.plan_networks = list(zip(self.plan.networks, network_ms))
        self.base = build_predictor(self.image_size, self.scope, self.measurer.target.batch, samples, [])
        self.block_errors = cross_validated_errors(samples, self.measurer.target.batch)
        self.fit_s += time.perf_counter() - start
        return self.predictor()

    def is_contended(self, structure: Structure) -> bool:
        return network_item(structure, self.scope, self.image_size) in self.measurer.contended

    def predictor(self) -> LatencyPredictor:
        """The block regression with the correction fitted on every network measured so far, except
        contended ones (too slow by an unknown amount). Those still count as measured: a budget
        check on them errs on the safe side."""
        start = time.perf_counter()
        networks = self.plan_networks + self.extra_networks
        predictor = self.base.with_calibration([(s, ms) for s, ms in networks if not self.is_contended(s)])
        predictor.measured_networks.update((s.key(), ms) for s, ms in networks)
        self.fit_s += time.perf_counter() - start
        return predictor

    def measure(self, structures: Sequence[Structure], predictor: LatencyPredictor | None = None) -> list[float]:
        """Measure networks whole (cache first) and add them to the correction's data; `predictor`'s
        numbers for the new ones are kept, to judge it on networks it had not seen."""
        known = {s.key(): ms for s, ms in self.plan_networks + self.extra_networks}
        fresh = [s for s in dict.fromkeys(structures) if s.key() not in known]
        for structure, ms in zip(fresh, self.measurer.networks(fresh, self.image_size, self.scope)):
            self.extra_networks.append((structure, ms))
            known[structure.key()] = ms
            if predictor is not None:
                self.predicted_before[structure.key()] = predictor.predicted(structure)
        return [known[s.key()] for s in structures]

    def fit_report(self, predictor: LatencyPredictor) -> dict[str, Any]:
        """How well the predictor explains what it was fitted on: blocks (5-fold cross-validated)
        and networks (the correction's residuals)."""
        networks = [(s, ms) for s, ms in self.plan_networks + self.extra_networks if not self.is_contended(s)]
        errors = [predictor.predicted(s) / ms - 1 for s, ms in networks]
        return {"blocks": len(self.block_errors), "block_cv": error_summary(self.block_errors),
                "networks": len(networks), "network_fit": error_summary(errors),
                "contended_left_out": len(self.measurer.contended)}


def error_summary(errors: Sequence[float]) -> dict[str, float | int | None]:
    """MAPE (%), the share within +-10% and the worst error (%), of relative errors."""
    if not errors:
        return {"count": 0, "mape_pct": None, "within_10pct": None, "max_abs_pct": None}
    absolute = [abs(e) for e in errors]
    return {"count": len(errors), "mape_pct": 100 * sum(absolute) / len(absolute),
            "within_10pct": sum(a <= 0.10 for a in absolute) / len(absolute), "max_abs_pct": 100 * max(absolute)}


# ---- the budget and the guard -------------------------------------------------------------------


class LatencyBudget:
    """The latency budget as a `budgets.Budget`: usage is the predictor's number (the measured one
    for networks measured whole). Counts its own calls and time (in this process)."""

    name = "latency"
    unit = "ms"

    def __init__(self, limit: float, predictor: LatencyPredictor) -> None:
        self.limit = float(limit)
        self.predictor = predictor
        self.calls = 0
        self.seconds = 0.0

    def usage(self, structure: Structure, cost: Cost) -> float:
        start = time.perf_counter()
        value = self.predictor.predict(structure, cost)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return value


def _member(structure: Structure, settings, seq: int) -> Member:
    cost = compute_cost(structure, settings.image_size)
    return Member(entropy_score(structure, settings.alpha), seq, structure, cost.params, cost.flops, cost.layers)


def recheck_population(state, budget: LatencyBudget) -> int:
    """Drop members the current predictor puts over the budget; returns how many. An emptied
    population restarts from the seed, which was measured within the budget."""
    kept = [m for m in state.population.members if budget.predictor.predict(m.structure) <= budget.limit]
    dropped = len(state.population) - len(kept)
    if dropped:
        population = Population(state.population.capacity)
        for member in kept or [_member(state.init, state.settings, 0)]:
            population.offer(member)
        state.population = population
    return dropped


class LatencyGuard:
    """The evolution's on_batch hook: every `check_every` batches, measure the best members whole,
    refit the correction, drop members now over budget. Its history lives in the search state,
    so a resumed search replays it from the cache."""

    def __init__(self, session: LatencySession, budget: LatencyBudget, settings: LatencySettings) -> None:
        self.session = session
        self.budget = budget
        self.settings = settings
        self.checks: list[dict[str, Any]] = []
        self.seconds = 0.0

    def restore(self, state) -> None:
        """Replay a resumed search's checks (measurements come back from the cache)."""
        saved = state.extensions.get("latency", {})
        if saved.get("settings", self.settings.to_dict()) != self.settings.to_dict():
            raise MaedetError("--resume: the checkpoint was made with different latency settings; "
                              "rerun with the original options or use a new --out")
        for check in saved.get("checks", []):
            self.session.measure([Structure.from_dicts(blocks) for blocks in check["measured"]])
            self.checks.append(check)
        self.budget.predictor = self.session.predictor()

    def __call__(self, state) -> bool:
        if state.batch_index % self.settings.check_every or not self.settings.check_top:
            return False
        top = [m.structure for m in state.population.top(self.settings.check_top)]
        structures = [s for s in top if self.budget.predictor.measured(s) is None]
        if not structures:
            return False
        start = time.perf_counter()
        predicted = [self.budget.predictor.predicted(s) for s in structures]
        measured = self.session.measure(structures, self.budget.predictor)
        self.budget.predictor = self.session.predictor()
        dropped = recheck_population(state, self.budget)
        self.checks.append({"batch": state.batch_index, "candidates": state.counters.candidates,
                            "measured": [s.to_dicts() for s in structures], "predicted_ms": predicted,
                            "measured_ms": measured, "dropped": dropped,
                            "correction": list(self.budget.predictor.calibration)})
        state.extensions["latency"] = {"settings": self.settings.to_dict(), "checks": self.checks}
        self.seconds += time.perf_counter() - start
        return True


# ---- the end: verification and the Pareto front -------------------------------------------------


@dataclass
class Verification:
    rows: list[dict[str, Any]]
    winner: dict[str, Any] | None

    def closest(self) -> dict[str, Any]:
        return min(self.rows, key=lambda row: row["measured_ms"])


def verify_top(state, budget: LatencyBudget, session: LatencySession, top: int) -> Verification:
    """Measure the `top` best members whole; those over the budget leave the population, so its
    best member is the winner: the best-scoring candidate whose measured latency fits.

    Each row's `predicted_ms` is what the predictor said before the network was first measured
    (`in_sample` marks the profile's own networks, which the correction was fitted on)."""
    members = state.population.top(top)
    measured = session.measure([m.structure for m in members], budget.predictor)
    budget.predictor = session.predictor()
    rows = []
    for rank, (member, ms) in enumerate(zip(members, measured), 1):
        before = session.predicted_before.get(member.structure.key())
        predicted = before if before is not None else budget.predictor.predicted(member.structure)
        rows.append({"rank": rank, "score": member.score, "predicted_ms": predicted, "measured_ms": ms,
                     "error_pct": 100 * (predicted / ms - 1), "in_sample": before is None,
                     "contended": session.is_contended(member.structure),
                     "within_budget": ms <= budget.limit, "blocks": member.structure.to_dicts()})
    fitting = [row for row in rows if row["within_budget"]]
    if not fitting:
        return Verification(rows, None)
    recheck_population(state, budget)
    return Verification(rows, fitting[0])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (score, latency) points no other point beats on both (higher score, lower latency)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front, best = [], -math.inf
    for index in order:
        if points[index][0] > best:
            front.append(index)
            best = points[index][0]
    return front


def pareto(state, budget: LatencyBudget, session: LatencySession, limit: int = 10) -> list[dict[str, Any]]:
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
             "on_front": i in front, "within_budget": measured.get(i, predicted[i]) <= budget.limit,
             "params": m.params, "flops": m.flops, "blocks": m.structure.to_dicts()}
            for i, m in enumerate(members)]


# ---- one latency-budgeted search, start to finish ---------------------------------------------------


class LatencyRun:
    """What `search --latency-ms` adds around the evolution: the seed check and the profile
    before, the budget and the guard during, verification and the Pareto front after."""

    def __init__(self, settings: LatencySettings, image_size: tuple[int, int], space: str, init: Structure,
                 max_channels: int = 2048, timing: TimingSettings | None = None) -> None:
        self.settings = settings
        self.measurer = open_measurer(settings.target, settings.cache_path, timing)
        self.session = LatencySession(self.measurer, space, init, image_size, settings.scope, max_channels,
                                      settings.plan_networks, settings.plan_whole)
        self.seed_ms: float | None = None
        self.budget: LatencyBudget | None = None
        self.guard: LatencyGuard | None = None
        self.profile_s = 0.0

    def where(self) -> str:
        size = self.session.image_size
        return f"{self.settings.target.key()}, {self.settings.scope} at {size[0]}x{size[1]}"

    def prepare(self, progress: Progress | None = None) -> LatencyBudget:
        """Measure the seed (first: an unusable backend fails here), then the profile plan."""
        start = time.perf_counter()
        self.seed_ms = self.session.seed_ms()
        if self.seed_ms > self.settings.limit_ms:
            raise MaedetError(f"the seed's measured latency {self.seed_ms:.3f} ms exceeds the --latency-ms budget "
                              f"{self.settings.limit_ms:g} ms ({self.where()}); raise the budget or start from a "
                              "smaller --init")
        predictor = self.session.prepare(progress)
        self.profile_s = time.perf_counter() - start
        self.budget = LatencyBudget(self.settings.limit_ms, predictor)
        self.guard = LatencyGuard(self.session, self.budget, self.settings)
        return self.budget

    def finish(self, state, search_s: float, workers: int = 1,
               pareto_limit: int = 10) -> tuple[Verification, list[dict], dict]:
        """Verify the top candidates, measure the Pareto front; returns both and the report section.
        `search_s` is the wall time of the evolution (run_search), split here into scoring,
        predicting and the guard's measuring."""
        start = time.perf_counter()
        measuring_before = self.measurer.counters.seconds
        verification = verify_top(state, self.budget, self.session, self.settings.verify_top)
        verify_s = time.perf_counter() - start
        start = time.perf_counter()
        front = pareto(state, self.budget, self.session, pareto_limit)
        pareto_s = time.perf_counter() - start
        finish_measuring = self.measurer.counters.seconds - measuring_before
        verified = [row for row in verification.rows if not row["in_sample"] and not row["contended"]]
        predicting = self.budget.seconds if workers == 1 else None
        counters = self.measurer.counters
        report = {
            "settings": self.settings.to_dict(),
            "device": {"fingerprint_id": self.measurer.cache.device, **_fingerprint()},
            "cache": str(self.measurer.cache.path),
            "cache_target": self.measurer.cache.target,
            "seed_measured_ms": self.seed_ms,
            "status": "ok" if verification.winner else "no verified candidate within the budget",
            "winner": None if verification.winner is None else
            {k: verification.winner[k] for k in ("rank", "score", "predicted_ms", "measured_ms", "error_pct")},
            "verified": verification.rows,
            "predictor": {"verified_out_of_sample": error_summary([row["error_pct"] / 100 for row in verified]),
                          "guard_checks": error_summary([p / m - 1 for check in self.guard.checks
                                                         for p, m, s in zip(check["predicted_ms"], check["measured_ms"],
                                                                            check["measured"])
                                                         if not self.session.is_contended(Structure.from_dicts(s))]),
                          **self.session.fit_report(self.budget.predictor), "model": self.budget.predictor.to_dict()},
            "guard": {"checks": len(self.guard.checks), "measured": sum(len(c["measured"]) for c in self.guard.checks),
                      "dropped": sum(c["dropped"] for c in self.guard.checks)},
            "measurements": counters.to_dict(),
            "time_s": {
                "profile": round(self.profile_s, 3),
                "search": round(search_s, 3),
                "scoring": round(search_s - self.guard.seconds - (predicting or 0.0), 3),
                "predicting": None if predicting is None else round(predicting, 4),
                "predicting_note": None if predicting is not None else "in worker processes, not timed",
                "guard": round(self.guard.seconds, 3),
                "verify": round(verify_s, 3),
                "pareto": round(pareto_s, 3),
                "measuring": round(counters.seconds, 3),
                "measuring_after_search": round(finish_measuring, 3),
                "fitting": round(self.session.fit_s, 3),
            },
            "predictions": self.budget.calls,
            "pareto": {"members": len(front), "front": sum(r["on_front"] for r in front),
                       "measured": sum(r["measured_ms"] is not None for r in front)},
        }
        return verification, front, report

    def close(self) -> None:
        self.measurer.close()


def _fingerprint() -> dict[str, Any]:
    from ..backends import device_fingerprint
    return device_fingerprint()
