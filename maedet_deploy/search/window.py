"""Timing a window of models on the target: export, visits spread in time, bounded memory and disk.

Why visits spread in time: a shared host (a cloud VM, a CI runner) has slow
spells of seconds to minutes in which the same network runs 5-25% slower, and
one small block up to 90% slower, with its full share of CPU time, so nothing
inside the process can see them. Timing each thing in back-to-back rounds puts
all its rounds inside or outside one spell, and measurements taken a minute
apart disagree by 10% (MAPE, measured on a 2-core VM). So the things of a
window are timed in passes: every thing gets one short visit per pass, its
visits lie a whole pass apart, and the fastest quiet visit is kept (other load
only ever adds time). While one window is timed, the next one is exported
between its passes: exporting never runs beside a timed loop, and the gaps it
puts between passes spread the visits further for free.

Bounded resources: each exported model is read into a compact form (its graph
without the weights' bytes, `compact`) and its file deleted at once, so
temporary disk holds one model at a time; models are kept loaded between
visits while their weights fit `MeasureLimits.memory_mb`, the rest are rebuilt
for every visit. The temporary folder is removed on every path, and by a small
janitor process if this process is killed (`tempfiles`).

Slow spells that last minutes: a window's things are all timed inside them, so
spreading visits cannot help, and measurements taken minutes apart disagree by
the spell (on a 2-core VM, sessions a minute apart disagreed by 3% sd, up to
9%, with 1.6% scatter within each). So on a CPU target every window also times
two fixed yardstick networks (`requests.yardstick_requests`), spread through
each pass, and divides its latencies by the yardsticks' slowdown against their
reference latencies on this device (the cache's first measurement of them):
what a window measures is expressed at one reference speed, whenever it ran.
On that recording, a window factor from two reference networks cut the
sessions' disagreement to 1.1% sd (pair MAPE 3.9% -> 2.3%). The raw number and
the factor stay in each entry's details.
A yardstick stays loaded and warm through the call and its visits take half a
round; a call of a few things (a search's guard and verification) reuses the
factor this process measured in the last 30 s instead of doubling its time.

`measure_window` touches no cache and takes only plain values, so it runs in
any process (the in-process measurer, or a worker of a device farm); each
request's entry is yielded as soon as its visits are done.
"""

from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import Future, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import MaedetError
from ..progress import Progress
from .compact import CompactModel, materialize
from .exporter import Exported, Exporter, trim_heap
from .latency_cache import Entry
from .requests import Request, yardstick_requests
from .target import PROTOCOL, LatencyTarget, MeasureLimits, TimingSettings
from .tempfiles import temporary_folder

MB = 2 ** 20
# A loaded ONNX Runtime session's memory, estimated from its model (measured at 320 px: 1.2-1.5 bytes
# per weight byte, 2-5 per byte of the largest node's activations, a few MB besides).
HELD_PER_WEIGHT_BYTE = 1.5
HELD_PER_ACTIVATION_BYTE = 3.0
HELD_FIXED_MB = 4.0


@dataclass
class _Timed:
    """One thing being timed: its compact model, loaded runner (while loaded) and visits so far."""

    request: Request
    model: CompactModel
    export_s: float
    file_mb: float
    keep: bool = False            # stays loaded between visits
    keep_warm: bool = False       # loaded and warmed up for the whole call (a yardstick)
    runner: Any = None
    feed: dict | None = None
    settings: dict = field(default_factory=dict)
    load_s: float = 0.0
    seconds: float = 0.0
    attempt: int = 0
    visits: list[tuple[Any, float, float]] = field(default_factory=list)   # (Timings, CPU share, at s)

    def quiet(self, threshold: float) -> list:
        return [timings for timings, share, _ in self.visits if share >= threshold]

    @property
    def held_mb(self) -> float:
        """Estimated memory of this thing's runner while it is loaded."""
        model = self.model
        return (HELD_PER_WEIGHT_BYTE * model.weight_bytes + HELD_PER_ACTIVATION_BYTE * model.activation_bytes) / MB \
            + HELD_FIXED_MB


def _median_ms(timings) -> float:
    """As `LatencyStats` computes it, so the kept visit's median is the cached number exactly."""
    return float(np.median(np.asarray(timings.times_ns, dtype=np.float64) / 1e6))


class _Window:
    """Exports, loads and visits the things of a stream of requests, window by window."""

    def __init__(self, target: LatencyTarget, timing: TimingSettings, limits: MeasureLimits, folder: Path,
                 total: int, progress: Progress | None) -> None:
        self.target, self.timing, self.limits, self.folder = target, timing, limits, folder
        self.threads = target.resolved_threads()
        self.started = time.perf_counter()
        self.steps = [0, total * (1 + timing.visits)]
        self.progress = progress
        self.peak_temp_mb = 0.0
        self.peak_held_mb = 0.0

    def step(self, item: str, planned: int = 0) -> None:
        self.steps[0] += 1
        self.steps[1] += planned
        if self.progress:
            self.progress(self.steps[0], max(self.steps), item)

    def received(self, request: Request, future: Future) -> _Timed:
        """A finished export, as a thing to time (its file is gone already)."""
        exported = self.exported(request, future)
        self.step(request.item)
        return _Timed(request, exported.model, exported.export_s, exported.file_mb)

    def exported(self, request: Request, future: Future) -> Exported:
        """A finished export, within the temporary disk allowed."""
        try:
            exported = future.result()
        except BrokenProcessPool:
            raise MaedetError("the export process died (out of memory?) while exporting "
                              f"{request.item}") from None
        self.peak_temp_mb = max(self.peak_temp_mb, exported.file_mb)
        if exported.file_mb > self.limits.disk_mb:
            raise MaedetError(f"{request.item} exports to {exported.file_mb:.0f} MB, over the {self.limits.disk_mb:g} "
                              "MB of temporary disk allowed", setting="measure_disk_mb")
        return exported

    def plan_memory(self, things: Sequence[_Timed], reserved_mb: float) -> None:
        """Keep loaded what fits the memory limit (less what the yardsticks hold), those dearest to
        reload first (most weights per MB held: rebuilding a model costs time in proportion to its
        weights, while a block at a high resolution holds mostly activations and reloads in ms)."""
        room = self.limits.memory_mb - reserved_mb
        for thing in sorted(things, key=lambda t: -t.model.weight_bytes / t.held_mb):
            thing.keep = thing.held_mb <= room
            room -= thing.held_mb if thing.keep else 0.0

    def load(self, thing: _Timed) -> None:
        from ..backends import load_runner
        from ..bench import make_feed

        begin = time.perf_counter()
        data = materialize(thing.model)
        if self.target.backend == "onnxruntime":
            thing.runner = load_runner(data, self.target.backend, **self.target.runner_options())
        else:   # TensorRT builds from a file
            path = self.folder / "load.onnx"
            try:
                path.write_bytes(data)
                thing.runner = load_runner(path, self.target.backend, **self.target.runner_options())
            finally:
                path.unlink(missing_ok=True)
        del data
        thing.feed = make_feed(thing.runner.inputs, seed=0)
        thing.settings = thing.runner.settings
        thing.load_s += time.perf_counter() - begin

    def again(self, things: list[_Timed]) -> list[_Timed]:
        """Things short of quiet visits, ready to be timed afresh in a later window."""
        self.steps[1] += len(things) * self.timing.visits
        for thing in things:
            thing.attempt += 1
            thing.visits.clear()
        return list(things)

    @staticmethod
    def unload(thing: _Timed) -> None:
        if thing.runner is not None:
            thing.runner.close()
            thing.runner = thing.feed = None
            trim_heap()

    def visit(self, thing: _Timed, held_mb: float, round_s: float | None = None) -> None:
        from ..bench.measure import time_loop

        timing = self.timing
        begin = time.perf_counter()
        first = not thing.visits and not thing.keep_warm
        if thing.runner is None:
            self.load(thing)
        self.peak_held_mb = max(self.peak_held_mb, held_mb + (0.0 if thing.keep else thing.held_mb))
        cpu = time.process_time()
        raw = time_loop(thing.runner, thing.feed, warmup=timing.warmup_s if first else 0.0, warmup_iterations=1,
                        duration=round_s or timing.round_s, min_iterations=timing.min_iterations)
        # CPU share per thread over the timed loop and warm-up (a GPU backend has none to judge).
        seconds = (raw.wall_ns + raw.warmup_ns) / 1e9
        share = (time.process_time() - cpu) / seconds / self.threads if self.threads else 1.0
        thing.visits.append((raw, share, round(time.perf_counter() - self.started, 3)))
        if not thing.keep:
            self.unload(thing)
        thing.seconds += time.perf_counter() - begin
        if share < timing.quiet:
            time.sleep(timing.backoff_s)

    def entry(self, thing: _Timed, yardsticks: "_Yardsticks | _Reused | None") -> Entry:
        """The fastest quiet visit (the fastest of all when too few were quiet: contended), at the
        reference speed when yardsticks were timed beside it."""
        from ..bench.measure import summarise

        quiet = thing.quiet(self.timing.quiet)
        enough = len(quiet) >= self.timing.visits
        best = min(quiet if enough else [timings for timings, _, _ in thing.visits], key=_median_ms)
        stats = summarise([best], self.target.batch)
        request = thing.request
        speed = yardsticks.details(self.timing.quiet) if yardsticks else {"speed_factor": 1.0}
        details = {"stats": stats.to_dict(), "protocol": PROTOCOL, "raw_ms": stats.median_ms, **speed,
                   "visit_medians_ms": [_median_ms(t) for t, _, _ in thing.visits],
                   "visit_cpu_share": [share for _, share, _ in thing.visits],
                   "visit_at_s": [at for _, _, at in thing.visits], "contended": not enough,
                   "attempts": thing.attempt + 1, "load_s": round(thing.load_s, 4), "kept_loaded": thing.keep,
                   "file_mb": round(thing.file_mb, 3), "peak_temp_mb": round(self.peak_temp_mb, 3),
                   "peak_held_mb": round(self.peak_held_mb, 3),
                   "runner": thing.settings, "scope": request.scope, "image_size": list(request.image_size),
                   "blocks": request.structure.to_dicts()}
        return Entry(stats.median_ms / speed["speed_factor"], thing.export_s, thing.seconds, details)

    def time(self, things: list[_Timed], between_passes: Callable[[], None],
             yardsticks: "_Yardsticks | _Reused | None") -> Iterator[_Timed]:
        """Visit every thing, and the yardsticks among them, once per pass; yield each thing as soon
        as it has its quiet visits, and those still short of them when patience runs out.
        `between_passes` runs after every pass."""
        timing = self.timing
        reserved = yardsticks.restart() if yardsticks else 0.0
        self.plan_memory(things, reserved)
        pending = list(things)
        regular_end = None
        passes = 0
        while pending:
            if passes >= timing.visits:
                regular_end = regular_end or time.perf_counter()
                if time.perf_counter() - regular_end > timing.patience:
                    break
            pass_start = time.perf_counter()
            order = list(pending)
            due = yardsticks.due(len(order)) if yardsticks else {}
            for index, thing in enumerate(order):
                for yardstick in due.get(index, ()):
                    self.visit(yardstick, 0.0, timing.round_s / 2)
                held = reserved + sum(t.held_mb for t in pending if t.keep and t.runner is not None and t is not thing)
                self.visit(thing, held)
                self.step(thing.request.item, planned=int(passes >= timing.visits))
                if len(thing.quiet(timing.quiet)) >= timing.visits:
                    pending.remove(thing)
                    self.unload(thing)
                    yield thing
            passes += 1
            between_passes()
            rest = timing.min_gap_s - (time.perf_counter() - pass_start)
            if rest > 0 and pending:
                time.sleep(rest)
        for thing in pending:
            self.unload(thing)
            yield thing


_YARDSTICK_MODELS: dict[tuple[str, int], Exported] = {}   # exported once per process
SMALL_CALL = 8      # a measuring call of fewer things may reuse a recent factor (see `_Reused`)
REUSE_S = 30.0      # how recent: slow spells last minutes
_LAST_SPEED: dict[tuple[float, ...], tuple[float, dict[str, Any]]] = {}   # reference -> (when, details)


class _Yardsticks:
    """The yardsticks of a measuring call, kept loaded: visited in every pass of a window (`due`);
    their fastest visits in the window against their reference latencies give its speed factor."""

    def __init__(self, things: list[_Timed], reference_ms: Sequence[float]) -> None:
        self.things, self.reference_ms = things, tuple(reference_ms)

    @classmethod
    def open(cls, window: _Window, exporter: Exporter, count: int) -> "_Yardsticks | _Reused | None":
        """The yardsticks for a call of `count` things: none without a reference or on a target timed
        back to back; a small call reuses this process's factor of the last REUSE_S seconds."""
        timing = window.timing
        if not (timing.spread and timing.reference_ms):
            return None
        when, details = _LAST_SPEED.get(timing.reference_ms, (-math.inf, {}))
        if count < SMALL_CALL and time.monotonic() - when <= REUSE_S:
            return _Reused(details, time.monotonic() - when)
        things = []
        for request in yardstick_requests():
            key = (request.item, window.target.batch)
            if key not in _YARDSTICK_MODELS:
                _YARDSTICK_MODELS[key] = window.exported(request, exporter.submit(request, window.folder, key[1]))
            exported = _YARDSTICK_MODELS[key]
            things.append(_Timed(request, exported.model, exported.export_s, exported.file_mb, keep=True))
        return cls(things, timing.reference_ms)

    def restart(self) -> float:
        """A new window: forget the visits of the last one (a yardstick visited before is loaded and
        warm); the memory they hold (MB)."""
        for thing in self.things:
            thing.keep_warm |= bool(thing.visits)
            thing.visits.clear()
        return sum(thing.held_mb for thing in self.things)

    def due(self, count: int) -> dict[int, list[_Timed]]:
        """Where in a pass of `count` things each yardstick is visited: spread through it, away from
        its start (which follows the exports between passes)."""
        due: dict[int, list[_Timed]] = {}
        for index, thing in enumerate(self.things):
            due.setdefault((index + 1) * count // (len(self.things) + 1), []).append(thing)
        return due

    def details(self, quiet: float) -> dict[str, Any]:
        """The window's speed factor and what it came from, for a cache entry (and for small calls
        that follow soon, `_Reused`)."""
        best = self.best_ms(quiet)
        details = {"speed_factor": self.factor(best), "yardstick_ms": best,
                   "yardstick_visits_ms": [[_median_ms(t) for t, _, _ in thing.visits] for thing in self.things]}
        _LAST_SPEED[self.reference_ms] = (time.monotonic(), details)
        return details

    def best_ms(self, quiet: float) -> list[float]:
        return [min(map(_median_ms, thing.quiet(quiet) or [t for t, _, _ in thing.visits])) for thing in self.things]

    def factor(self, best_ms: Sequence[float]) -> float:
        """How much slower than at the reference the host ran in this window (geometric mean), from
        the yardsticks' best visits in it."""
        logs = [math.log(ms / reference) for ms, reference in zip(best_ms, self.reference_ms)]
        return math.exp(sum(logs) / len(logs))

    def close(self) -> None:
        for thing in self.things:
            _Window.unload(thing)


class _Reused:
    """A small call's speed factor: the one this process measured at most REUSE_S ago. A window of a
    few things is timed in a second or two, the yardsticks would double it (a search's guard and
    verification measure a few networks at a time), and a slow spell lasts minutes."""

    def __init__(self, details: dict[str, Any], age_s: float) -> None:
        self._details = {**details, "speed_reused_after_s": round(age_s, 2)}

    def restart(self) -> float:
        return 0.0

    def due(self, count: int) -> dict[int, list[_Timed]]:
        return {}

    def details(self, quiet: float) -> dict[str, Any]:
        return self._details

    def close(self) -> None:
        pass


class _Exports:
    """The requests still to export, and those exported (or exporting) ahead of their window."""

    def __init__(self, window: _Window, exporter: Exporter, requests: Sequence[Request]) -> None:
        self.window, self.exporter = window, exporter
        self.queue = deque(requests)
        self.ahead: deque[tuple[Request, Future]] = deque()

    def __bool__(self) -> bool:
        return bool(self.queue or self.ahead)

    def fill(self, count: int) -> None:
        """Start exports until `count` are ahead; wait for each unless the exporter may overlap timing."""
        while self.queue and len(self.ahead) < count:
            request = self.queue.popleft()
            future = self.exporter.submit(request, self.window.folder, self.window.target.batch)
            self.ahead.append((request, future))
            if not self.exporter.overlaps:
                wait([future])

    def take(self, count: int) -> list[_Timed]:
        self.fill(count)
        return [self.window.received(*self.ahead.popleft()) for _ in range(min(count, len(self.ahead)))]


@contextmanager
def _exporter_for(target: LatencyTarget, exporter: Exporter | None) -> Iterator[Exporter]:
    """The caller's exporter, or one for this call (exporting beside the timing on a GPU target)."""
    if exporter is not None:
        yield exporter
        return
    own = Exporter(overlaps=target.backend != "onnxruntime")
    try:
        yield own
    finally:
        own.close()


def measure_window(target: LatencyTarget, timing: TimingSettings, requests: Sequence[Request],
                   limits: MeasureLimits | None = None, progress: Progress | None = None,
                   exporter: Exporter | None = None) -> Iterator[tuple[Request, Entry]]:
    """Export and time `requests`, at most `limits.window` at a time (in equal windows), and yield
    (request, entry) as each is done. Things still short of quiet visits are timed again in a later window
    (`timing.attempts` in all) before they are yielded as contended. Touches no cache. Exports run
    in `exporter`'s child process (one for this call if not given)."""
    limits = limits or MeasureLimits()
    requests = list(requests)
    if not requests:
        return
    with temporary_folder(limits.temp_dir) as folder, _exporter_for(target, exporter) as exports_by:
        window = _Window(target, timing, limits, folder, len(requests), progress)
        yardsticks = _Yardsticks.open(window, exports_by, len(requests))
        try:
            yield from _windows(window, _Exports(window, exports_by, requests), yardsticks)
        finally:
            if yardsticks:
                yardsticks.close()


def balanced(count: int, most: int) -> int:
    """Window size for `count` things, at most `most`, the windows as equal as can be: a window of a
    few things is timed in a few seconds, too short to tell a slow spell from the yardsticks."""
    return math.ceil(count / math.ceil(count / most)) if count else most


def _windows(window: _Window, exports: _Exports,
             yardsticks: _Yardsticks | _Reused | None) -> Iterator[tuple[Request, Entry]]:
    """Time the exports window by window, then what is to be timed again."""
    timing, retry = window.timing, []
    size = balanced(len(exports.queue), window.limits.window)
    per_pass = math.ceil(size / timing.visits)

    def between_passes() -> None:
        exports.fill(min(size, len(exports.ahead) + per_pass))

    while exports or retry:
        if exports:
            things = exports.take(size)
        else:
            count = balanced(len(retry), window.limits.window)
            things, retry = window.again(retry[:count]), retry[count:]
        if exports.exporter.overlaps:
            exports.fill(size)
        groups = [things] if timing.spread else [[thing] for thing in things]
        for group in groups:
            for thing in window.time(group, between_passes, yardsticks):
                if len(thing.quiet(timing.quiet)) < timing.visits and thing.attempt + 1 < timing.attempts:
                    retry.append(thing)
                else:
                    yield thing.request, window.entry(thing, yardsticks)
