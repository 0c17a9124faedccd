"""What a pipeline run is asked for (`PipelineSettings`) and what that resolves to before any stage
runs (`Plan`): the backend 'auto' stands for, the calibration images, the seed and baseline
structures checked at the input size, and content digests of every input, so a stage is reused
only when the files behind it are unchanged, not just their names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backends import resolve_backend
from ..calib import CALIBRATION_METHODS, DEFAULT_FLOAT_MACS, DEFAULT_METHOD, sample_images
from ..digest import sha256_file, sha256_json
from ..errors import MaedetError
from ..ranges import check_range
from ..structure import ImageSize, Structure, as_hw
from ..structure.limits import Limits, check_activations, check_input_size
from ..zoo import resolve_structure

# Library name -> (lowest, highest) accepted value; None: unbounded on that side.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "latency_ms": (1e-6, None), "speedup": (1e-6, None), "batch": (1, 4096), "layers": (0, Limits().layers),
    "iterations": (1, None), "population": (1, None), "seed": (0, 2**63 - 1), "num_classes": (1, Limits().channels),
    "num_images": (1, None), "holdout": (0, None), "float_macs": (0, 0.99), "bench_seconds": (1e-3, 86_400),
    "verify_top": (1, None),
    "threads": (1, 4096), "quiet_wait": (0, 86_400), "round_s": (1e-3, 60), "profile_walks": (1, None),
    "latency_check_every": (1, None),
}


@dataclass(frozen=True)
class PipelineSettings:
    """`latency_ms` is the budget; or `speedup`: the budget is the baseline detector's
    measured latency divided by it, so the same command suits any machine."""

    latency_ms: float | None
    out: Path
    speedup: float | None = None
    image_size: ImageSize = 256  # 256, or (height, width)
    batch: int = 1
    backend: str = "auto"
    scope: str = "detector"
    layers: int = 91             # the paper's detection recipe; 0: no limit (entropy then favours depth)
    iterations: int = 10_000
    population: int = 64
    seed: int = 0
    init: str = "maedet-seed"
    baseline: str = "resnet50"
    num_classes: int = 80
    images: Path | None = None
    method: str = DEFAULT_METHOD
    float_macs: float = DEFAULT_FLOAT_MACS
    num_images: int = 32
    holdout: int = 8
    bench_seconds: float = 3.0
    latency_cache: str | None = None
    verify_top: int = 3
    threads: int | None = None
    quiet_wait: float = 10.0
    round_s: float = 0.1         # seconds each visit times a thing for
    profile_walks: int = 12
    latency_check_every: int = 40
    farm: str | None = None      # a Ray farm's address: measure there, on its `device` kind
    device: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """The input size as (height, width)."""
        return as_hw(self.image_size)

    @property
    def baseline_runner(self) -> str:
        """The baseline's row name in the bench: its zoo name or file stem."""
        return f"{Path(self.baseline).stem} FP32"

    def check(self) -> None:
        """Every setting, in library terms (each error names its setting), before anything runs."""
        if (self.latency_ms is None) == (self.speedup is None):
            raise MaedetError(f"give a budget in ms, or speedup (a budget relative to the {self.baseline} "
                              f"detector), not {'both' if self.latency_ms is not None else 'neither'}", "latency_ms")
        for name, (low, high) in _RANGES.items():
            check_range(getattr(self, name), name, low, high)
        height, width = self.size
        if min(height, width) < 1:
            raise MaedetError(f"must be positive, got {height}x{width}", "image_size")
        if self.images is not None and not Path(self.images).is_dir():
            raise MaedetError(f"{self.images} is not a folder", "images")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise MaedetError(f"{self.out} exists and is not a folder", "out")
        if self.latency_cache is not None and Path(self.latency_cache).is_dir():
            raise MaedetError(f"{self.latency_cache} is a folder; give the cache file's path", "latency_cache")


@dataclass(frozen=True)
class Plan:
    """The settings resolved, before any stage runs or writes."""

    settings: PipelineSettings
    backend: str              # where the bench runs, and what the INT8 model's Q/DQ placement is for
    images: Path
    init: Structure
    baseline: Structure
    digests: dict[str, str]   # content of the init and baseline structures and of the image set


def make_plan(settings: PipelineSettings) -> Plan:
    """Check everything a later stage would trip on; raises MaedetError before anything is written.
    The settings' own checks come first: they need no heavy import."""
    settings.check()
    from ..export import SCOPES
    from ..inputs import list_images

    if settings.scope not in SCOPES:
        raise MaedetError(f"unknown scope {settings.scope!r} (choose from {', '.join(SCOPES)})", "scope")
    backend = resolve_backend(settings.backend)
    if settings.method not in CALIBRATION_METHODS:
        raise MaedetError(f"unknown calibration method {settings.method!r} (choose from "
                          f"{', '.join(CALIBRATION_METHODS)})", "method")
    init, baseline = (_structure_at(spec, settings, name) for name, spec in
                      (("init", settings.init), ("baseline", settings.baseline)))
    images = Path(settings.images) if settings.images is not None else sample_images()
    files = list_images(images)
    if len(files) <= settings.holdout:
        raise MaedetError(f"{images} holds {len(files)} image(s): INT8 needs more than the {settings.holdout} "
                          "held out", "holdout")
    digests = {"init": sha256_json(init.to_dicts()), "baseline": sha256_json(baseline.to_dicts()),
               "images": sha256_json([[path.relative_to(images).as_posix(), path.stat().st_size, sha256_file(path)]
                                      for path in files])}
    return Plan(settings, backend, images, init, baseline, digests)


def _structure_at(spec: str, settings: PipelineSettings, setting: str) -> Structure:
    """A structure from a zoo name or file, checked at the run's input size and batch."""
    try:
        structure = resolve_structure(spec)
        check_activations(structure, check_input_size(structure, settings.size), settings.batch)
    except MaedetError as exc:
        raise MaedetError(f"{spec}: {exc.message}" if exc.setting else exc.message, exc.setting or setting) from None
    return structure
