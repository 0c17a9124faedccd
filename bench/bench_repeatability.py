"""Is one bench result repeatable? Bench the same model twice (fresh session each time) and
check whether the two medians agree within the noise each run reports (its 95% median interval,
which with rounds, as `maedet-deploy bench` runs by default, also spans the round medians).

Default model: the PaddleOCR text detector shipped by rapidocr-onnxruntime (a real third-party
model) at 1x3x640x640. Search trusts a single measurement per candidate; this says how far to.

Run: .venv/bin/python bench/bench_repeatability.py [--model m.onnx --shape x:1x3x640x640]
     [--duration 3] [--threads N] [--pairs 3] [--rounds 3]
"""

import argparse
import importlib.util
import os
from pathlib import Path

from maedet_deploy.backends import fingerprint_id, load_runner, parse_shapes
from maedet_deploy.bench import run_bench


def default_model() -> Path:
    root = importlib.util.find_spec("rapidocr_onnxruntime").submodule_search_locations[0]
    return Path(root) / "models" / "ch_PP-OCRv4_det_infer.onnx"


def one_run(model: Path, shapes: dict, threads: int | None, duration: float, rounds: int):
    """One `maedet-deploy bench` run: a fresh session, the CLI's warm-up and rounds."""
    runner = load_runner(model, intra_threads=threads)
    stats = run_bench({"onnxruntime": runner}, str(model), shapes, rounds=rounds, warmup=0.5,
                      duration=duration).rows[0].stats
    runner.close()
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--shape", action="append", default=None)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=3, help="how many times to repeat the two-run check")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (the bench command's default)")
    args = parser.parse_args()
    model = args.model or default_model()
    shapes = parse_shapes(args.shape) if args.shape else ({"x": (1, 3, 640, 640)} if args.model is None else {})
    print(f"{model.name} {shapes}, {args.duration:g} s per run, device {fingerprint_id()}, "
          f"1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    agreed = 0
    for pair in range(args.pairs):
        first, second = (one_run(model, shapes, args.threads, args.duration, args.rounds) for _ in range(2))
        lows, highs = (first.median_ci_ms[0], second.median_ci_ms[0]), (first.median_ci_ms[1], second.median_ci_ms[1])
        agree = max(lows) <= min(highs)  # the two 95% intervals overlap
        agreed += agree
        gap = 100 * abs(first.median_ms - second.median_ms) / min(first.median_ms, second.median_ms)
        for name, stats in (("run 1", first), ("run 2", second)):
            print(f"  pair {pair + 1} {name}: median {stats.median_ms:7.2f} ms  95% interval "
                  f"[{stats.median_ci_ms[0]:.2f}, {stats.median_ci_ms[1]:.2f}]  CV {100 * stats.cv:4.1f}%  "
                  f"n={stats.iterations}  rounds {', '.join(f'{m:.1f}' for m in stats.round_medians_ms)}")
        print(f"  pair {pair + 1}: medians differ by {gap:.1f}%: {'agree' if agree else 'DISAGREE'} "
              "within the reported noise")
    print(f"{agreed}/{args.pairs} pairs agree; 1-min load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
