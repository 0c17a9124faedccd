"""`maedet-deploy pipeline`: from a latency budget to a benchmarked INT8 detector and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import console


def pipeline(
    latency_ms: Annotated[float, typer.Option(help="Latency budget for the searched detector, measured here.")],
    out: Annotated[Path, typer.Option(help="Output folder; a finished stage is reused when run again.")] = Path("runs/demo"),
    image_size: Annotated[int, typer.Option(help="Square input size for search, export and bench.")] = 256,
    batch: Annotated[int, typer.Option(help="Batch size for latency and bench.")] = 1,
    backend: Annotated[str, typer.Option(help="auto (TensorRT when installed with a GPU, else ONNX Runtime), "
                                              "onnxruntime or tensorrt.")] = "auto",
    scope: Annotated[str, typer.Option(help="What the budget covers: detector or backbone.")] = "detector",
    iterations: Annotated[int, typer.Option(help="Search candidates.")] = 10_000,
    population: Annotated[int, typer.Option(help="Search population size.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed for search and calibration subsets.")] = 0,
    init: Annotated[str, typer.Option(help="Seed structure of the search (zoo name or file).")] = "maedet-seed",
    baseline: Annotated[str, typer.Option(help="Zoo structure exported and benched beside the result.")] = "resnet50",
    num_classes: Annotated[int, typer.Option(help="Detector classes.")] = 80,
    images: Annotated[Optional[Path], typer.Option(help="Calibration images (folder, recursive); default: the "
                                                        "photographs scikit-image ships.")] = None,
    method: Annotated[str, typer.Option(help="INT8 calibration: entropy, percentile or minmax.")] = "entropy",
    num_images: Annotated[int, typer.Option(help="Calibration images used.")] = 32,
    holdout: Annotated[int, typer.Option(help="Images held out to measure INT8 agreement.")] = 8,
    bench_seconds: Annotated[float, typer.Option(help="Timed seconds per model in the final bench.")] = 3.0,
    latency_cache: Annotated[Optional[str], typer.Option(help="Latency cache (SQLite) path.")] = None,
) -> None:
    """Search a backbone under --latency-ms, export the detector, calibrate INT8, bench FP32/INT8
    against the ResNet-50 detector, and write report.md / report.html in --out.

    Example (about 10 minutes on a 2-core CPU): maedet-deploy pipeline --latency-ms 60 --out runs/demo
    """
    from ..pipeline import PipelineSettings, run_pipeline
    from .search_cmd import run_with_progress

    settings = PipelineSettings(latency_ms, out, image_size, batch, backend, scope, iterations, population, seed,
                                init, baseline, num_classes, images, method, num_images, holdout, bench_seconds,
                                latency_cache)
    result = run_pipeline(settings, log=lambda line: console.print(f"[bold]stage[/] {line}", highlight=False),
                          search_runner=run_with_progress)
    summary = result.summary
    rows = "\n".join(f"  {row['runner']:<18} median {row['median_ms']:8.2f} ms   {row['speedup_vs_baseline']:.2f}x "
                     f"vs {baseline}" for row in summary["bench"]["rows"])
    console.print(f"searched detector: measured {summary['search']['latency']['measured_ms']:.2f} ms "
                  f"(budget {latency_ms:g} ms)\n{rows}\nreport: {result.report}", highlight=False)
