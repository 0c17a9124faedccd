"""`maedet-deploy search`: the zero-shot evolutionary search."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..search.budgets import cost_budgets
from ..search.evolution import SearchSettings, load_checkpoint, new_state, run_search
from ..search.outputs import budget_usage, write_outputs
from ..search.score import DEFAULT_ALPHA, parse_alpha
from ..search.space import SPACES
from ..structure.cost import as_hw
from ..zoo import resolve_structure
from .common import console, human, parse_image_size

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
) -> None:
    """Evolve backbones that maximise the multi-scale entropy under FLOPs/params/layers budgets.

    Example (the paper's detection recipe, ~10 s on a laptop):
    maedet-deploy search --flops 18.8e9 --layers 91 --image-size 480 --out runs/r50
    """
    budgets = cost_budgets(flops=flops, params=params, layers=layers)
    settings = SearchSettings(image_size=as_hw(parse_image_size(image_size)), iterations=iterations,
                              population=population, seed=seed, space=space, alpha=parse_alpha(alpha),
                              fine_after=fine_after, max_channels=max_channels)
    state = load_checkpoint(out, settings) if resume else new_state(settings, resolve_structure(init), budgets)
    with Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("search", total=settings.iterations, completed=state.counters.candidates, info="")

        def on_batch(current) -> None:
            use = "  ".join(f"{b['name']} {100 * b['fraction']:.0f}%" for b in budget_usage(budgets, current))
            progress.update(task, completed=current.counters.candidates,
                            info=f"best {current.population.best().score:.2f}  {use}")

        state = run_search(state, budgets, workers=workers, checkpoint_dir=out, checkpoint_every=checkpoint_every,
                           on_batch=on_batch)
    report = write_outputs(out, state, budgets, top_k)
    _summary(report)


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
    console.print(table)
