"""Seconds per candidate of `export_structure_onnx`, the step latency search pays
before it can time a candidate: build random-weight modules, fold BN, trace to
ONNX, write the file. Best and median of a few repeats (the first includes
warm-up), at 320 and 480, backbone and whole detector (no NMS).
Run: .venv/bin/python bench/export_speed.py [repeats]
"""

import statistics
import sys
import tempfile
from pathlib import Path

import torch

from maedet_deploy.export import export_structure_onnx
from maedet_deploy.zoo import get_structure

NAMES = ("maedet-seed", "maedet-s", "resnet50")
SIZES = (320, 480)
SCOPES = ("backbone", "detector")


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {repeats} repeats")
    print(f"{'structure':12} {'size':>5} {'scope':9} {'best s':>7} {'median s':>9} {'MB':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.onnx"
        for name in NAMES:
            structure = get_structure(name)
            for size in SIZES:
                for scope in SCOPES:
                    reports = [export_structure_onnx(structure, path, size, scope=scope) for _ in range(repeats)]
                    seconds = [r.seconds for r in reports]
                    print(f"{name:12} {size:5d} {scope:9} {min(seconds):7.2f} {statistics.median(seconds):9.2f} "
                          f"{reports[-1].size_bytes / 1e6:7.1f}")


if __name__ == "__main__":
    main()
