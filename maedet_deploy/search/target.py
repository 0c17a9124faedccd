"""Where latency is measured (`LatencyTarget`), how each thing is timed (`TimingSettings`) and the
memory and temporary disk a measuring process may hold (`MeasureLimits`). Plain, picklable values,
so a measurement can run in any process (see `window.measure_window`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import MaedetError

TARGET_PRECISIONS = ("fp32", "fp16", "int8")   # what a latency target may time (int8 is refused)
PROTOCOL = "visits-v4"   # cache rows of an older timing protocol are never mixed with these


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
            raise MaedetError(f"unknown backend {self.backend!r} (choose from {', '.join(BACKENDS)})",
                              setting="backend")
        if self.precision not in TARGET_PRECISIONS:
            raise MaedetError(f"unknown precision {self.precision!r} (choose from {', '.join(TARGET_PRECISIONS)})",
                              setting="precision")
        if self.backend == "onnxruntime" and self.precision != "fp32":
            raise MaedetError(f"{self.precision} needs the tensorrt backend: ONNX Runtime runs the exported fp32 "
                              "graph in fp32", setting="precision")
        if self.precision == "int8":
            raise MaedetError("int8 needs a calibrated Q/DQ graph per candidate, which search does not build; "
                              "search for fp16 (or fp32) latency and calibrate the winner", setting="precision")
        if self.batch < 1:
            raise MaedetError(f"must be >= 1, got {self.batch}", setting="batch")
        if self.threads is not None and self.threads < 1:
            raise MaedetError(f"must be >= 1, got {self.threads}", setting="threads")

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

    `spread`: visit every thing of a window once per pass (see `window` for why);
    off, each thing's rounds run back to back (for TensorRT, where a runner is an
    engine build and a GPU has no such spells). A visit is quiet on a CPU backend
    when the process got the CPU time it asked for (CPU time >= `quiet` x threads x
    wall time); things short of quiet visits get more passes for up to `patience`
    seconds, then they are set aside and measured again `retries` times in a later
    window; what is still short after that is kept with the best visit and marked
    contended (left out of every fit, and measured again by the next search that
    needs it). With no patience (never wait), nothing is timed again either.
    `min_gap_s` holds passes apart for small windows. `reference_ms`: the
    yardsticks' reference latencies on this device (`requests.yardstick_requests`);
    given, a spread window times the yardsticks beside its things and expresses
    its latencies at the reference speed (see `window`)."""

    visits: int = 5
    round_s: float = 0.1
    min_iterations: int = 3
    warmup_s: float = 0.05      # before a runner's first round; later visits warm up with one call
    quiet: float = 0.9
    patience: float = 10.0
    retries: int = 1
    backoff_s: float = 0.25
    spread: bool = True
    min_gap_s: float = 0.0
    reference_ms: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.visits < 1 or self.min_iterations < 1 or self.retries < 0:
            raise MaedetError("timing needs >= 1 visit, >= 1 iteration per round and >= 0 retries")
        if not 0 < self.round_s <= 60:
            raise MaedetError(f"must be > 0 and <= 60 seconds, got {self.round_s:g}", setting="round_s")
        if self.patience < 0:
            raise MaedetError(f"must be >= 0 seconds, got {self.patience:g}", setting="quiet_wait")

    @property
    def attempts(self) -> int:
        """Times a thing short of quiet visits is timed in all."""
        return 1 + (self.retries if self.patience > 0 else 0)

    @classmethod
    def for_backend(cls, backend: str, **overrides: Any) -> "TimingSettings":
        """The defaults for a backend: TensorRT times each engine once, in consecutive rounds."""
        if backend == "tensorrt":
            overrides = {"visits": 3, "spread": False, **overrides}
        return cls(**overrides)


@dataclass(frozen=True)
class MeasureLimits:
    """What a measuring process may hold at once. `window`: things timed together (their visits
    spread over the window's passes; a killed run loses at most the window in flight).
    `memory_mb`: models kept loaded between visits (counted by their weights); the others are
    rebuilt from a compact form (the graph without its weights) for every visit. `disk_mb`:
    temporary files (one exported model at a time, removed as soon as it is read); `temp_dir`:
    where they go (default: the system's)."""

    window: int = 48
    memory_mb: float = 640.0
    disk_mb: float = 1024.0
    temp_dir: str | None = None

    def __post_init__(self) -> None:
        if self.window < 1:
            raise MaedetError(f"must be >= 1, got {self.window}", setting="measure_window")
        if self.memory_mb < 0:
            raise MaedetError(f"must be >= 0, got {self.memory_mb:g}", setting="measure_memory_mb")
        if self.disk_mb <= 0:
            raise MaedetError(f"must be > 0, got {self.disk_mb:g}", setting="measure_disk_mb")
