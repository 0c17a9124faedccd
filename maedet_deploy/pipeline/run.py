"""`pipeline`: latency-budgeted search -> detector export -> INT8 calibration -> bench -> report.

This module only sequences the stages. Everything is checked before anything is
measured or written (`make_plan`); the output folder is then locked for the run
(`outlock`), the budget resolved once (`budget`), and every stage runs in
`<out>/<stage>/` or is reused when its inputs, settings and files are unchanged
(`stages`); a changed upstream result changes the settings of every stage after
it, so stale outputs are never reused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..atomic import write_text
from ..outlock import output_lock
from . import steps
from .budget import Budget, resolve_budget
from .report import render_html, render_markdown
from .settings import Plan, PipelineSettings, make_plan
from .stages import StageResult, run_stage
from .summary import PipelineSummary

if TYPE_CHECKING:
    from ..search import Executor

Log = Callable[[str], None]
Reproduce = Callable[[Plan, Budget], list[str]]


@dataclass
class PipelineResult:
    stages: dict[str, StageResult] = field(default_factory=dict)
    report: Path | None = None
    summary: PipelineSummary | None = None


def run_pipeline(settings: PipelineSettings, log: Log = print, search_runner: Callable | None = None,
                 reproduce: Reproduce | None = None) -> PipelineResult:
    """Run (or resume) every stage. `search_runner(job)` runs the search with progress display
    (by default the plain library call); `reproduce(plan, budget)` gives the commands the report
    lists to redo the run stage by stage (the CLI's; none by default)."""
    plan = make_plan(settings)
    out = Path(settings.out)
    from ..search import open_executor

    with open_executor(settings.farm, settings.device, log) as executor, output_lock(out, "pipeline", log):
        _remove_partial_files(out)
        budget = resolve_budget(plan, executor)
        if budget.source == "speedup":
            log(f"budget: {budget.describe(settings.baseline)}")
        stages = _run_stages(plan, budget, out, log, search_runner, executor)
        summary = PipelineSummary.collect(plan, budget, stages, reproduce(plan, budget) if reproduce else [])
        markdown = render_markdown(summary)
        write_text(out / "report.md", markdown)
        write_text(out / "report.html", render_html(markdown))
        write_text(out / "summary.json", json.dumps(summary.to_dict(), indent=2, default=str) + "\n")
    return PipelineResult(stages, out / "report.md", summary)


def _run_stages(plan: Plan, budget: Budget, out: Path, log: Log, search_runner: Callable | None,
                executor: Executor) -> dict[str, StageResult]:
    from ..search import run_search_job

    settings, done = plan.settings, {}

    def stage(name: str, config: dict[str, Any], work: Callable[[Path], dict[str, Any]]) -> StageResult:
        done[name] = run_stage(out, name, config, work)
        log(f"{name}: {'reused from a previous run' if done[name].reused else f'done in {done[name].seconds:.1f} s'}")
        return done[name]

    search = stage("search", _search_config(plan, budget, executor.device()[0]),
                   lambda d: steps.search(plan, budget, d, search_runner or run_search_job, executor))
    export = stage("export", {"search": search.digest, "image_size": settings.size, "seed": settings.seed,
                              "num_classes": settings.num_classes, "baseline": plan.digests["baseline"],
                              "baseline_name": settings.baseline_runner, "batch": settings.batch},
                   lambda d: steps.export(plan, search.directory, d))
    exported = steps.export_result(export)
    calib = stage("calibrate", {"export": export.digest, "images": plan.digests["images"], "method": settings.method,
                                "num_images": settings.num_images, "holdout": settings.holdout,
                                "seed": settings.seed, "backend": plan.backend,
                                "float_macs": settings.float_macs},
                  lambda d: steps.calibrate(plan, export.path(exported.detector), d))
    models = {"searched FP32": export.path(exported.detector),
              "searched INT8": calib.path(steps.calibration_result(calib).int8),
              settings.baseline_runner: export.path(exported.baseline)}
    stage("bench", {"export": export.digest, "calibrate": calib.digest, "models": list(models),
                    "backend": plan.backend, "seconds": settings.bench_seconds, "batch": settings.batch,
                    "threads": settings.threads, "rounds": steps.BENCH_ROUNDS, "warmup": steps.BENCH_WARMUP},
          lambda d: steps.bench(plan, models, d))
    return done


def _search_config(plan: Plan, budget: Budget, device: str) -> dict[str, Any]:
    settings = plan.settings
    return {"latency_ms": budget.latency_ms, "image_size": settings.size, "batch": settings.batch,
            "backend": plan.backend, "scope": settings.scope, "layers": settings.layers,
            "iterations": settings.iterations, "population": settings.population, "seed": settings.seed,
            "init": plan.digests["init"], "verify_top": settings.verify_top, "threads": settings.threads,
            "profile_walks": settings.profile_walks, "check_every": settings.latency_check_every, "device": device}


def _remove_partial_files(out: Path) -> None:
    """Temporary files a killed run left beside the report (stage folders clean up themselves)."""
    for path in out.glob(".*.tmp"):
        path.unlink(missing_ok=True)
