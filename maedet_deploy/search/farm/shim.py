"""INTEGRATION SHIM until issue 15's `Measurer(target, cache, timing, executor=...)` exists: today's
Measurer whose batches are measured on a farm, each entry written to the cache as it arrives.

At integration `FarmMeasurer(farm, cache_path, target, timing)` becomes
`Measurer(farm.target(target), LatencyCache(cache_path, farm.fingerprint_id, farm.fingerprint,
farm.target(target).cache_key()), timing, executor=farm)`, and this file goes.
"""

from __future__ import annotations

from typing import Callable, Sequence

from ..latency_cache import Entry, LatencyCache
from ..measurer import LatencyTarget, Measurer, Request, TimingSettings
from .executor import FarmExecutor

DEFAULT_WINDOW = 8    # requests per task: visits spread over the window; a lost node costs at most one; small
                     # enough that the last windows do not leave devices idle (bench/farm_scaling.py)


class FarmMeasurer(Measurer):
    """A Measurer on the farm's fleet: cache rows keyed by the fleet's fingerprint, threads resolved
    on the devices, missing things measured in windows of at most `window` requests across the fleet."""

    def __init__(self, farm: FarmExecutor, cache_path: str | None, target: LatencyTarget,
                 timing: TimingSettings | None = None, window: int = DEFAULT_WINDOW) -> None:
        target = farm.target(target)
        cache = LatencyCache(cache_path, farm.fingerprint_id, farm.fingerprint, target.cache_key())
        super().__init__(target, cache, timing)
        self.farm = farm
        self.window = max(1, window)

    def _measure_batch(self, requests: Sequence[Request], step: Callable[..., None]) -> list[Entry]:
        found: dict[str, Entry] = {}
        for measured in self.farm.run(self.target, self.timing, self.farm.deal(requests, self.window)):
            self.cache.put(measured.request.item, measured.entry)   # committed as it arrives
            found[measured.request.item] = measured.entry
            self._count(measured.entry)
            for _ in range(1 + self.timing.visits):
                step(f"{self.farm.status()} {measured.request.item}")
        return [found[request.item] for request in requests]

    def _count(self, entry: Entry) -> None:
        self.counters.measured += 1
        self.counters.contended += bool(entry.details.get("contended"))
        self.counters.export_s += entry.export_s
        self.counters.timing_s += entry.measure_s
