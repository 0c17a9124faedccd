"""The paper's detection search recipe, timed, against the reference's measured speed.

Recipe: seed of method.md, FLOPs <= 18.8e9 MACs at 480x480, layers <= 91,
population 256, 100,000 candidates, alpha 0,0,1,1,6. The reference tool
evaluates about 6.7 candidates/s on this 2-core machine (5,000 in 12.5 min).
Run: .venv/bin/python bench/search_speed.py [--seeds 0,1,2] [--workers 2]
"""

import argparse

from maedet_deploy.search.budgets import cost_budgets
from maedet_deploy.search.evolution import SearchSettings, candidates_per_second, new_state, run_search
from maedet_deploy.search.score import entropy_score
from maedet_deploy.structure import compute_cost
from maedet_deploy.zoo import get_structure

REFERENCE_RATE = 5000 / (12.5 * 60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    budgets = cost_budgets(flops=18.8e9, layers=91)
    seed_structure = get_structure("maedet-seed")
    print(f"reference tool: {REFERENCE_RATE:.1f} candidates/s")
    print(f"{'run':<16}{'wall s':>8}{'cand/s':>10}{'x ref':>8}{'best score':>12}{'GFLOPs':>8}{'layers':>7}{'Mparams':>9}")
    scores = []
    runs = [(seed, 1) for seed in map(int, args.seeds.split(","))] + [(int(args.seeds.split(",")[0]), args.workers)]
    for seed, workers in runs:
        settings = SearchSettings(image_size=(480, 480), iterations=args.iterations, seed=seed)
        state = run_search(new_state(settings, seed_structure, budgets), budgets, workers=workers)
        best = state.population.best()
        rate = candidates_per_second(state)
        if workers == 1:
            scores.append(best.score)
        print(f"{f'seed {seed} w{workers}':<16}{state.counters.seconds:>8.1f}{rate:>10,.0f}{rate / REFERENCE_RATE:>8.0f}"
              f"{best.score:>12.2f}{best.flops / 1e9:>8.2f}{best.layers:>7}{best.params / 1e6:>9.2f}")
    for name in ("maedet-m", "resnet50"):
        structure = get_structure(name)
        cost = compute_cost(structure, 480)
        print(f"{name:<16}{'':>8}{'':>10}{'':>8}{entropy_score(structure):>12.2f}{cost.flops / 1e9:>8.2f}"
              f"{cost.layers:>7}{cost.params / 1e6:>9.2f}")
    print(f"best of seeds: {max(scores):.2f}; mean {sum(scores) / len(scores):.2f}; "
          f"ratio to maedet-m {max(scores) / entropy_score(get_structure('maedet-m')):.3f}, "
          f"to resnet50 {max(scores) / entropy_score(get_structure('resnet50')):.3f}")


if __name__ == "__main__":
    main()
