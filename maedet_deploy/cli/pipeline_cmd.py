"""`maedet-deploy pipeline`: from a latency budget to a benchmarked INT8 detector and a report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, Sequence

import typer

from ..calib import CALIBRATION_METHODS, DEFAULT_METHOD
from ..errors import MaedetError
from ..pipeline import PipelineSettings, run_pipeline
from .common import (DeviceOption, FarmOption, LatencyCacheOption, LatencyCheckEveryOption, LatencyThreadsOption,
                     QuietWaitOption, RoundOption, VerifyTopOption, WalksOption, console, format_image_size,
                     parse_image_size)
from .search_cmd import run_with_progress

if TYPE_CHECKING:
    from ..pipeline import Budget, PipelineSummary, Plan

FloatMacsOption = Annotated[float, typer.Option(help="INT8: the layers most sensitive to it stay float while at most "
                                                     "this share of the conv MACs is float (as `calibrate "
                                                     "--float-macs`).")]


def pipeline(
    latency_ms: Annotated[Optional[float], typer.Option(help="Latency budget in ms for the searched detector, "
                                                             "measured on this machine.")] = None,
    speedup: Annotated[Optional[float], typer.Option(
        help="Instead of --latency-ms: the budget is the --baseline detector's measured latency divided by this, "
             "e.g. 1.5.")] = None,
    out: Annotated[Path, typer.Option(
        help="Output folder; a finished stage is reused when run again.")] = Path("runs/demo"),
    image_size: Annotated[str, typer.Option(help="Input size for search, export and bench: 256 or HxW.")] = "256",
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
    method: Annotated[str, typer.Option(help=f"INT8 calibration method: {', '.join(CALIBRATION_METHODS)} (as "
                                             "`calibrate --method`; its default measured best on trained "
                                             "detectors).")] = DEFAULT_METHOD,
    num_images: Annotated[int, typer.Option(help="Calibration images used.")] = 32,
    holdout: Annotated[int, typer.Option(help="Images held out to measure INT8 agreement.")] = 8,
    float_macs: FloatMacsOption = PipelineSettings.float_macs,
    bench_seconds: Annotated[float, typer.Option(help="Timed seconds per model in the final bench.")] = 3.0,
    latency_cache: LatencyCacheOption = None,
    threads: LatencyThreadsOption = None,
    quiet_wait: QuietWaitOption = 10.0,
    round_s: RoundOption = PipelineSettings.round_s,
    verify_top: VerifyTopOption = 3,
    latency_check_every: LatencyCheckEveryOption = 40,
    profile_walks: WalksOption = PipelineSettings.profile_walks,
    farm: FarmOption = None,
    device: DeviceOption = None,
) -> None:
    """From a latency budget to a benchmarked INT8 detector and a report, in one command.

    Searches a backbone under the budget (measured here, or on the devices of a --farm), exports the detector, calibrates it to INT8 (calibrate's default recipe), benches FP32/INT8 against the ResNet-50 detector and writes report.md / report.html in --out. Finished stages are reused when run again; one run at a time may use an output folder.

    Examples (each about 3 minutes on a 2-core CPU with a cold latency cache, about one with a warm one):

      maedet-deploy pipeline --speedup 1.5 --out runs/demo      # 1.5x faster than the ResNet-50 detector
      maedet-deploy pipeline --latency-ms 45 --image-size 256 --out runs/r45
    """
    _check_budget(latency_ms, speedup)
    settings = PipelineSettings(
        latency_ms=latency_ms, speedup=speedup, out=out, image_size=parse_image_size(image_size), batch=batch,
        backend=backend, scope=scope, layers=layers, iterations=iterations, population=population, seed=seed,
        init=init, baseline=baseline, num_classes=num_classes, images=images, method=method, num_images=num_images,
        holdout=holdout, float_macs=float_macs, bench_seconds=bench_seconds, latency_cache=latency_cache,
        threads=threads, quiet_wait=quiet_wait, round_s=round_s, verify_top=verify_top,
        latency_check_every=latency_check_every, profile_walks=profile_walks, farm=farm, device=device)
    result = run_pipeline(settings, log=lambda line: console.print(f"[bold]stage[/] {line}", highlight=False),
                          search_runner=run_with_progress, reproduce=reproduce_commands)
    _print_result(result.summary, result.report)


def _check_budget(latency_ms: float | None, speedup: float | None) -> None:
    if (latency_ms is None) == (speedup is None):
        raise MaedetError(f"give either --latency-ms (a budget in ms) or --speedup (a budget relative to the "
                          f"--baseline detector), not {'both' if latency_ms is not None else 'neither'}")


def _print_result(summary: "PipelineSummary", report: Path) -> None:
    rows = "\n".join(f"  {line.model:<18} {line.part:<11} median {line.median_ms:8.2f} ms   "
                     f"{line.speedup_vs_baseline:.2f}x vs {summary.bench.baseline}" for line in summary.bench.lines)
    console.print(f"searched detector: measured {summary.search.winner['measured_ms']:.2f} ms in the search "
                  f"(budget {summary.budget.latency_ms:g} ms)\n{rows}\nreport: {report}", highlight=False)


def _flags(settings: PipelineSettings, names: Sequence[str]) -> str:
    """`--name value` for each of `names` whose setting differs from its default."""
    defaults = PipelineSettings(latency_ms=None, out=settings.out)
    return "".join(f" --{name.replace('_', '-')} {getattr(settings, name)}" for name in names
                   if getattr(settings, name) != getattr(defaults, name))


def reproduce_commands(plan: "Plan", budget: "Budget") -> list[str]:
    """The pipeline command, then the same run as separate commands (stage by stage)."""
    settings, backend = plan.settings, plan.backend
    out, size = Path(settings.out), format_image_size(settings.size)
    tuning = ("threads", "quiet_wait", "round_s", "latency_cache", "verify_top", "latency_check_every", "profile_walks",
              "farm", "device")
    search_flags = (f" --layers {settings.layers}" if settings.layers else "") + _flags(
        settings, ("iterations", "population", "seed", "init", "batch", *tuning))
    export = f"--image-size {size} --num-classes {settings.num_classes} --batch {settings.batch}"
    given = f"--speedup {settings.speedup:g}" if budget.source == "speedup" else f"--latency-ms {budget.latency_ms:g}"
    return [
        f"maedet-deploy pipeline {given} --image-size {size} --backend {backend}"
        + _flags(settings, ("scope", "layers", "iterations", "population", "seed", "init", "baseline",
                            "num_classes", "batch", "images", "method", "num_images", "holdout", "float_macs",
                            "bench_seconds",
                            *tuning))
        + f" --out {out}",
        "# the same, stage by stage:",
        f"maedet-deploy search --latency-ms {budget.latency_ms:g} --latency-scope {settings.scope} "
        f"--image-size {size} --backend {backend}{search_flags} --out {out / 'search'}",
        f"maedet-deploy export {out / 'search' / 'best_structure.json'} {export} "
        f"--out {out / 'export' / 'detector.onnx'}",
        f"maedet-deploy export {settings.baseline} {export} --out {out / 'export' / 'baseline.onnx'}",
        f"maedet-deploy calibrate {out / 'export' / 'detector.onnx'} --images {plan.images} "
        f"--method {settings.method} --backend {backend} --num-images {settings.num_images} "
        f"--holdout {settings.holdout} --float-macs {settings.float_macs:g} --seed {settings.seed} "
        f"--out {out / 'calibrate' / 'detector.int8.onnx'} --report {out / 'calibrate' / 'calibration.json'}",
        *(f"maedet-deploy bench {model} --backend {backend} --duration {settings.bench_seconds:g}"
          for model in (out / "export" / "detector.onnx", out / "calibrate" / "detector.int8.onnx",
                        out / "export" / "baseline.onnx")),
    ]
