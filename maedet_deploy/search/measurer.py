"""Measuring latency on the target: export a structure (or one block) to ONNX, time it with the
product's one timing loop (`bench.measure.time_loop`) on the chosen backend, cache the result.

Why visits spread in time: a shared host (a cloud VM, a CI runner) has slow
spells of seconds to minutes in which the same network runs 5-25% slower, and
one small block up to 90% slower, with its full share of CPU time, so nothing
inside the process can see them. Timing each thing in back-to-back rounds puts
all its rounds inside or outside one spell, and measurements taken a minute
apart disagree by 10% (MAPE, measured on a 2-core VM). So a batch of things is
timed in passes: every thing gets one short visit per pass, its visits lie a
whole pass apart, and the fastest quiet visit is kept (other load only ever adds
time). Over a batch of a hundred things the visits span minutes and the spread
of the kept number falls to about 1% for networks (see bench/latency_predictor.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from ..errors import MaedetError
from ..structure import Block, Structure
from .latency_cache import Entry, LatencyCache
from .predictor import NECK_CHANNELS

PRECISIONS = ("fp32", "fp16", "int8")
PROTOCOL = "visits-v2"   # cache rows of an older timing protocol are never mixed with these
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class LatencyTarget:
    """Where and how latency is measured; `key()` separates cache rows of different targets."""

    backend: str = "onnxruntime"
    precision: str = "fp32"
    batch: int = 1
    threads: int | None = None   # onnxruntime intra-op threads; None: one per usable physical core

    def __post_init__(self) -> None:
        from ..backends import BACKENDS

        if self.backend not in BACKENDS:
            raise MaedetError(f"unknown backend {self.backend!r} (choose from {', '.join(BACKENDS)})")
        if self.precision not in PRECISIONS:
            raise MaedetError(f"unknown precision {self.precision!r} (choose from {', '.join(PRECISIONS)})")
        if self.backend == "onnxruntime" and self.precision != "fp32":
            raise MaedetError(f"--precision {self.precision} needs --backend tensorrt: ONNX Runtime runs the "
                              "exported fp32 graph in fp32")
        if self.precision == "int8":
            raise MaedetError("--precision int8 needs a calibrated Q/DQ graph per candidate, which search does not "
                              "build; search for fp16 (or fp32) latency and calibrate the winner")
        if self.batch < 1:
            raise MaedetError(f"--batch must be >= 1, got {self.batch}")
        if self.threads is not None and self.threads < 1:
            raise MaedetError(f"--threads must be >= 1, got {self.threads}")

    def resolved_threads(self) -> int | None:
        if self.backend != "onnxruntime":
            return None
        if self.threads is not None:
            return self.threads
        from ..backends.fingerprint import usable_cores
        return usable_cores()

    def key(self) -> str:
        threads = self.resolved_threads()
        return f"{self.backend}/{self.precision}/b{self.batch}" + (f"/t{threads}" if threads else "")

    def cache_key(self) -> str:
        """The cache's target column: the target and the timing protocol its numbers come from."""
        return f"{self.key()}/{PROTOCOL}"

    def runner_options(self) -> dict[str, Any]:
        if self.backend == "onnxruntime":
            return {"intra_threads": self.resolved_threads()}
        return {"fp16": self.precision == "fp16"}

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "batch": self.batch,
                "threads": self.resolved_threads(), "key": self.key()}


@dataclass(frozen=True)
class TimingSettings:
    """How each thing is timed: `visits` quiet rounds of `round_s` seconds, the lowest median kept.

    `spread`: visit every thing of a batch once per pass (the module's docstring
    says why); off, each thing's rounds run back to back (for TensorRT, where a
    runner is an engine build and a GPU has no such spells). A visit is quiet on a
    CPU backend when the process got the CPU time it asked for (CPU time >= `quiet`
    x threads x wall time); things short of quiet visits get more passes for up to
    `patience` seconds, then the best visit is kept and the measurement is marked
    contended (kept, and counted in reports: a cached number never changes, so a
    search with a warm cache repeats itself exactly). `min_gap_s` holds passes
    apart for small batches; runners stay loaded between visits up to `open_mb`
    of model files, the rest are reloaded per visit."""

    visits: int = 5
    round_s: float = 0.1
    min_iterations: int = 3
    warmup_s: float = 0.05      # before a runner's first round; later visits warm up with one call
    quiet: float = 0.9
    patience: float = 10.0
    backoff_s: float = 0.25
    spread: bool = True
    min_gap_s: float = 0.0
    open_mb: float = 1024.0

    def __post_init__(self) -> None:
        if self.visits < 1 or self.round_s <= 0 or self.min_iterations < 1:
            raise MaedetError("timing needs >= 1 visit, a positive round and >= 1 iteration per round")

    @classmethod
    def for_backend(cls, backend: str, **overrides: Any) -> "TimingSettings":
        """The defaults for a backend: TensorRT times each engine once, in consecutive rounds."""
        if backend == "tensorrt":
            overrides = {"visits": 3, "spread": False, **overrides}
        return cls(**overrides)


@dataclass
class MeasureCounters:
    measured: int = 0
    cached: int = 0
    contended: int = 0
    export_s: float = 0.0
    timing_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.export_s + self.timing_s

    def to_dict(self) -> dict[str, float]:
        return {"measured": self.measured, "cached": self.cached, "contended": self.contended,
                "export_s": round(self.export_s, 3),
                "timing_s": round(self.timing_s, 3), "seconds": round(self.seconds, 3)}


def block_item(block: Block, height: int, width: int) -> str:
    return "block:" + ":".join(str(v) for v in block.key()) + f"@{height}x{width}"


def network_item(structure: Structure, scope: str, image_size: tuple[int, int]) -> str:
    digest = hashlib.sha256(json.dumps(structure.to_dicts(), sort_keys=True).encode()).hexdigest()[:20]
    return f"{scope}:{digest}@{image_size[0]}x{image_size[1]}"


class Request(NamedTuple):
    """One thing to measure: its cache item, and what to export."""

    item: str
    structure: Structure
    image_size: tuple[int, int]
    scope: str


def block_requests(placed: Sequence[tuple[Block, int, int]]) -> list[Request]:
    return [Request(block_item(b, h, w), Structure((b,)), (h, w), "backbone") for b, h, w in placed]


def network_requests(structures: Sequence[Structure], image_size: tuple[int, int], scope: str) -> list[Request]:
    return [Request(network_item(s, scope, image_size), s, image_size, scope) for s in structures]


@dataclass
class _Timed:
    """One thing being timed: its exported file, loaded runner (while kept) and visits so far."""

    request: Request
    path: Path
    export_s: float
    keep: bool                  # runner stays loaded between visits
    runner: Any = None
    feed: dict | None = None
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    visits: list[tuple[Any, float, float]] = field(default_factory=list)   # (Timings, CPU share, at s)

    def quiet(self, threshold: float) -> list:
        return [timings for timings, share, _ in self.visits if share >= threshold]


def _median_ms(timings) -> float:
    """As `LatencyStats` computes it, so the kept visit's median is the cached number exactly."""
    return float(np.median(np.asarray(timings.times_ns, dtype=np.float64) / 1e6))


class Measurer:
    """Exports and times structures on one target, through the cache. Measurements run one at a
    time in this process: timing two things at once would measure their contention."""

    def __init__(self, target: LatencyTarget, cache: LatencyCache, timing: TimingSettings | None = None) -> None:
        self.target = target
        self.cache = cache
        self.timing = timing or TimingSettings.for_backend(target.backend)
        self.counters = MeasureCounters()
        self.contended: set[str] = set()   # items measured while other programs held the CPU
        self._workdir = Path(tempfile.mkdtemp(prefix="maedet-latency-"))

    def close(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)
        self.cache.close()

    def blocks(self, placed: Sequence[tuple[Block, int, int]], progress: Progress | None = None) -> list[float]:
        return self.measure(block_requests(placed), progress)

    def networks(self, structures: Sequence[Structure], image_size: tuple[int, int], scope: str,
                 progress: Progress | None = None) -> list[float]:
        return self.measure(network_requests(structures, image_size, scope), progress)

    def measure(self, requests: Sequence[Request], progress: Progress | None = None) -> list[float]:
        """Latency (ms) of each request: from the cache, else measured, all missing ones as one batch.
        Progress counts steps: an export and each visit of a measured thing, one per cached one."""
        found = self.cache.get_many(r.item for r in requests)
        missing = list({r.item: r for r in requests if r.item not in found}.values())
        self.counters.cached += len(requests) - len(missing)
        steps = [len(requests) - len(missing), len(requests) - len(missing) + len(missing) * (1 + self.timing.visits)]

        def step(item: str, planned: int = 0) -> None:
            steps[0] += 1
            steps[1] += planned
            if progress:
                progress(steps[0], max(steps), item)

        if progress and requests:
            progress(steps[0], steps[1], requests[0].item)
        for request, entry in zip(missing, self._measure_batch(missing, step)):
            self.cache.put(request.item, entry)
            found[request.item] = entry
        for request in requests:
            if found[request.item].details.get("contended"):
                self.contended.add(request.item)
        return [found[r.item].latency_ms for r in requests]

    def _measure_batch(self, requests: Sequence[Request], step: Callable[..., None]) -> list[Entry]:
        from ..export import export_structure_onnx

        things = []
        room = self.timing.open_mb * 2**20
        try:
            for index, request in enumerate(requests):
                path = self._workdir / f"{index}.onnx"
                report = export_structure_onnx(request.structure, path, request.image_size, batch=self.target.batch,
                                               scope=request.scope, neck_channels=NECK_CHANNELS)
                self.counters.export_s += report.seconds
                size = path.stat().st_size
                things.append(_Timed(request, path, report.seconds, keep=size <= room))
                room -= size if size <= room else 0
                step(request.item)
            groups = [things] if self.timing.spread else [[thing] for thing in things]
            start = time.perf_counter()
            for group in groups:
                self._time_group(group, step, start)
                for thing in group:
                    self._unload(thing)
        finally:
            for thing in things:
                self._unload(thing)
        return [self._entry(thing) for thing in things]

    def _time_group(self, group: list[_Timed], step: Callable[..., None], start: float) -> None:
        """Visit every thing once per pass until each has `visits` quiet visits (or patience runs out)."""
        timing = self.timing
        regular_end = None
        passes = 0
        while True:
            pending = [t for t in group if len(t.quiet(timing.quiet)) < timing.visits]
            if not pending:
                break
            if passes >= timing.visits:
                regular_end = regular_end or time.perf_counter()
                if time.perf_counter() - regular_end > timing.patience:
                    break
            pass_start = time.perf_counter()
            for thing in pending:
                self._visit(thing, time.perf_counter() - start)
                step(thing.request.item, planned=int(passes >= timing.visits))
            passes += 1
            rest = timing.min_gap_s - (time.perf_counter() - pass_start)
            if rest > 0 and any(len(t.quiet(timing.quiet)) < timing.visits for t in group):
                time.sleep(rest)

    def _visit(self, thing: _Timed, at_s: float) -> None:
        from ..backends import load_runner
        from ..bench import make_feed
        from ..bench.measure import time_loop

        timing = self.timing
        begin = time.perf_counter()
        first = thing.runner is None and not thing.visits
        if thing.runner is None:
            thing.runner = load_runner(thing.path, self.target.backend, **self.target.runner_options())
            thing.feed = make_feed(thing.runner.inputs, seed=0)
            thing.settings = getattr(thing.runner, "settings", {})
        threads = self.target.resolved_threads()
        cpu = time.process_time()
        raw = time_loop(thing.runner, thing.feed, warmup=timing.warmup_s if first else 0.0, warmup_iterations=1,
                        duration=timing.round_s, min_iterations=timing.min_iterations)
        # CPU share per thread over the timed loop and warm-up (a GPU backend has none to judge).
        share = (time.process_time() - cpu) / ((raw.wall_ns + raw.warmup_ns) / 1e9) / threads if threads else 1.0
        thing.visits.append((raw, share, round(at_s, 3)))
        if not thing.keep:
            self._unload(thing)
        thing.seconds += time.perf_counter() - begin
        self.counters.timing_s += time.perf_counter() - begin
        if share < timing.quiet:
            time.sleep(timing.backoff_s)

    @staticmethod
    def _unload(thing: _Timed) -> None:
        if thing.runner is not None:
            thing.runner.close()
        thing.runner = thing.feed = None

    def _entry(self, thing: _Timed) -> Entry:
        """The fastest quiet visit (the fastest of all when too few were quiet: contended)."""
        from ..bench.measure import summarise

        quiet = thing.quiet(self.timing.quiet)
        enough = len(quiet) >= self.timing.visits
        best = min(quiet if enough else [timings for timings, _, _ in thing.visits], key=_median_ms)
        stats = summarise([best], self.target.batch)
        self.counters.measured += 1
        self.counters.contended += not enough
        request = thing.request
        details = {"stats": stats.to_dict(), "protocol": PROTOCOL,
                   "visit_medians_ms": [_median_ms(t) for t, _, _ in thing.visits],
                   "visit_cpu_share": [share for _, share, _ in thing.visits],
                   "visit_at_s": [at for _, _, at in thing.visits], "contended": not enough,
                   "runner": thing.settings, "scope": request.scope, "image_size": list(request.image_size),
                   "blocks": request.structure.to_dicts()}
        return Entry(stats.median_ms, thing.export_s, thing.seconds, details)


def open_measurer(target: LatencyTarget, cache_path: str | None, timing: TimingSettings | None = None) -> Measurer:
    """A measurer on `target` whose cache rows are this device's, this target's and this protocol's."""
    from ..backends import device_fingerprint, fingerprint_id

    fingerprint = device_fingerprint()
    cache = LatencyCache(cache_path, fingerprint_id(fingerprint), fingerprint, target.cache_key())
    return Measurer(target, cache, timing)
