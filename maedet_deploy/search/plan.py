"""The profile plan: what to measure before a latency search, so its predictor fits the networks
the search will meet.

An evolutionary search from the seed only ever meets mutation walks from the
seed, so the plan measures walks: the seed and `walks` networks of 4-40 random
mutations each, every one whole and block by block (each block alone at its
input size). Walks rather than random networks, because blocks add up
differently in the two: on a 2-core CPU the block regression fitted on the
blocks of random networks around the seed over-predicted the blocks of walks by
6% (fitted on walks' blocks: 1%), and on 50 held-out walks the seed + 12 walks
(77 measurements) predicted better (MAPE 2.4%) than the blocks of 24 random
networks and 8 walks with 13 networks whole (184 measurements, 3.5%), with the
predictor as it was before the yardsticks and the channel step.
Seeded, so every search and `profile` with the same arguments ask for the same
measurements.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import MaedetError
from ..structure import Block, Structure
from ..structure.cost import block_inputs
from .space import Mutator, get_space

PLAN_SEED = 0
WALK_STEPS = (4, 40)     # mutations per walk from the seed


@dataclass(frozen=True)
class ProfilePlan:
    """What to measure before a search: blocks at their input sizes and whole networks."""

    blocks: tuple[tuple[Block, int, int], ...]
    networks: tuple[Structure, ...]


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
                 walks: int = 12) -> ProfilePlan:
    """The seed and `walks` mutation walks from it, each measured whole and block by block."""
    if walks < 1:
        raise MaedetError(f"the profile needs >= 1 walk, got {walks}", setting="profile_walks")
    mutator = Mutator(get_space(space, max_channels), seed_structure, image_size)
    networks = (seed_structure, *mutation_walks(mutator, seed_structure, random.Random(PLAN_SEED), walks))
    placed: dict[tuple, tuple[Block, int, int]] = {}
    for structure in networks:
        for block, height, width in block_inputs(structure, image_size):
            placed.setdefault((block.key(), height, width), (block, height, width))
    return ProfilePlan(tuple(placed.values()), networks)
