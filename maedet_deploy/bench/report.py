"""Bench runs (runners x batch sizes through `measure`) and their reports: JSON, markdown, CSV.

A result always carries the device fingerprint and every setting, trtexec
style, so a number can be traced to the machine and options that produced it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from ..atomic import write_text
from ..backends.base import Runner
from ..backends.fingerprint import device_fingerprint, fingerprint_id
from ..errors import MaedetError
from .feed import make_feed
from .measure import CV_THRESHOLD, FEW_ITERATIONS, LatencyStats, Timings, batch_size, summarise, time_loop

REPORT_FORMATS = (".md", ".csv", ".json")
STAT_COLUMNS = ("min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "std_ms", "cv",
                "throughput_fps", "images_per_s")


@dataclass
class BenchRow:
    runner: str
    batch: int
    shapes: dict[str, list[int]]
    stats: LatencyStats

    def to_dict(self) -> dict:
        return {"runner": self.runner, "batch": self.batch, "shapes": self.shapes, **self.stats.to_dict()}


@dataclass
class BenchResult:
    model: str
    rows: list[BenchRow]
    runners: dict[str, dict]          # label -> the runner's settings (threads, providers, ...)
    settings: dict                    # measure settings, seed, shapes
    fingerprint: dict = field(default_factory=device_fingerprint)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    warnings: list[str] = field(default_factory=list)

    def speedups(self) -> list[dict]:
        """How many times faster the first runner is than each other one, per batch (median vs median)."""
        first = next(iter(self.runners), None)
        out = []
        for row in self.rows:
            if row.runner == first:
                continue
            main = next((r for r in self.rows if r.runner == first and r.batch == row.batch), None)
            if main is not None:
                out.append({"batch": row.batch, "runner": first, "baseline": row.runner,
                            "speedup": row.stats.median_ms / main.stats.median_ms})
        return out

    def to_dict(self) -> dict:
        return {"format": "maedet-bench/1", "model": self.model, "created": self.created,
                "fingerprint": self.fingerprint, "fingerprint_id": fingerprint_id(self.fingerprint),
                "runners": self.runners, "settings": self.settings, "results": [r.to_dict() for r in self.rows],
                "speedups": self.speedups(), "warnings": self.warnings}


def _busy_warning() -> str | None:
    """Other processes on the machine inflate every latency; say so rather than hide it."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        return (f"the machine was busy when the run started (1-minute load average {load:.1f} on {cores} cores): "
                "latencies include contention")
    return None


def run_bench(runners: Mapping[str, Runner], model: str = "", shapes: Mapping[str, Sequence[int]] | None = None,
              batches: Sequence[int | None] = (None,), seed: int = 0, rounds: int = 1, *, warmup: float = 0.2,
              iterations: int | None = None, duration: float | None = None, min_iterations: int = FEW_ITERATIONS,
              cv_threshold: float = CV_THRESHOLD) -> BenchResult:
    """Every runner at every batch size on the same seeded random feed. The first runner is
    the one under test, the others are baselines (see `speedups`).

    With `rounds` > 1 the runners take turns, each round timing every runner for
    1/rounds of the iterations or duration, and each row summarises all its rounds:
    a machine whose speed drifts (shared hosts, thermal limits) then slows every
    runner alike instead of whichever ran during the slow spell."""
    if not runners:
        raise MaedetError("nothing to bench: no runner")
    if rounds < 1:
        raise MaedetError(f"rounds must be >= 1, got {rounds}")
    warnings = [w for w in (_busy_warning(),) if w]
    if iterations is not None:
        rounds = min(rounds, iterations)   # exactly `iterations` calls in all, spread over the rounds
    feeds = {(batch, label): make_feed(runner.inputs, shapes, batch, seed)
             for batch in batches for label, runner in runners.items()}
    loops: dict[tuple[int | None, str], list[Timings]] = {key: [] for key in feeds}
    for index in range(rounds):
        share = {"iterations": None if iterations is None else _split(iterations, rounds, index),
                 "duration": None if duration is None else duration / rounds,
                 "min_iterations": max(1, _split(min_iterations, rounds, index))}
        for (batch, label), feed in feeds.items():
            loops[batch, label].append(time_loop(runners[label], feed, warmup=warmup if index == 0 else 0.0,
                                                 **share))
    rows = []
    for (batch, label), feed in feeds.items():
        stats = summarise(loops[batch, label], batch_size(feed), cv_threshold)
        rows.append(BenchRow(label, stats.batch, {k: list(v.shape) for k, v in feed.items()}, stats))
    settings = {"seed": seed, "batches": [b for b in batches if b is not None],
                "shapes": {k: list(v) for k, v in (shapes or {}).items()}, "rounds": rounds, "warmup": warmup,
                "iterations": iterations, "duration": duration}
    return BenchResult(model, rows, {label: dict(getattr(r, "settings", {})) for label, r in runners.items()},
                       settings, warnings=warnings)


def _split(total: int, parts: int, index: int) -> int:
    """Round `index`'s share of `total` calls: equal shares, the first ones one larger."""
    return total // parts + (index < total % parts)


def _shape_text(shapes: Mapping[str, Sequence[int]]) -> str:
    return " ".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in shapes.items())


def to_markdown(result: BenchResult) -> str:
    data = result.to_dict()
    lines = [f"# Latency: {result.model}", "", f"Measured {result.created} on `{data['fingerprint_id']}`.", "",
             "## Device", ""]
    lines += [f"- {key}: {value}" for key, value in result.fingerprint.items() if value is not None]
    lines += ["", "## Settings", ""]
    lines += [f"- {key}: {value}" for key, value in result.settings.items()]
    for label, settings in result.runners.items():
        lines.append(f"- runner `{label}`: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    lines += ["", "## Latency (ms)", "",
              "| runner | batch | shapes | iterations | min | mean | median | p90 | p95 | p99 | max | CV | FPS | images/s |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result.rows:
        s = row.stats
        lines.append(f"| {row.runner} | {row.batch} | {_shape_text(row.shapes)} | {s.iterations} | {s.min_ms:.3f} | "
                     f"{s.mean_ms:.3f} | {s.median_ms:.3f} | {s.p90_ms:.3f} | {s.p95_ms:.3f} | {s.p99_ms:.3f} | "
                     f"{s.max_ms:.3f} | {100 * s.cv:.1f}% | {s.throughput_fps:.2f} | {s.images_per_s:.2f} |")
    if data["speedups"]:
        lines += ["", "## Speed-up (median latency ratio)", ""]
        lines += [f"- batch {s['batch']}: {s['runner']} is {s['speedup']:.2f}x as fast as {s['baseline']}"
                  for s in data["speedups"]]
    notes = result.warnings + [f"{row.runner} batch {row.batch}: {w}" for row in result.rows for w in row.stats.warnings]
    if notes:
        lines += ["", "## Warnings", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def to_csv(result: BenchResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "runner", "batch", "shapes", "iterations", *STAT_COLUMNS, "fingerprint_id"])
    key = fingerprint_id(result.fingerprint)
    for row in result.rows:
        stats = row.stats.to_dict()
        writer.writerow([result.model, row.runner, row.batch, _shape_text(row.shapes), row.stats.iterations,
                         *(f"{stats[c]:.6g}" for c in STAT_COLUMNS), key])
    return buffer.getvalue()


def write_report(result: BenchResult, path: str | os.PathLike) -> None:
    """Markdown, CSV or JSON by the file's suffix; written atomically."""
    suffix = Path(path).suffix.lower()
    if suffix not in REPORT_FORMATS:
        raise MaedetError(f"report must end in {', '.join(REPORT_FORMATS)}, got {path}")
    text = {".md": to_markdown, ".csv": to_csv,
            ".json": lambda r: json.dumps(r.to_dict(), indent=2, default=str) + "\n"}[suffix](result)
    write_text(path, text)
