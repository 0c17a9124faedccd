"""`maedet-deploy pipeline`: from a latency budget to a benchmarked INT8 detector and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import LatencyCacheOption, LatencyThreadsOption, QuietWaitOption, console


def pipeline(
    latency_ms: Annotated[Optional[float], typer.Option(help="Latency budget in ms for the searched detector, "
                                                             "measured on this machine.")] = None,
    speedup: Annotated[Optional[float], typer.Option(
        help="Instead of --latency-ms: the budget is the --baseline detector's measured latency divided by this, "
             "e.g. 1.5.")] = None,
    out: Annotated[Path, typer.Option(
        help="Output folder; a finished stage is reused when run again.")] = Path("runs/demo"),
    image_size: Annotated[int, typer.Option(help="Square input size for search, export and bench.")] = 256,
    batch: Annotated[int, typer.Option(help="Batch size for latency and bench.")] = 1,
    backend: Annotated[str, typer.Option(help="auto (TensorRT when installed with a GPU, else ONNX Runtime), "
                                              "onnxruntime or tensorrt.")] = "auto",
    scope: Annotated[str, typer.Option(help="What the budget covers: detector or backbone.")] = "detector",
    layers: Annotated[int, typer.Option(help="Conv layer budget of the backbone (the paper's detection recipe: 91; "
                                             "0: none, and the entropy then favours very deep, thin nets).")] = 91,
    iterations: Annotated[int, typer.Option(help="Search candidates.")] = 10_000,
    population: Annotated[int, typer.Option(help="Search population size.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed for search and calibration subsets.")] = 0,
    init: Annotated[str, typer.Option(help="Seed structure of the search (zoo name or file).")] = "maedet-seed",
    baseline: Annotated[str, typer.Option(help="Zoo structure exported and benched beside the result.")] = "resnet50",
    num_classes: Annotated[int, typer.Option(help="Detector classes.")] = 80,
    images: Annotated[Optional[Path], typer.Option(help="Calibration images (folder, recursive); default: the "
                                                        "photographs scikit-image ships.")] = None,
    method: Annotated[str, typer.Option(help="INT8 calibration: percentile, entropy or minmax (percentile kept "
                                             "the most detections of untrained detectors here).")] = "percentile",
    num_images: Annotated[int, typer.Option(help="Calibration images used.")] = 32,
    holdout: Annotated[int, typer.Option(help="Images held out to measure INT8 agreement.")] = 8,
    bench_seconds: Annotated[float, typer.Option(help="Timed seconds per model in the final bench.")] = 3.0,
    latency_cache: LatencyCacheOption = None,
    threads: LatencyThreadsOption = None,
    quiet_wait: QuietWaitOption = 10.0,
) -> None:
    """From a latency budget to a benchmarked INT8 detector and a report, in one command.

    Searches a backbone under the budget (measured here), exports the detector, calibrates it to
    INT8, benches FP32/INT8 against the ResNet-50 detector and writes report.md / report.html in
    --out. A finished stage is reused when the command runs again.

    Examples (each about 5 minutes on a 2-core CPU, a minute with a warm latency cache):

      maedet-deploy pipeline --speedup 1.5 --out runs/demo      # 1.5x faster than the ResNet-50 detector

      maedet-deploy pipeline --latency-ms 45 --image-size 256 --out runs/r45
    """
    from ..pipeline import PipelineSettings, run_pipeline
    from .search_cmd import run_with_progress

    settings = PipelineSettings(
        latency_ms=latency_ms, speedup=speedup, out=out, image_size=image_size, batch=batch, backend=backend,
        scope=scope, layers=layers, iterations=iterations, population=population, seed=seed, init=init,
        baseline=baseline, num_classes=num_classes, images=images, method=method, num_images=num_images,
        holdout=holdout, bench_seconds=bench_seconds, latency_cache=latency_cache, threads=threads,
        quiet_wait=quiet_wait)
    result = run_pipeline(settings, log=lambda line: console.print(f"[bold]stage[/] {line}", highlight=False),
                          search_runner=run_with_progress)
    summary = result.summary
    rows = "\n".join(f"  {row['model']:<18} {row['part']:<11} median {row['median_ms']:8.2f} ms   "
                     f"{row['speedup_vs_baseline']:.2f}x vs {summary['bench']['baseline']}"
                     for row in summary["bench"]["rows"])
    console.print(f"searched detector: measured {summary['search']['latency']['measured_ms']:.2f} ms in the search "
                  f"(budget {summary['latency_ms']:g} ms)\n{rows}\nreport: {result.report}", highlight=False)
