"""`maedet-deploy profile`: pre-fill the latency cache for a space and image size."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..search import (SPACES, LatencySettings, LatencyTarget, MeasureLimits, ProfileOutcome, TimingSettings,
                      open_executor, profile_latency)
from ..structure.cost import as_hw
from ..zoo import resolve_structure
from .common import (DeviceOption, FarmOption, LatencyCacheOption, LatencyThreadsOption, QuietWaitOption, RoundOption,
                     WalksOption, console, parse_image_size, print_json)
from .search_cmd import (BackendOption, BatchOption, DiskOption, InitOption, MaxChannelsOption, MemoryOption,
                         PrecisionOption, PriorOption, ScopeOption)


def profile(
    space: Annotated[str, typer.Option(help=f"Block space: {', '.join(SPACES)}.")] = "k1kxk1",
    image_size: Annotated[str, typer.Option(help="Deploy input size: 320 or HxW.")] = "480",
    latency_scope: ScopeOption = "backbone",
    backend: BackendOption = "onnxruntime",
    batch: BatchOption = 1,
    precision: PrecisionOption = "fp32",
    threads: LatencyThreadsOption = None,
    init: InitOption = "maedet-seed",
    max_channels: MaxChannelsOption = 2048,
    profile_walks: WalksOption = LatencySettings.profile_walks,
    quiet_wait: QuietWaitOption = 10.0,
    round_s: RoundOption = TimingSettings.round_s,
    latency_cache: LatencyCacheOption = None,
    measure_memory_mb: MemoryOption = MeasureLimits.memory_mb,
    measure_disk_mb: DiskOption = MeasureLimits.disk_mb,
    latency_prior: PriorOption = None,
    farm: FarmOption = None,
    device: DeviceOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Measure what a latency search of this space needs, so searches start at once.

    Measures the seed whole, then the seed and --profile-walks mutation walks from it, block by block (each block alone at its input size) and whole: what `search --latency-ms` with the same space, seed, image size and target fits its predictor on. Each thing is timed in short visits spread over its window of measurements, beside two yardstick networks whose slowdown against their first measurement in the cache is divided out, so a slow spell of a shared host cannot skew it; each measurement is in the cache as soon as it is done (keyed by the measuring device's fingerprint: this machine's, or the --farm fleet's). Entries already in the cache are reused.

    Examples (here; on the orin-nx devices of a Ray farm):

      maedet-deploy profile --image-size 320 --latency-scope detector
      maedet-deploy profile --image-size 320 --latency-scope detector --backend tensorrt --farm 10.0.0.5:6379 --device orin-nx
    """
    settings = LatencySettings(float("inf"), LatencyTarget(backend, precision, batch, threads), latency_scope,
                               latency_cache=latency_cache, profile_walks=profile_walks,
                               latency_prior=latency_prior)
    timing = TimingSettings.for_backend(backend, patience=quiet_wait, round_s=round_s)
    limits = MeasureLimits(memory_mb=measure_memory_mb, disk_mb=measure_disk_mb)
    with Progress(TextColumn("[bold]profile"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False, disable=json_output) as progress:
        task = progress.add_task("profile", total=None, info="")

        def advance(done: int, total: int, item: str) -> None:
            progress.update(task, completed=done, total=total, info=item.split("@")[0][:48])

        with open_executor(farm, device, progress.console.print) as executor:
            outcome = profile_latency(settings, as_hw(parse_image_size(image_size)), space, resolve_structure(init),
                                      max_channels, timing, limits, executor, progress=advance)
    if json_output:
        print_json(summary(outcome, settings, space))
    else:
        print_table(outcome, settings)


def summary(outcome: ProfileOutcome, settings: LatencySettings, space: str) -> dict:
    return {"cache": outcome.cache, "device": outcome.device, "target": settings.target.to_dict(),
            "scope": settings.latency_scope, "space": space, "where": outcome.where, "seed_ms": outcome.seed_ms,
            "seconds": outcome.seconds, "measurements": outcome.counters.to_dict(), **outcome.fit}


def print_table(outcome: ProfileOutcome, settings: LatencySettings) -> None:
    table = Table(title="latency profile", show_header=False)
    table.add_row("cache", f"{outcome.cache} (device {outcome.device}, {settings.target.key()})")
    table.add_row("seed latency", f"{outcome.seed_ms:.3f} ms ({outcome.where})")
    counters = outcome.counters
    table.add_row("measurements", f"{counters.measured} new, {counters.cached} from the cache"
                                  + (f", {counters.contended} contended" if counters.contended else ""))
    table.add_row("time", f"{outcome.seconds:.1f} s (export {counters.export_s:.1f} s, load {counters.load_s:.1f} s, "
                          f"timing {counters.timing_s:.1f} s)")
    table.add_row("resources", f"temporary disk {counters.peak_temp_mb:.0f} MB, models held {counters.peak_held_mb:.0f} MB")
    for name, label in (("block_cv", "blocks, cross-validated"), ("network_fit", "networks, fitted")):
        error = outcome.fit[name]
        if error["count"]:
            table.add_row(f"predictor error ({label})", f"MAPE {error['mape_pct']:.1f}%, "
                                                        f"{100 * error['within_10pct']:.0f}% within 10% (n={error['count']})")
    console.print(table)
