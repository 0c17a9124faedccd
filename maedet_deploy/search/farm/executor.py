"""The farm executor: windows of requests run as Ray tasks on a fleet of devices, each measured
entry handed back (with the node that measured it) as soon as its window completes.

Faults: a node that dies mid-window -> Ray runs the task again on another node
of the fleet (`max_retries`); the driver sees one result per window, so nothing
is lost or counted twice. A window that runs past `timeout_s` (counted from its
submission; no more windows are in flight than devices are alive, so it is
running, not queued) is cancelled and sent once more; if that one hangs too,
the run finishes every other window and then reports the hung requests.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator, Sequence

from ...errors import MaedetError, first_line
from ...progress import Progress
from ..latency_cache import Entry
from ..requests import Request
from ..target import LatencyTarget, MeasureLimits, TimingSettings
from .connect import connect
from .fleet import Fleet, choose_device, device_nodes, form_fleet, probe_nodes
from .task import WindowResult, measure_task

DEFAULT_TIMEOUT_S = 1800.0   # per window; a TensorRT engine build takes tens of seconds per request
NODE_RETRIES = 3             # Ray's retries of a window whose node or worker process died
POLL_S = 1.0                 # how often hung windows are looked for and progress is reported
WINDOW = 8    # requests per task at most: visits spread over the window; a lost node costs at most one; small
              # enough that the last windows do not leave devices idle (bench/farm_scaling.py)


def deal_windows(requests: Sequence[Request], most: int, devices: int) -> list[list[Request]]:
    """`requests` in windows of `most`, except that what is left for the last round (at most
    `devices` x `most`) is shared by 2 x `devices` smaller windows, so devices finish close
    together instead of one measuring a whole window while the others idle. Requests are dealt
    across the windows (a profile lists all blocks, then the costly networks), so every window
    holds a mix."""
    most, devices, total = max(1, most), max(1, devices), len(requests)
    full = min(total // most, max(0, math.ceil((total - devices * most) / most)))
    rest = total - full * most
    tail = min(rest, 2 * devices)
    sizes = [most] * full + [rest // tail + (index < rest % tail) for index in range(tail)]
    mixed = [request for start in range(len(sizes)) for request in requests[start::len(sizes)]]
    cuts = list(itertools.accumulate([0] + sizes))
    return [mixed[begin:end] for begin, end in zip(cuts, cuts[1:])]


@dataclass
class _Flight:
    window: Sequence[Request]
    attempt: int
    submitted: float


class FarmExecutor:
    """The measurer's executor on the fleet of one device kind of a Ray farm: `run` yields each
    (request, entry) as its window completes; `device()` is the fleet's fingerprint (the latency
    cache's device key); `report()` says which node measured what."""

    def __init__(self, ray: ModuleType, fleet: Fleet, address: str, owns_connection: bool,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not timeout_s > 0:
            raise MaedetError(f"the farm's timeout must be positive, got {timeout_s:g}", setting="farm")
        self.ray = ray
        self.fleet = fleet
        self.address = address
        self.timeout_s = timeout_s
        self._owns_connection = owns_connection
        self._remote = ray.remote(measure_task)
        self._labels = {node.node_id: node.label for node in fleet.nodes}
        self.by_node: dict[str, list[str]] = defaultdict(list)
        self.peak_rss_mb: dict[str, float] = {}
        self.timed_out: list[str] = []          # first attempts cancelled past the timeout (items)
        self.measured = 0
        self.devices = len(fleet.nodes)
        self._flights: dict[Any, _Flight] = {}     # windows in flight, by their Ray object ref
        self._started: float | None = None

    @property
    def busy(self) -> int:
        """Devices measuring now: one window each."""
        return len(self._flights)

    @property
    def fingerprint_id(self) -> str:
        return self.fleet.fingerprint_id

    def device(self) -> tuple[str, dict[str, Any]]:
        """The fleet's fingerprint: every node measures as this device."""
        return self.fleet.fingerprint_id, dict(self.fleet.fingerprint)

    def target(self, target: LatencyTarget) -> LatencyTarget:
        """`target` as the fleet measures it: ONNX Runtime threads resolved on the devices, not here."""
        backends = self.fleet.nodes[0].probe.get("backends", ["onnxruntime"])
        if target.backend not in backends:
            raise MaedetError(f"the farm's {self.fleet.device} devices cannot run {target.backend} "
                              f"(they have {', '.join(backends)})", setting="backend")
        if target.backend == "onnxruntime" and target.threads is None:
            return replace(target, threads=int(self.fleet.fingerprint["usable_cores"]))
        return target

    def run(self, target: LatencyTarget, timing: TimingSettings, limits: MeasureLimits,
            windows: Iterable[Sequence[Request]], progress: Progress | None = None
            ) -> Iterator[tuple[Request, Entry]]:
        """Measure the windows' requests on the fleet, dealt again in windows of at most `WINDOW`
        across the devices; yields each (request, entry) as its window completes."""
        target = self.target(target)
        requests = [request for window in windows for request in window]
        dealt = deal_windows(requests, min(WINDOW, limits.window), self.devices)
        queue = deque((window, 1) for window in dealt if window)
        total = sum(len(window) for window, _ in queue)
        flights = self._flights = {}
        hung: list[_Flight] = []
        self._started = self._started or time.perf_counter()
        done = 0
        try:
            while queue or flights:
                self._submit(queue, flights, target, timing, limits)
                ready, _ = self.ray.wait(list(flights), num_returns=1, timeout=self._wait_s())
                for ref in ready:
                    for measured in self._collect(ref, flights.pop(ref)):
                        done += 1
                        yield measured
                hung += self._expire(queue, flights)
                if progress:
                    progress(done, total, self.status())
        finally:
            for ref in flights:
                self.ray.cancel(ref, force=True)
            flights.clear()
        if hung:
            items = [request.item for flight in hung for request in flight.window]
            raise MaedetError(f"{len(items)} measurement(s) hung past {self.timeout_s:g} s twice on the farm at "
                              f"{self.address} and were not measured: {', '.join(items[:3])}"
                              + (" ..." if len(items) > 3 else ""), setting="farm")

    def _submit(self, queue: deque, flights: dict, target: LatencyTarget, timing: TimingSettings,
                limits: MeasureLimits) -> None:
        """Send windows while devices are free: one task per device in flight, no queue on Ray's side."""
        if queue and len(flights) >= self.devices:
            return
        self.devices = self._live_devices() if queue else self.devices
        while queue and len(flights) < max(1, self.devices):
            window, attempt = queue.popleft()
            ref = self._remote.options(num_cpus=0, resources={self.fleet.resource: 1}, max_retries=NODE_RETRIES,
                                       retry_exceptions=False).remote(target, timing, limits, window)
            flights[ref] = _Flight(window, attempt, time.perf_counter())

    def _wait_s(self) -> float:
        """Until the next window's timeout, at most POLL_S."""
        now = time.perf_counter()
        return max(0.0, min([POLL_S] + [flight.submitted + self.timeout_s - now for flight in self._flights.values()]))

    def _live_devices(self) -> int:
        resource = self.fleet.resource
        return sum(1 for node in self.ray.nodes() if node.get("Alive") and resource in node.get("Resources", {}))

    def _expire(self, queue: deque, flights: dict) -> list[_Flight]:
        """Cancel windows past the timeout; a first attempt goes to the front of the queue again.
        Returns the second attempts that hung too."""
        now, hung = time.perf_counter(), []
        for ref, flight in list(flights.items()):
            if now - flight.submitted <= self.timeout_s:
                continue
            self.ray.cancel(ref, force=True)
            del flights[ref]
            if flight.attempt == 1:
                self.timed_out += [request.item for request in flight.window]
                queue.appendleft((flight.window, 2))
            else:
                hung.append(flight)
        return hung

    def _collect(self, ref: Any, flight: _Flight) -> Iterator[tuple[Request, Entry]]:
        result = self._result(ref, flight.window)
        if result.fingerprint_id != self.fingerprint_id:
            raise MaedetError(f"a window came back from node {self._label(result)} with fingerprint "
                              f"{result.fingerprint_id}, not the fleet's {self.fingerprint_id}: the node changed "
                              "since it joined; restart its worker", setting="device")
        label = self._label(result)
        self.peak_rss_mb[label] = max(self.peak_rss_mb.get(label, 0.0), result.peak_rss_mb)
        for request, entry in zip(flight.window, result.entries):
            entry = replace(entry, details={**entry.details, "farm_node": label})
            self.by_node[label].append(request.item)
            self.measured += 1
            yield request, entry

    def _result(self, ref: Any, window: Sequence[Request]) -> WindowResult:
        """The task's result; a user error raised on the node comes back as that error."""
        from ray.exceptions import RayError, RayTaskError

        try:
            return self.ray.get(ref)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, MaedetError):
                raise MaedetError(cause.message, cause.setting) from None
            raise MaedetError(f"measuring {window[0].item} (and {len(window) - 1} more) failed on the farm: "
                              f"{first_line(cause or exc)}", setting="farm") from None
        except RayError as exc:
            raise MaedetError(f"measuring {window[0].item} (and {len(window) - 1} more) was lost on the farm "
                              f"after {NODE_RETRIES} retries: {first_line(exc)}", setting="farm") from None

    def _label(self, result: WindowResult) -> str:
        return self._labels.get(result.node_id, f"{result.host}/{result.node_id[:8]}")

    def per_minute(self) -> float:
        elapsed = time.perf_counter() - self._started if self._started else 0.0
        return 60.0 * self.measured / elapsed if elapsed > 0 else 0.0

    def status(self) -> str:
        """Devices busy and idle, and the rate so far: the progress line of a farm run."""
        return (f"{self.fleet.device}: {self.busy} busy, {max(0, self.devices - self.busy)} idle, "
                f"{self.per_minute():.1f} measurements/min")

    def report(self) -> dict[str, Any]:
        return {"address": self.address, "device": self.fleet.device, "fingerprint_id": self.fingerprint_id,
                "nodes": [node.label for node in self.fleet.nodes], "refused": list(self.fleet.refused),
                "measured": self.measured, "measurements_per_minute": round(self.per_minute(), 2),
                "timed_out_once": list(self.timed_out),
                "by_node": {label: {"measured": len(items), "items": items,
                                    "peak_rss_mb": round(self.peak_rss_mb.get(label, 0.0), 1)}
                            for label, items in self.by_node.items()}}

    def close(self) -> None:
        if self._owns_connection and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self) -> "FarmExecutor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_farm(address: str, device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
              warn: Callable[[str], None] | None = None) -> FarmExecutor:
    """Connect to the Ray farm at `address` and form the fleet of `device` (needed when the farm
    holds several kinds); each refused node is reported through `warn`, one line each."""
    ray, owned = connect(address)
    try:
        nodes = device_nodes(ray)
        name = choose_device(nodes, device, address)
        probed, unanswered = probe_nodes(ray, [node for node in nodes if node.device == name])
        fleet = form_fleet(probed, name, address, unanswered)
        executor = FarmExecutor(ray, fleet, address, owned, timeout_s)
    except BaseException:
        if owned:
            ray.shutdown()
        raise
    for line in fleet.refused:
        (warn or (lambda _: None))(line)
    return executor
