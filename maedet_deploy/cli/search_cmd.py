"""`maedet-deploy search`: the zero-shot evolutionary search."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..search.budgets import cost_budgets
from ..search.evolution import SearchSettings
from ..search.job import SearchJob, SearchOutcome, run_search_job
from ..search.latency import SCOPES, LatencySettings
from ..search.measurer import PRECISIONS, LatencyTarget, TimingSettings
from ..search.outputs import budget_usage
from ..search.score import DEFAULT_ALPHA, parse_alpha
from ..search.space import SPACES
from ..structure.cost import as_hw
from ..zoo import resolve_structure
from .common import LatencyCacheOption, LatencyThreadsOption, QuietWaitOption, console, human, parse_image_size

ALPHA_TEXT = ",".join(f"{a:g}" for a in DEFAULT_ALPHA)


def search(
    out: Annotated[Path, typer.Option(help="Output folder: best structure, top-k, report, progress plot, checkpoint.")],
    flops: Annotated[Optional[float], typer.Option(help="FLOPs budget in MACs at --image-size, e.g. 18.8e9.")] = None,
    params: Annotated[Optional[float], typer.Option(help="Parameter budget, e.g. 25e6.")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Conv layer budget (the paper's detection recipe: 91).")] = None,
    image_size: Annotated[str, typer.Option(help="Input size for FLOPs and kernel limits: 480 or HxW.")] = "480",
    iterations: Annotated[int, typer.Option(help="Candidates to evaluate.")] = 100_000,
    population: Annotated[int, typer.Option(help="Population size (best unique structures kept).")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same result.")] = 0,
    space: Annotated[str, typer.Option(help=f"Block space: {', '.join(SPACES)}.")] = "k1kxk1",
    alpha: Annotated[str, typer.Option(help="Entropy weight per stage (one per stage of the seed).")] = ALPHA_TEXT,
    init: Annotated[str, typer.Option(help="Seed structure: zoo name or file; must fit every budget.")] = "maedet-seed",
    fine_after: Annotated[float, typer.Option(help="Fraction of the run after which only widths mutate "
                                                   "(coarse-to-fine); 1 disables it.")] = 0.9,
    max_channels: Annotated[int, typer.Option(help="Channel cap for mutations.")] = 2048,
    top_k: Annotated[int, typer.Option(help="How many of the best structures to save in top_k.json.")] = 10,
    workers: Annotated[int, typer.Option(help="Worker processes; results are identical for any count.")] = 1,
    checkpoint_every: Annotated[float, typer.Option(help="Seconds between checkpoints.")] = 30.0,
    resume: Annotated[bool, typer.Option(help="Continue the search checkpointed in --out.")] = False,
    latency_ms: Annotated[Optional[float], typer.Option(
        help="Latency budget in ms, measured on this machine with --backend (exported to ONNX and timed); "
             "the winner's measured latency fits it.")] = None,
    backend: Annotated[str, typer.Option(help="Where latency is measured: onnxruntime or tensorrt.")] = "onnxruntime",
    batch: Annotated[int, typer.Option(help="Batch size latency is measured at.")] = 1,
    precision: Annotated[str, typer.Option(help=f"Latency precision: {', '.join(PRECISIONS)} "
                                                "(fp16 with tensorrt only; int8 is refused).")] = "fp32",
    threads: LatencyThreadsOption = None,
    latency_scope: Annotated[str, typer.Option(help=f"What the budget covers: {', '.join(SCOPES)} "
                                                    "(backbone + PAN neck + head at --image-size).")] = "backbone",
    verify_top: Annotated[int, typer.Option(help="Best candidates measured whole at the end; the winner is the "
                                                 "best-scoring one within the budget.")] = 3,
    latency_check_every: Annotated[int, typer.Option(help="Batches between guard checks (the best members "
                                                          "measured whole, predictor corrected).")] = 40,
    latency_cache: LatencyCacheOption = None,
    quiet_wait: QuietWaitOption = 10.0,
    profile_networks: Annotated[int, typer.Option(help="Random networks whose blocks fit the predictor "
                                                       "(as `profile --networks`).")] = 24,
    profile_whole: Annotated[int, typer.Option(help="Mutation walks from the seed measured whole to fit its "
                                                    "correction (as `profile --whole`).")] = 8,
) -> None:
    """Evolve backbones that maximise the multi-scale entropy under FLOPs/params/layers/latency budgets.

    Example (the paper's detection recipe, ~10 s on a laptop):
    maedet-deploy search --flops 18.8e9 --layers 91 --image-size 480 --out runs/r50

    With --latency-ms, candidates are screened by a predictor built from blocks measured on this
    machine (`maedet-deploy profile` pre-fills the cache; missing entries are measured on demand),
    the best members are measured whole every --latency-check-every batches, and the top
    --verify-top are measured at the end. --workers then parallelizes scoring and predicting only:
    measuring runs in the main process between batches, while workers are idle, never two at once.
    """
    settings = SearchSettings(image_size=as_hw(parse_image_size(image_size)), iterations=iterations,
                              population=population, seed=seed, space=space, alpha=parse_alpha(alpha),
                              fine_after=fine_after, max_channels=max_channels)
    latency = None if latency_ms is None else LatencySettings(
        latency_ms, LatencyTarget(backend, precision, batch, threads), latency_scope, verify_top,
        latency_check_every, cache_path=latency_cache, plan_networks=profile_networks, plan_whole=profile_whole)
    job = SearchJob(out, settings, resolve_structure(init), cost_budgets(flops=flops, params=params, layers=layers),
                    latency, TimingSettings.for_backend(backend, patience=quiet_wait), workers, checkpoint_every, resume, top_k)
    outcome = run_with_progress(job)
    _summary(outcome.report)
    if not outcome.found:
        verification = outcome.verification
        closest = verification.closest()
        measured = ", ".join(f"{row['measured_ms']:.2f}" for row in verification.rows)
        console.print(f"[bold red]no candidate fits --latency-ms {latency_ms:g}:[/] the top {len(verification.rows)} "
                      f"measured {measured} ms; the closest (rank {closest['rank']}, score {closest['score']:.2f}) "
                      f"measured {closest['measured_ms']:.2f} ms (predicted {closest['predicted_ms']:.2f} ms). "
                      f"No best_structure written; see {out / 'report.json'} and pareto.png", highlight=False)
        raise typer.Exit(1)


def run_with_progress(job: SearchJob) -> SearchOutcome:
    """`run_search_job` with rich progress bars for the latency profile and the evolution."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        profile = None
        task = progress.add_task("search", total=job.settings.iterations, info="", visible=False)

        def on_start(where: str | None) -> None:
            nonlocal profile
            if where:
                profile = progress.add_task("latency profile", total=None, info=where)

        def on_profile(done: int, total: int, item: str) -> None:
            progress.update(profile, completed=done, total=total, info=item.split("@")[0][:48])

        def on_batch(current, budgets) -> None:
            use = "  ".join(f"{b['name']} {100 * b['fraction']:.0f}%" for b in budget_usage(budgets, current))
            progress.update(task, visible=True, completed=current.counters.candidates,
                            info=f"best {current.population.best().score:.2f}  {use}")

        def on_verify(where: str) -> None:
            progress.console.print(f"verifying the top {job.latency.verify_top} and measuring the Pareto front ({where})")

        return run_search_job(job, on_start, on_profile, on_batch, on_verify)


def _summary(report: dict) -> None:
    best = report["best"]
    table = Table(title="search result", show_header=False)
    table.add_row("best score", f"{best['score']:.3f}")
    table.add_row("params / FLOPs / layers", f"{human(best['params'])} / {human(best['flops'])} / {best['layers']}")
    for budget in report["budgets"]:
        table.add_row(f"{budget['name']} budget", f"{budget['used']:,.6g} of {budget['limit']:,.6g} "
                                                  f"({100 * budget['fraction']:.1f}%)")
    counters = report["counters"]
    table.add_row("candidates", f"{report['candidates']:,} ({report['candidates_per_second']:,.0f}/s, "
                                f"{report['wall_seconds']:.1f} s)")
    table.add_row("scored / over budget / duplicate",
                  f"{counters['scored']:,} / {sum(counters['over_budget'].values()):,} / {counters['duplicates']:,}")
    latency = report.get("latency")
    if latency:
        winner = latency["winner"]
        if winner:
            table.add_row("winner latency", f"measured {winner['measured_ms']:.2f} ms, predicted "
                                            f"{winner['predicted_ms']:.2f} ms (budget {latency['settings']['limit_ms']:g} ms)")
        error = latency["predictor"]["verified_out_of_sample"]
        if error["count"]:
            table.add_row("predictor error (verified)", f"MAPE {error['mape_pct']:.1f}% on {error['count']}")
        measured = latency["measurements"]
        table.add_row("measurements", f"{measured['measured']:,} new, {measured['cached']:,} from the cache"
                                      + (f", {measured['contended']} contended" if measured["contended"] else ""))
        seconds = latency["time_s"]
        predicting = "n/a" if seconds["predicting"] is None else f"{seconds['predicting']:.2f}"
        table.add_row("time: scoring / predicting / measuring",
                      f"{seconds['scoring']:.1f} / {predicting} / {seconds['measuring']:.1f} s "
                      f"(export {measured['export_s']:.1f} s, timing {measured['timing_s']:.1f} s)")
    console.print(table)
