"""`maedet-deploy profile`: pre-fill the latency cache for a space and image size."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..search.latency import SCOPES, LatencyRun, LatencySettings
from ..search.measurer import PRECISIONS, LatencyTarget, TimingSettings
from ..search.space import SPACES
from ..structure.cost import as_hw
from ..zoo import resolve_structure
from .common import (LatencyCacheOption, LatencyThreadsOption, QuietWaitOption, console, parse_image_size,
                     print_json)


def profile(
    space: Annotated[str, typer.Option(help=f"Block space: {', '.join(SPACES)}.")] = "k1kxk1",
    image_size: Annotated[str, typer.Option(help="Deploy input size: 320 or HxW.")] = "480",
    scope: Annotated[str, typer.Option(help=f"Whole networks measured as: {', '.join(SCOPES)}.")] = "backbone",
    backend: Annotated[str, typer.Option(help="onnxruntime or tensorrt.")] = "onnxruntime",
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    precision: Annotated[str, typer.Option(help=f"{', '.join(PRECISIONS)} (fp16 with tensorrt only).")] = "fp32",
    threads: LatencyThreadsOption = None,
    init: Annotated[str, typer.Option(help="Seed structure the search will start from.")] = "maedet-seed",
    max_channels: Annotated[int, typer.Option(help="Channel cap of the search.")] = 2048,
    networks: Annotated[int, typer.Option(help="Random networks around the seed whose blocks are measured.")] = 24,
    whole: Annotated[int, typer.Option(help="Mutation walks from the seed measured whole (and block by block), "
                                            "plus the seed.")] = 8,
    quiet_wait: QuietWaitOption = 10.0,
    latency_cache: LatencyCacheOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Measure the blocks and networks a latency search of this space needs, so searches start at once.

    Measures the seed whole, then the blocks of --networks random networks around the seed (each
    block alone at its input size) and --whole mutation walks from the seed, block by block and
    whole: what `search --latency-ms` with the same space, seed, image size and target fits its
    predictor on. Each thing is timed in short visits spread over the whole batch, so a slow spell
    of a shared host cannot skew it. Entries already in the cache are reused.
    Example: maedet-deploy profile --space k1kxk1 --image-size 320
    """
    settings = LatencySettings(float("inf"), LatencyTarget(backend, precision, batch, threads), scope,
                               cache_path=latency_cache, plan_networks=networks, plan_whole=whole)
    run = LatencyRun(settings, as_hw(parse_image_size(image_size)), space, resolve_structure(init), max_channels,
                     TimingSettings.for_backend(backend, patience=quiet_wait))
    try:
        with Progress(TextColumn("[bold]profile"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                      TimeElapsedColumn(), console=console, transient=False, disable=json_output) as progress:
            task = progress.add_task("profile", total=None, info=run.where())

            def advance(done: int, total: int, item: str) -> None:
                progress.update(task, completed=done, total=total, info=item.split("@")[0][:48])

            budget = run.prepare(advance)
        fit = run.session.fit_report(budget.predictor)
        summary = {"cache": str(run.measurer.cache.path), "device": run.measurer.cache.device,
                   "target": settings.target.to_dict(), "scope": scope, "space": space,
                   "image_size": list(run.session.image_size), "seed_ms": run.seed_ms,
                   "seconds": run.profile_s, "measurements": run.measurer.counters.to_dict(), **fit}
    finally:
        run.close()
    if json_output:
        print_json(summary)
        return
    table = Table(title="latency profile", show_header=False)
    table.add_row("cache", f"{summary['cache']} (device {summary['device']}, {settings.target.key()})")
    table.add_row("seed latency", f"{run.seed_ms:.3f} ms ({run.where()})")
    counters = summary["measurements"]
    table.add_row("measurements", f"{counters['measured']} new, {counters['cached']} from the cache"
                                  + (f", {counters['contended']} contended" if counters["contended"] else ""))
    table.add_row("time", f"{summary['seconds']:.1f} s (export {counters['export_s']:.1f} s, "
                          f"timing {counters['timing_s']:.1f} s)")
    for name, label in (("block_cv", "blocks, cross-validated"), ("network_fit", "networks, fitted")):
        error = fit[name]
        table.add_row(f"predictor error ({label})",
                      f"MAPE {error['mape_pct']:.1f}%, {100 * error['within_10pct']:.0f}% within 10% "
                      f"(n={error['count']})")
    console.print(table)
