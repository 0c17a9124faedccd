"""Cost-model and score throughput (structures per second), cold and warm caches.

Cold: every structure is new and the per-block caches are cleared first, so this
is the raw arithmetic. Warm: the same structures again, as search sees them.
Run: .venv/bin/python bench/cost_throughput.py
"""

import random
import time

from maedet_deploy.search.score import block_log_std, entropy_score
from maedet_deploy.search.space import Mutator, get_space
from maedet_deploy.structure import compute_cost
from maedet_deploy.structure.cost import block_cost
from maedet_deploy.zoo import get_structure

COUNT = 20_000


def structures(count: int) -> list:
    seed = get_structure("maedet-seed")
    mutator = Mutator(get_space("k1kxk1"), seed, 480)
    rng = random.Random(0)
    out, current = [], seed
    while len(out) < count:
        current = mutator.mutate(current, rng)
        out.append(current)
    return out


def rate(function, items) -> float:
    start = time.perf_counter()
    for item in items:
        function(item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    items = structures(COUNT)
    distinct = len({s.key() for s in items})
    block_cost.cache_clear()
    block_log_std.cache_clear()
    cold_cost = rate(lambda s: compute_cost(s, 480), items)
    cold_score = rate(entropy_score, items)
    warm_cost = rate(lambda s: compute_cost(s, 480), items)
    warm_score = rate(entropy_score, items)
    uncached_cost = rate(lambda s: (block_cost.cache_clear(), compute_cost(s, 480)), items[:5000])
    print(f"{COUNT} structures ({distinct} distinct), image 480x480")
    print(f"cost model  cold {cold_cost:10,.0f}/s   warm {warm_cost:10,.0f}/s   no cache {uncached_cost:10,.0f}/s")
    print(f"score       cold {cold_score:10,.0f}/s   warm {warm_score:10,.0f}/s")


if __name__ == "__main__":
    main()
