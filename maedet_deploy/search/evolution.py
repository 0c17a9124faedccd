"""The evolutionary search loop (MAE-DET, method.md section 3).

Candidates are made in batches from a snapshot of the population. Each batch
is split into a fixed number of shards, and shard `s` of batch `b` draws its
random numbers from its own generator seeded by (seed, b, s). The result is
therefore the same for any number of worker processes, and a resumed search
needs only the population and the batch index to continue exactly where an
uninterrupted run would be.
"""

from __future__ import annotations

import json
import math
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..atomic import write_text
from ..errors import MaedetError, first_line
from ..structure import Block, Structure, compute_cost
from .budgets import Budget, check_seed, first_violation
from .population import Member, Population
from .score import check_alpha, entropy_score
from .space import Mutator, get_space

CHECKPOINT = "checkpoint.json"
CHECKPOINT_FORMAT = "maedet-search-checkpoint/1"


@dataclass(frozen=True)
class SearchSettings:
    image_size: tuple[int, int] = (480, 480)
    iterations: int = 100_000
    population: int = 256
    seed: int = 0
    space: str = "k1kxk1"
    alpha: tuple[float, ...] = (0.0, 0.0, 1.0, 1.0, 6.0)
    fine_after: float = 0.9
    max_channels: int = 2048
    batch: int = 256
    shards: int = 8

    def to_dict(self) -> dict:
        data = asdict(self)
        data["image_size"] = list(self.image_size)
        data["alpha"] = list(self.alpha)
        return data


@dataclass
class Counters:
    candidates: int = 0
    scored: int = 0
    over_budget: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    accepted: int = 0
    seconds: float = 0.0


@dataclass
class SearchState:
    """Everything a resumed search needs (and nothing it can recompute)."""

    settings: SearchSettings
    init: Structure
    population: Population
    batch_index: int = 0
    next_seq: int = 0
    counters: Counters = field(default_factory=Counters)
    improvements: list[dict] = field(default_factory=list)
    # State of on_batch hooks that must survive a resume (the latency guard's measurements).
    extensions: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.counters.candidates >= self.settings.iterations


@dataclass(frozen=True)
class Evaluated:
    """A candidate that may enter the population; `position` is its order in the shard."""

    structure: Structure
    score: float
    params: int
    flops: int
    layers: int
    position: int


class Evaluator:
    """Makes and judges the candidates of one shard; picklable for worker processes."""

    def __init__(self, settings: SearchSettings, init: Structure, budgets: Sequence[Budget]) -> None:
        self.settings = settings
        self.budgets = list(budgets)
        layer_limit = next((b.limit for b in budgets if b.name == "layers"), None)
        self.mutator = Mutator(get_space(settings.space, settings.max_channels), init, settings.image_size,
                               None if layer_limit is None else int(layer_limit))

    def shard(self, parents: Sequence[Structure], known: frozenset | set, rng_seed: int, count: int,
              fine: bool, floor: float) -> tuple[list[Evaluated], dict[str, int]]:
        """Make `count` candidates; return those scoring above `floor` (the full
        population's worst, which only rises during a batch, so nothing else can
        enter) in order, and counts of the rest by reason."""
        rng = random.Random(rng_seed)
        kept: list[Evaluated] = []
        dropped: dict[str, int] = {}
        for _ in range(count):
            child = self.mutator.mutate(parents[rng.randrange(len(parents))], rng, fine)
            reason = "duplicate" if child.key() in known else None
            if reason is None:
                cost = compute_cost(child, self.settings.image_size)
                reason = first_violation(self.budgets, child, cost)
            if reason is None:
                score = entropy_score(child, self.settings.alpha)
                if score > floor:
                    kept.append(Evaluated(child, score, cost.params, cost.flops, cost.layers, len(kept) + sum(dropped.values())))
                    continue
                reason = "below_population"
            dropped[reason] = dropped.get(reason, 0) + 1
        return kept, dropped


def _shard_seed(seed: int, batch_index: int, shard: int) -> int:
    return (seed * 1_000_003 + batch_index) * 64 + shard


def new_state(settings: SearchSettings, init: Structure, budgets: Sequence[Budget]) -> SearchState:
    check_alpha(init, settings.alpha)
    for name in ("iterations", "population"):
        if getattr(settings, name) < 1:
            raise MaedetError(f"must be >= 1, got {getattr(settings, name)}", setting=name)
    get_space(settings.space)
    cost = compute_cost(init, settings.image_size)
    check_seed(budgets, init, cost)
    population = Population(settings.population)
    first = Member(entropy_score(init, settings.alpha), 0, init, cost.params, cost.flops, cost.layers)
    population.offer(first)
    state = SearchState(settings, init, population, next_seq=1)
    state.improvements.append({"candidates": 0, **first.to_dict()})
    return state


def run_search(state: SearchState, budgets: Sequence[Budget], workers: int = 1,
               checkpoint_dir: Path | None = None, checkpoint_every: float = 30.0,
               on_batch: Callable[[SearchState], bool | None] | None = None) -> SearchState:
    """Evolve until `settings.iterations` candidates have been made.

    `on_batch` runs after every batch; it returns True when it changed the
    budgets' state (the latency guard refits its predictor), and the
    evaluator and worker processes are then rebuilt so they judge candidates
    with the new state."""
    settings = state.settings
    evaluator = Evaluator(settings, state.init, budgets)
    pool = _pool(evaluator, workers)
    last_checkpoint = time.monotonic()
    started = time.perf_counter() - state.counters.seconds
    try:
        while not state.done:
            _run_batch(state, evaluator, pool)
            state.counters.seconds = time.perf_counter() - started
            if on_batch and on_batch(state):
                evaluator = Evaluator(settings, state.init, budgets)
                if pool:
                    pool.shutdown()
                    pool = _pool(evaluator, workers)
            if checkpoint_dir and time.monotonic() - last_checkpoint >= checkpoint_every:
                save_checkpoint(checkpoint_dir, state)
                last_checkpoint = time.monotonic()
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if checkpoint_dir:
        save_checkpoint(checkpoint_dir, state)
    return state


def _pool(evaluator: Evaluator, workers: int) -> ProcessPoolExecutor | None:
    return ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(evaluator,)) if workers > 1 else None


def _run_batch(state: SearchState, evaluator: Evaluator, pool: ProcessPoolExecutor | None) -> None:
    settings = state.settings
    counters = state.counters
    population = state.population
    count = min(settings.batch, settings.iterations - counters.candidates)
    fine = counters.candidates >= settings.fine_after * settings.iterations
    floor = population.worst_score() if len(population) >= population.capacity else -math.inf
    sizes = [count // settings.shards + (1 if s < count % settings.shards else 0) for s in range(settings.shards)]
    seeds = [_shard_seed(settings.seed, state.batch_index, s) for s in range(settings.shards)]
    if pool is None:
        parents = [m.structure for m in population.members]
        known = frozenset(m.structure.key() for m in population.members)
        shards = [evaluator.shard(parents, known, seed, size, fine, floor) for seed, size in zip(seeds, sizes) if size]
    else:
        keys = [m.structure.key() for m in population.members]
        futures = [pool.submit(_worker_shard, keys, seed, size, fine, floor) for seed, size in zip(seeds, sizes) if size]
        shards = [f.result() for f in futures]
    best_before = population.best().score
    done = counters.candidates
    for kept, dropped in shards:
        for reason, number in dropped.items():
            if reason == "duplicate":
                counters.duplicates += number
            elif reason == "below_population":
                counters.scored += number
            else:
                counters.over_budget[reason] = counters.over_budget.get(reason, 0) + number
        for item in kept:
            counters.scored += 1
            member = Member(item.score, state.next_seq, item.structure, item.params, item.flops, item.layers)
            state.next_seq += 1
            if population.offer(member):
                counters.accepted += 1
                if member.score > best_before:
                    best_before = member.score
                    state.improvements.append({"candidates": done + item.position + 1, **member.to_dict()})
        done += len(kept) + sum(dropped.values())
    counters.candidates = done
    state.batch_index += 1


_WORKER: Evaluator | None = None


def _init_worker(evaluator: Evaluator) -> None:
    global _WORKER
    _WORKER = evaluator


_PARENTS: dict[tuple, Structure] = {}


def _worker_shard(keys: list[tuple], seed: int, size: int, fine: bool, floor: float):
    """Parents arrive as keys (cheap to send) and are rebuilt once per worker."""
    if len(_PARENTS) > 20_000:
        _PARENTS.clear()
    parents = []
    for key in keys:
        structure = _PARENTS.get(key)
        if structure is None:
            structure = _PARENTS[key] = Structure(tuple(Block(*fields) for fields in key))
        parents.append(structure)
    return _WORKER.shard(parents, frozenset(keys), seed, size, fine, floor)


def save_checkpoint(directory: Path, state: SearchState) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "settings": state.settings.to_dict(),
        "init": state.init.to_dicts(),
        "batch_index": state.batch_index,
        "next_seq": state.next_seq,
        "counters": asdict(state.counters),
        "population": state.population.to_list(),
        "improvements": state.improvements,
        "extensions": state.extensions,
    }
    write_text(Path(directory) / CHECKPOINT, json.dumps(payload))


def load_checkpoint(directory: Path, settings: SearchSettings) -> SearchState:
    """Restore a search; the settings must be those it was started with."""
    path = Path(directory) / CHECKPOINT
    if not path.is_file():
        raise MaedetError(f"no {CHECKPOINT} in {directory}", setting="resume")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("unknown format")
        saved = payload["settings"]
        saved = SearchSettings(**{**saved, "image_size": tuple(saved["image_size"]), "alpha": tuple(saved["alpha"])})
        state = SearchState(saved, Structure.from_dicts(payload["init"]),
                            Population.from_list(saved.population, payload["population"]),
                            int(payload["batch_index"]), int(payload["next_seq"]),
                            Counters(**payload["counters"]), list(payload["improvements"]),
                            dict(payload.get("extensions", {})))
        if not len(state.population):
            raise ValueError("empty population")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, MaedetError) as exc:
        raise MaedetError(f"corrupt checkpoint {path}: {first_line(exc)}", setting="resume") from None
    differing = [k for k, v in settings.to_dict().items() if saved.to_dict()[k] != v and k != "iterations"]
    if differing:
        raise MaedetError(f"the checkpoint was made with different settings ({', '.join(differing)}); "
                          "rerun with the original options or use a new output folder", setting="resume")
    if settings.iterations != saved.iterations:
        state.settings = settings
    return state


def candidates_per_second(state: SearchState) -> float:
    seconds = state.counters.seconds
    return state.counters.candidates / seconds if seconds > 0 else math.inf
