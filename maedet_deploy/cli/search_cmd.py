"""`maedet-deploy search`: the zero-shot evolutionary search."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..search import (DEFAULT_ALPHA, SCOPES, SPACES, TARGET_PRECISIONS, LatencyOutcome, LatencySettings,
                      LatencyTarget, MeasureLimits, SearchJob, SearchOutcome, SearchSettings, TimingSettings,
                      budget_usage, cost_budgets, open_executor, parse_alpha, run_search_job)
from ..search.evolution import candidates_per_second
from ..structure.cost import as_hw
from ..zoo import resolve_structure
from ..errors import MaedetError
from ..outlock import output_lock
from .common import (DeviceOption, FarmOption, LatencyCacheOption, LatencyCheckEveryOption, LatencyThreadsOption,
                     QuietWaitOption, RoundOption, VerifyTopOption, WalksOption, console, human, parse_image_size)

ALPHA_TEXT = ",".join(f"{a:g}" for a in DEFAULT_ALPHA)

# Options `profile` shares.
BackendOption = Annotated[str, typer.Option(help="Where latency is measured: onnxruntime or tensorrt.")]
BatchOption = Annotated[int, typer.Option(help="Batch size latency is measured at.")]
PrecisionOption = Annotated[str, typer.Option(help=f"Latency precision: {', '.join(TARGET_PRECISIONS)} (fp16 with "
                                                   "tensorrt only; int8 is refused).")]
ScopeOption = Annotated[str, typer.Option("--latency-scope", "--scope", help=f"What latency covers: "
                                          f"{', '.join(SCOPES)} (backbone + PAN neck + head at --image-size).")]
InitOption = Annotated[str, typer.Option(help="Seed structure: zoo name or file; must fit every budget.")]
MaxChannelsOption = Annotated[int, typer.Option(help="Channel cap for mutations.")]
MemoryOption = Annotated[float, typer.Option(help="MB of models kept loaded between visits while measuring latency; "
                                                  "the others are rebuilt from their graph for every visit.")]
PriorOption = Annotated[Optional[str], typer.Option(help="A latency cache holding another device's (or target's) profile of the same space, seed, image size and scope: its predictor is scaled by the seed and 3 walks measured here instead of the whole profile.")]
DiskOption = Annotated[float, typer.Option(help="MB of temporary disk for exported models while measuring latency "
                                                "(one model at a time, removed at once).")]


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
    init: InitOption = "maedet-seed",
    fine_after: Annotated[float, typer.Option(help="Fraction of the run after which only widths mutate "
                                                   "(coarse-to-fine); 1 disables it.")] = 0.9,
    max_channels: MaxChannelsOption = 2048,
    top_k: Annotated[int, typer.Option(help="How many of the best structures to save in top_k.json.")] = 10,
    workers: Annotated[int, typer.Option(help="Worker processes; results are identical for any count.")] = 1,
    checkpoint_every: Annotated[float, typer.Option(help="Seconds between checkpoints.")] = 30.0,
    resume: Annotated[bool, typer.Option(help="Continue the search checkpointed in --out (without it, a "
                                              "checkpoint in --out is refused, never replaced).")] = False,
    latency_ms: Annotated[Optional[float], typer.Option(help="Latency budget in ms, measured on this machine with "
                                                             "--backend; the winner's measured latency fits it.")] = None,
    backend: BackendOption = "onnxruntime",
    batch: BatchOption = 1,
    precision: PrecisionOption = "fp32",
    threads: LatencyThreadsOption = None,
    latency_scope: ScopeOption = "backbone",
    verify_top: VerifyTopOption = LatencySettings.verify_top,
    latency_check_every: LatencyCheckEveryOption = LatencySettings.latency_check_every,
    latency_cache: LatencyCacheOption = None,
    quiet_wait: QuietWaitOption = 10.0,
    round_s: RoundOption = TimingSettings.round_s,
    profile_walks: WalksOption = LatencySettings.profile_walks,
    measure_memory_mb: MemoryOption = MeasureLimits.memory_mb,
    measure_disk_mb: DiskOption = MeasureLimits.disk_mb,
    latency_prior: PriorOption = None,
    farm: FarmOption = None,
    device: DeviceOption = None,
) -> None:
    """Evolve backbones that maximise the multi-scale entropy under FLOPs/params/layers/latency budgets.

    With --latency-ms, candidates are screened by a predictor fitted on the seed and --profile-walks mutation walks from it, measured on this machine (or on the devices of a --farm) block by block and whole (`maedet-deploy profile` pre-fills the cache), the best members are measured whole every --latency-check-every batches, and the top --verify-top at the end. --workers then parallelizes scoring and predicting only: measuring runs between batches, never two things at once on a device. One search at a time may use an output folder.

    Examples (the paper's detection recipe, a few seconds; a 60 ms detector at 320x320 measured here; the same measured on a farm's Jetsons):

      maedet-deploy search --flops 18.8e9 --layers 91 --image-size 480 --out runs/r50
      maedet-deploy search --latency-ms 60 --latency-scope detector --layers 91 --image-size 320 --out runs/l60
      maedet-deploy search --latency-ms 8 --backend tensorrt --farm 10.0.0.5:6379 --device orin-nx --out runs/orin
    """
    settings = SearchSettings(image_size=as_hw(parse_image_size(image_size)), iterations=iterations,
                              population=population, seed=seed, space=space, alpha=parse_alpha(alpha),
                              fine_after=fine_after, max_channels=max_channels)
    latency = None if latency_ms is None else LatencySettings(
        latency_ms, LatencyTarget(backend, precision, batch, threads), latency_scope, verify_top, latency_check_every,
        latency_cache=latency_cache, profile_walks=profile_walks, latency_prior=latency_prior)
    job = SearchJob(out, settings, resolve_structure(init), cost_budgets(flops=flops, params=params, layers=layers),
                    latency, TimingSettings.for_backend(backend, patience=quiet_wait, round_s=round_s), workers,
                    checkpoint_every, resume, top_k, MeasureLimits(memory_mb=measure_memory_mb, disk_mb=measure_disk_mb),
                    existing_checkpoint="refuse")
    run_and_report(job, farm, device)


def run_and_report(job: SearchJob, farm: str | None, device: str | None) -> None:
    """Run the search holding its output folder, measuring on the farm when one is given; exit 1
    when no verified candidate fits the latency budget."""
    if farm and job.latency is None:
        raise MaedetError("a farm measures latency only: give --latency-ms too", setting="farm")
    with open_executor(farm, device, console.print) as executor, output_lock(job.out, "search", console.print):
        job.executor = executor
        outcome = run_with_progress(job)
    print_summary(outcome)
    if not outcome.found:
        print_no_winner(outcome.latency, job.out)
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
            use = "  ".join(f"{b.name} {100 * b.fraction:.0f}%" for b in budget_usage(budgets, current))
            progress.update(task, visible=True, completed=current.counters.candidates,
                            info=f"best {current.population.best().score:.2f}  {use}")

        def on_verify(where: str) -> None:
            progress.console.print(f"verifying the top {job.latency.verify_top} and measuring the Pareto front ({where})")

        return run_search_job(job, on_start, on_profile, on_batch, on_verify)


def print_summary(outcome: SearchOutcome) -> None:
    state = outcome.state
    best = state.population.best()
    table = Table(title="search result", show_header=False)
    table.add_row("best score", f"{best.score:.3f}")
    table.add_row("params / FLOPs / layers", f"{human(best.params)} / {human(best.flops)} / {best.layers}")
    for use in outcome.budgets:
        table.add_row(f"{use.name} budget", f"{use.used:,.6g} of {use.limit:,.6g} ({100 * use.fraction:.1f}%)")
    counters = state.counters
    table.add_row("candidates", f"{counters.candidates:,} ({candidates_per_second(state):,.0f}/s, "
                                f"{counters.seconds:.1f} s)")
    table.add_row("scored / over budget / duplicate",
                  f"{counters.scored:,} / {sum(counters.over_budget.values()):,} / {counters.duplicates:,}")
    if outcome.latency:
        _latency_rows(table, outcome.latency)
    console.print(table)


def _latency_rows(table: Table, latency: LatencyOutcome) -> None:
    winner, counters, times = latency.winner, latency.counters, latency.times
    if winner:
        table.add_row("winner latency", f"measured {winner.measured_ms:.2f} ms, predicted {winner.predicted_ms:.2f} ms "
                                        f"(budget {latency.settings.latency_ms:g} ms)")
    if latency.verified_error.count:
        table.add_row("predictor error (verified)",
                      f"MAPE {latency.verified_error.mape_pct:.1f}% on {latency.verified_error.count}")
    table.add_row("measurements", f"{counters.measured:,} new, {counters.cached:,} from the cache"
                                  + (f", {counters.contended} contended" if counters.contended else ""))
    predicting = "n/a" if times.predicting is None else f"{times.predicting:.2f}"
    table.add_row("time: scoring / predicting / measuring",
                  f"{times.scoring:.1f} / {predicting} / {times.measuring:.1f} s (export {counters.export_s:.1f} s, "
                  f"load {counters.load_s:.1f} s, timing {counters.timing_s:.1f} s)")


def print_no_winner(latency: LatencyOutcome, out: Path) -> None:
    rows = latency.verification.rows
    closest = latency.verification.closest()
    measured = ", ".join(f"{row.measured_ms:.2f}" for row in rows)
    console.print(f"[bold red]no candidate fits --latency-ms {latency.settings.latency_ms:g}:[/] the top {len(rows)} "
                  f"measured {measured} ms; the closest (rank {closest.rank}, score {closest.score:.2f}) measured "
                  f"{closest.measured_ms:.2f} ms (predicted {closest.predicted_ms:.2f} ms). No best_structure written; "
                  f"see {out / 'report.json'} and pareto.png", highlight=False)
