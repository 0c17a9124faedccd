"""How well the latency predictor predicts networks it never saw, measured whole on this machine.

Profiles the space around the seed (the same plan a search uses), then draws
held-out candidates by random mutation walks from the seed (what a search
meets; the profile's own whole networks are walks too, from another random
stream, and are excluded), measures each whole with the product's measurer and
compares with the prediction. Then re-measures the held-out networks into a
second, fresh cache: the measurement's own noise floor. Targets: MAPE <= 5%,
>= 95% within +-10%.

    .venv/bin/python bench/latency_predictor.py --image-size 224
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from maedet_deploy.search.latency import LatencySession, error_summary, mutation_walks
from maedet_deploy.search.measurer import LatencyTarget, open_measurer
from maedet_deploy.search.space import Mutator, get_space
from maedet_deploy.structure import compute_cost
from maedet_deploy.structure.cost import as_hw
from maedet_deploy.zoo import resolve_structure


def held_out(space: str, seed, image_size, count: int, exclude: set, rng_seed: int) -> list:
    """Distinct candidates from mutation walks of the seed, drawn apart from the profile's (another
    random stream, and none of the profile's networks)."""
    return mutation_walks(Mutator(get_space(space), seed, image_size), seed, random.Random(rng_seed), count, exclude)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", default="224")
    parser.add_argument("--scope", default="backbone", choices=("backbone", "detector"))
    parser.add_argument("--space", default="k1kxk1")
    parser.add_argument("--init", default="maedet-seed")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=50, help="held-out networks re-measured for the noise floor")
    parser.add_argument("--cache", default=None, help="latency cache (default: a fresh temporary file)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args()

    size = as_hw(int(args.image_size) if "x" not in args.image_size else tuple(map(int, args.image_size.split("x"))))
    seed = resolve_structure(args.init)
    target = LatencyTarget(threads=args.threads)
    work = Path(tempfile.mkdtemp(prefix="latency-bench-"))
    cache = args.cache or str(work / "latency.sqlite")
    measurer = open_measurer(target, cache)
    session = LatencySession(measurer, args.space, seed, size, args.scope)
    started = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int, item: str) -> None:
        if time.perf_counter() - last[0] > 10 or done == total:
            last[0] = time.perf_counter()
            print(f"  profile {done}/{total} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    predictor = session.prepare(progress)
    profile_s = time.perf_counter() - started
    profile_counters = measurer.counters.to_dict()
    fit = session.fit_report(predictor)

    candidates = held_out(args.space, seed, size, args.candidates, {s.key() for s in session.plan.networks}, args.seed)
    started = time.perf_counter()
    predicted = [predictor.predicted(s) for s in candidates]
    predict_s = time.perf_counter() - started
    started = time.perf_counter()
    measured = measurer.networks(candidates, size, args.scope)
    measure_s = time.perf_counter() - started
    errors = [p / m - 1 for p, m in zip(predicted, measured)]
    raw_errors = [predictor.raw_ms(s) / m - 1 for s, m in zip(candidates, measured)]
    flops = [compute_cost(s, size).flops for s in candidates]

    second = open_measurer(target, str(work / "repeat.sqlite"))
    repeat = candidates[:args.repeat]
    again = second.networks(repeat, size, args.scope)
    noise = [b / a - 1 for a, b in zip(measured, again)]
    second.close()
    measurer.close()

    result = {
        "device": target.to_dict(), "image_size": list(size), "scope": args.scope, "space": args.space,
        "profile": {"seconds": round(profile_s, 1), **profile_counters, **fit},
        "held_out": {"count": len(candidates), "measure_s": round(measure_s, 1),
                     "predict_us_per_candidate": 1e6 * predict_s / len(candidates),
                     "measured_ms_range": [min(measured), max(measured)],
                     "gflops_range": [min(flops) / 1e9, max(flops) / 1e9],
                     "predictor": error_summary(errors), "uncorrected_sum_of_blocks": error_summary(raw_errors),
                     "bias_pct": 100 * sum(errors) / len(errors)},
        "measurement_repeat": error_summary(noise),
    }
    summary = result["held_out"]["predictor"]
    print(json.dumps(result, indent=1))
    print(f"\nheld-out {len(candidates)} networks at {size[0]}x{size[1]} ({args.scope}, {target.key()}): "
          f"MAPE {summary['mape_pct']:.2f}%, within +-10% {100 * summary['within_10pct']:.0f}%, "
          f"worst {summary['max_abs_pct']:.1f}%; measurement repeat MAPE "
          f"{result['measurement_repeat']['mape_pct']:.2f}%; profile {profile_s:.0f} s, held-out measuring {measure_s:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
