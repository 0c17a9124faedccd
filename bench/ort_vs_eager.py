"""Acceptance of the deploy issue: ONNX Runtime (CPU) against PyTorch eager on the same detector.

The detector (default MAE-DET-S at 480x480, NMS included on both sides: the
ONNX graph's NonMaxSuppression, torchvision's in eager) is exported with
`export_onnx`, then both runners are timed by the product's one loop
(`bench.measure`) on the same input. On a shared machine the load drifts, so
the two are timed in alternating rounds and the speed-up is the median of the
per-round ratios (each round's pair saw about the same load). Target: ONNX
Runtime >= 1.3x as fast as eager. With --no-nms both sides are the network
alone (raw boxes and scores): the ratio without post-processing, where random
weights let most boxes through NMS.

Run: .venv/bin/python bench/ort_vs_eager.py [--structure maedet-s] [--image-size 480] [--rounds 5]
     [--iterations 3] [--threads N] [--no-nms] [--json out.json]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from maedet_deploy.backends import device_fingerprint, fingerprint_id, load_runner
from maedet_deploy.backends.torch import TorchRunner
from maedet_deploy.bench import make_feed, measure
from maedet_deploy.export import OUTPUT_NAMES, EndToEnd, export_onnx
from maedet_deploy.models import create_detector

TARGET = 1.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structure", default="maedet-s")
    parser.add_argument("--image-size", type=int, default=480)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=3, help="timed calls per runner per round")
    parser.add_argument("--threads", type=int, default=None, help="default: one per usable physical core")
    parser.add_argument("--no-nms", dest="nms", action="store_false",
                        help="compare the networks alone (raw boxes and scores on both sides)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    detector = create_detector(args.structure, image_size=args.image_size)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        report = export_onnx(detector, Path(folder) / "detector.onnx", args.image_size, nms=args.nms)
        print(f"exported {args.structure} at {args.image_size} in {time.perf_counter() - start:.1f} s "
              f"(ONNX Runtime vs PyTorch max abs error {report.max_abs_error:.2g})")
        ort = load_runner(report.path, intra_threads=args.threads)
    eager = (TorchRunner(EndToEnd(detector), ort.inputs, OUTPUT_NAMES, threads=args.threads) if args.nms else
             TorchRunner(detector, ort.inputs, ("boxes", "scores"), threads=args.threads))
    feed = make_feed(ort.inputs, seed=0)
    load_before = os.getloadavg()[0]
    for runner in (ort, eager):
        measure(runner, feed, warmup=1.0, warmup_iterations=2, iterations=1)
    rounds = []
    for index in range(args.rounds):
        pair = {name: measure(runner, feed, warmup=0, warmup_iterations=1, iterations=args.iterations)
                for name, runner in (("onnxruntime", ort), ("eager", eager))}
        ratio = pair["eager"].median_ms / pair["onnxruntime"].median_ms
        rounds.append({"onnxruntime_ms": pair["onnxruntime"].median_ms, "eager_ms": pair["eager"].median_ms,
                       "ratio": ratio})
        print(f"round {index + 1}: onnxruntime {pair['onnxruntime'].median_ms:8.1f} ms   "
              f"eager {pair['eager'].median_ms:8.1f} ms   ratio {ratio:.2f}x", flush=True)
    ratio = statistics.median(r["ratio"] for r in rounds)
    result = {
        "structure": args.structure, "image_size": args.image_size, "nms": args.nms,
        "onnxruntime_ms": statistics.median(r["onnxruntime_ms"] for r in rounds),
        "eager_ms": statistics.median(r["eager_ms"] for r in rounds),
        "speedup": ratio, "speedup_range": [min(r["ratio"] for r in rounds), max(r["ratio"] for r in rounds)],
        "target": TARGET, "passed": ratio >= TARGET, "rounds": rounds,
        "onnxruntime_settings": ort.settings, "torch_threads": torch.get_num_threads(),
        "load_average": [load_before, os.getloadavg()[0]],
        "fingerprint": device_fingerprint(), "fingerprint_id": fingerprint_id(),
    }
    print(f"{args.structure} {args.image_size}x{args.image_size}, batch 1, {'with' if args.nms else 'without'} NMS, "
          f"{ort.settings['intra_threads']} threads: "
          f"onnxruntime {result['onnxruntime_ms']:.1f} ms, eager {result['eager_ms']:.1f} ms, "
          f"onnxruntime is {ratio:.2f}x as fast (rounds {result['speedup_range'][0]:.2f}-"
          f"{result['speedup_range'][1]:.2f}; target >= {TARGET}x: {'PASS' if result['passed'] else 'FAIL'})")
    print(f"1-min load average {load_before:.1f} before, {result['load_average'][1]:.1f} after "
          f"on {os.cpu_count()} cores; device {result['fingerprint_id']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
