"""The measurer: latencies through the cache, measured where missing, committed as each arrives.

`Measurer.measure(requests)` looks every request up in the SQLite cache
(`latency_cache`), hands the missing ones to an executor in windows, and
writes each measurement to the cache the moment the executor returns it, so a
killed run loses only the window in flight. A cached measurement marked
contended (it never got quiet visits) is not final: the next measurer that
needs it measures it again (once: what a measurer measured itself is final for it).

The plug-in point for measuring elsewhere (a device farm):

    class Executor(Protocol):
        def device(self) -> tuple[str, dict]: ...      # fingerprint id and fingerprint
        def target(self, target: LatencyTarget) -> LatencyTarget: ...
        def run(self, target: LatencyTarget, timing: TimingSettings, limits: MeasureLimits,
                windows: Sequence[Sequence[Request]], progress: Progress | None
                ) -> Iterator[tuple[Request, Entry]]: ...
        def report(self) -> dict | None: ...             # which node measured what
        def close(self) -> None: ...

An executor names the device it measures on (the cache's key), resolves the
target as that device runs it (threads), measures the windows' requests (with
`window.measure_window`, in this process or another) and yields (request,
entry) as each completes, in any order; it touches no cache.
`InProcessExecutor` is the default and needs nothing else;
`search.farm.FarmExecutor` measures on a Ray farm. Everything it is given
pickles; `close` ends what it started.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Protocol, Sequence

from ..errors import MaedetError

from ..progress import Progress
from ..structure import Block, Structure
from .latency_cache import Entry, LatencyCache
from .requests import Request, block_requests, network_requests, yardstick_requests
from .target import LatencyTarget, MeasureLimits, TimingSettings
from .exporter import Exporter
from .window import measure_window

__all__ = ["Executor", "InProcessExecutor", "MeasureCounters", "Measurer", "open_executor", "open_measurer"]


class Executor(Protocol):
    def device(self) -> tuple[str, dict[str, Any]]: ...

    def target(self, target: LatencyTarget) -> LatencyTarget: ...

    def run(self, target: LatencyTarget, timing: TimingSettings, limits: MeasureLimits,
            windows: Sequence[Sequence[Request]], progress: Progress | None) -> Iterator[tuple[Request, Entry]]: ...

    def report(self) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


class InProcessExecutor:
    """Times in this process, one window after another (never two things at once: timing two things
    together would measure their contention); its export process lives until `close`."""

    def __init__(self) -> None:
        self.exporter: Exporter | None = None

    def device(self) -> tuple[str, dict[str, Any]]:
        from ..backends import device_fingerprint, fingerprint_id

        fingerprint = device_fingerprint()
        return fingerprint_id(fingerprint), fingerprint

    def target(self, target: LatencyTarget) -> LatencyTarget:
        return target

    def run(self, target: LatencyTarget, timing: TimingSettings, limits: MeasureLimits,
            windows: Sequence[Sequence[Request]], progress: Progress | None) -> Iterator[tuple[Request, Entry]]:
        self.exporter = self.exporter or Exporter(overlaps=target.backend != "onnxruntime")
        return measure_window(target, timing, [r for window in windows for r in window], limits, progress,
                              self.exporter)

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.close()

    def report(self) -> dict[str, Any] | None:
        """Where things were measured, when not here (None: in this process)."""
        return None

    def __enter__(self) -> "InProcessExecutor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_executor(farm: str | None = None, device: str | None = None,
                  warn: Callable[[str], None] | None = None) -> Executor:
    """Where measurements run: on the Ray farm at `farm` (its `device` kind; refused nodes reported
    through `warn`), else in this process. A context manager: it ends what it started."""
    if farm is None:
        if device is not None:
            raise MaedetError("a device kind only applies to measuring on a farm", setting="device")
        return InProcessExecutor()
    from .farm import open_farm

    return open_farm(farm, device, warn=warn)


@dataclass
class MeasureCounters:
    measured: int = 0
    reference: int = 0           # the yardsticks' reference, measured into a new cache (see `window`)
    cached: int = 0
    contended: int = 0
    remeasured: int = 0          # contended cache entries measured again
    export_s: float = 0.0
    load_s: float = 0.0
    timing_s: float = 0.0        # visits, loads included
    peak_temp_mb: float = 0.0
    peak_held_mb: float = 0.0

    @property
    def seconds(self) -> float:
        return self.export_s + self.timing_s

    def add(self, entry: Entry, reference: bool = False) -> None:
        details = entry.details
        self.reference += reference
        self.measured += not reference
        self.contended += bool(details.get("contended"))
        self.export_s += entry.export_s
        self.timing_s += entry.measure_s
        self.load_s += details.get("load_s", 0.0)
        self.peak_temp_mb = max(self.peak_temp_mb, details.get("peak_temp_mb", 0.0))
        self.peak_held_mb = max(self.peak_held_mb, details.get("peak_held_mb", 0.0))

    def to_dict(self) -> dict[str, float]:
        return {"measured": self.measured, "reference": self.reference, "cached": self.cached,
                "contended": self.contended, "remeasured": self.remeasured,
                "export_s": round(self.export_s, 3), "load_s": round(self.load_s, 3),
                "timing_s": round(self.timing_s, 3), "seconds": round(self.seconds, 3),
                "peak_temp_mb": round(self.peak_temp_mb, 1), "peak_held_mb": round(self.peak_held_mb, 1)}


class Measurer:
    """Latencies of structures on one target, through the cache; missing ones are measured by
    the executor (in this process by default)."""

    def __init__(self, target: LatencyTarget, cache: LatencyCache, timing: TimingSettings | None,
                 limits: MeasureLimits | None, executor: Executor, owns_executor: bool) -> None:
        self.owns_executor = owns_executor    # a given executor is closed by whoever opened it
        self.target = target
        self.cache = cache
        self.timing = timing or TimingSettings.for_backend(target.backend)
        self.limits = limits or MeasureLimits()
        self.executor = executor
        self.counters = MeasureCounters()
        self.contended: set[str] = set()   # items measured while other programs held the CPU
        self.measured_here: set[str] = set()   # final for this measurer, contended or not

    def close(self) -> None:
        if self.owns_executor:
            self.executor.close()
        self.cache.close()

    def blocks(self, placed: Sequence[tuple[Block, int, int]], progress: Progress | None = None) -> list[float]:
        return self.measure(block_requests(placed), progress)

    def networks(self, structures: Sequence[Structure], image_size: tuple[int, int], scope: str,
                 progress: Progress | None = None) -> list[float]:
        return self.measure(network_requests(structures, image_size, scope), progress)

    def measure(self, requests: Sequence[Request], progress: Progress | None = None) -> list[float]:
        """Latency (ms) of each request: from the cache, else measured; each new measurement is in
        the cache as soon as it is returned. Progress counts exports and visits."""
        found = self.cache.get_many(r.item for r in requests)
        stale = {item for item, entry in found.items()
                 if entry.details.get("contended") and item not in self.measured_here}
        missing = list({r.item: r for r in requests if r.item not in found or r.item in stale}.values())
        self.counters.cached += len({r.item for r in requests}) - len(missing)
        self.counters.remeasured += len(stale)
        size = self.limits.window
        windows = [missing[start:start + size] for start in range(0, len(missing), size)]
        timing = self.referenced_timing() if missing else self.timing
        for request, entry in self.executor.run(self.target, timing, self.limits, windows, progress):
            self.cache.put(request.item, entry)
            self.measured_here.add(request.item)
            self.counters.add(entry)
            found[request.item] = entry
        for request in requests:
            if found[request.item].details.get("contended"):
                self.contended.add(request.item)
        return [found[r.item].latency_ms for r in requests]

    def referenced_timing(self) -> TimingSettings:
        """The timing settings with this device's yardstick reference (see `window`), measured into
        the cache the first time (a few seconds); on a target whose visits are not spread, as they are."""
        if not self.timing.spread:
            return self.timing
        yardsticks = yardstick_requests()
        found = self.cache.get_many(r.item for r in yardsticks)
        missing = [r for r in yardsticks if r.item not in found]
        if missing:
            for request, entry in self.executor.run(self.target, self.timing, self.limits, [missing], None):
                self.cache.put(request.item, entry)
                self.counters.add(entry, reference=True)
                found[request.item] = entry
        return replace(self.timing, reference_ms=tuple(found[r.item].latency_ms for r in yardsticks))


def open_measurer(target: LatencyTarget, cache_path: str | None, timing: TimingSettings | None = None,
                  limits: MeasureLimits | None = None, executor: Executor | None = None) -> Measurer:
    """A measurer on `target` whose cache rows are the measuring device's (this one's by default,
    the farm fleet's with a farm executor), this target's and this protocol's."""
    measuring = executor or InProcessExecutor()
    target = measuring.target(target)
    device, fingerprint = measuring.device()
    cache = LatencyCache(cache_path, device, fingerprint, target.cache_key())
    return Measurer(target, cache, timing, limits, measuring, owns_executor=executor is None)
