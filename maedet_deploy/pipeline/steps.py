"""The four stages' work: each calls its layer's public entry point and returns a typed result's
dict (stored in the stage marker). Files are named relative to the stage's folder, so a moved
output folder still resumes."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..atomic import write_bytes
from ..errors import MaedetError
from .budget import Budget, latency_target, latency_timing
from .results import BenchSummary, CalibrationResult, ExportResult, SearchResult
from .settings import Plan, PipelineSettings
from .stages import StageResult

if TYPE_CHECKING:
    from ..search import Executor

BENCH_ROUNDS = 6  # models take turns, so drifting machine speed hits them alike
BENCH_WARMUP = 0.2  # seconds per model before its first round; never longer than the timed seconds
PART_SEPARATOR = ": "  # bench rows are "<model>: network" and "<model>: end to end"


def search(plan: Plan, budget: Budget, directory: Path, runner: Callable, executor: Executor) -> dict[str, Any]:
    """The latency-budgeted search, measured by `executor`; `runner(job)` runs it (with or without
    progress display)."""
    from ..search import LatencySettings, SearchJob, SearchSettings, cost_budgets

    settings = plan.settings
    latency = LatencySettings(budget.latency_ms, latency_target(plan), settings.scope, settings.verify_top,
                              settings.latency_check_every, latency_cache=settings.latency_cache,
                              profile_walks=settings.profile_walks)
    job = SearchJob(directory, SearchSettings(image_size=settings.size, iterations=settings.iterations,
                                              population=settings.population, seed=settings.seed),
                    plan.init, cost_budgets(layers=settings.layers or None), latency,
                    timing=latency_timing(plan), executor=executor)
    outcome = runner(job)
    if not outcome.found:
        closest = outcome.verification.closest()
        raise MaedetError(f"search: no candidate measured within {budget.latency_ms:g} ms (closest "
                          f"{closest['measured_ms']:.2f} ms); raise the budget or lower the image size",
                          "latency_ms" if budget.source == "latency_ms" else "speedup")
    return SearchResult.from_report(outcome.report).to_dict()


def export(plan: Plan, search_dir: Path, directory: Path) -> dict[str, Any]:
    """The searched detector and the baseline detector, each exported and verified."""
    from ..export import export_onnx
    from ..models import create_detector
    from ..search.score import entropy_score
    from ..structure import compute_cost, load_structure

    settings, size = plan.settings, plan.settings.size
    reports = {}
    for name, spec in (("detector", load_structure(search_dir / "best_structure.json")),
                       ("baseline", plan.baseline)):
        model = create_detector(spec, num_classes=settings.num_classes, image_size=size, seed=settings.seed)
        reports[name] = export_onnx(model, directory / f"{name}.onnx", size, batch=settings.batch).to_dict()
    cost = compute_cost(plan.baseline, size)
    figures = {"name": Path(settings.baseline).stem, "score": entropy_score(plan.baseline, image_size=size),
               "params": cost.params, "flops": cost.flops, "layers": cost.layers}
    return ExportResult("detector.onnx", "baseline.onnx", reports["detector"], reports["baseline"],
                        figures).to_dict()


def calibrate(plan: Plan, detector: Path, directory: Path) -> dict[str, Any]:
    """INT8 for the backend the bench runs, calibrate's default recipe."""
    from ..calib import CalibrationSettings, run_calibration

    settings = plan.settings
    result = run_calibration(CalibrationSettings(
        model=detector, images=plan.images, out=directory / "detector.int8.onnx", method=settings.method,
        num_images=settings.num_images, holdout=settings.holdout, seed=settings.seed, backend=plan.backend,
        float_macs=settings.float_macs, report=directory / "calibration.json"))
    return CalibrationResult.from_calibration("detector.int8.onnx", result).to_dict()


def bench(plan: Plan, models: dict[str, Path], directory: Path) -> dict[str, Any]:
    """Every model twice in one run: the network alone (what the budget covers) and end to end with NMS."""
    from ..backends import open_runner
    from ..backends.onnx_file import load_model
    from ..bench import run_bench, write_report
    from ..calib.graph import cut_before_nms

    settings = plan.settings
    with ExitStack() as stack:
        runners = {}
        for index, (label, path) in enumerate(models.items()):
            network = cut_before_nms(load_model(path))
            if network is not None:
                network_path = directory / f"model{index}.network.onnx"
                write_bytes(network_path, network.SerializeToString())
                runners[f"{label}{PART_SEPARATOR}network"] = stack.enter_context(
                    open_runner(network_path, plan.backend, settings.threads))
            runners[f"{label}{PART_SEPARATOR}end to end"] = stack.enter_context(
                open_runner(path, plan.backend, settings.threads))
        result = run_bench(runners, model=str(next(iter(models.values()))), rounds=BENCH_ROUNDS,
                           duration=settings.bench_seconds, warmup=min(BENCH_WARMUP, settings.bench_seconds))
    write_report(result, directory / "bench.json")
    write_report(result, directory / "bench.md")
    return result.to_dict()


def search_result(stage: StageResult) -> SearchResult:
    return SearchResult.from_dict(stage.data)


def export_result(stage: StageResult) -> ExportResult:
    return ExportResult.from_dict(stage.data)


def calibration_result(stage: StageResult) -> CalibrationResult:
    return CalibrationResult.from_dict(stage.data)


def bench_summary(stage: StageResult, settings: PipelineSettings) -> BenchSummary:
    return BenchSummary.from_bench(stage.data, settings.baseline_runner, settings.bench_seconds, PART_SEPARATOR)
