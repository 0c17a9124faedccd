"""`pipeline`: latency-budgeted search -> detector export -> INT8 calibration -> bench -> report.

Every stage writes into `<out>/<stage>/` and is skipped when run again with the
same settings (see `stages`); a changed upstream result changes the settings of
every stage after it, so stale outputs are never reused.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from ..atomic import write_bytes, write_text
from ..errors import MaedetError
from ..structure import Structure, load_structure
from ..zoo import resolve_structure
from .report import render_html, render_markdown
from .stages import StageResult, run_stage, settings_hash

Log = Callable[[str], None]
BENCH_ROUNDS = 6  # models take turns, so drifting machine speed hits them alike
PART_SEPARATOR = ": "  # bench rows are "<model>: network" and "<model>: end to end"


@dataclass(frozen=True)
class PipelineSettings:
    """`latency_ms` is the budget; or `speedup`: the budget is the baseline detector's
    measured latency divided by it, so the same command suits any machine."""

    latency_ms: float | None
    out: Path
    speedup: float | None = None
    image_size: int = 256
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
    method: str = "percentile"
    num_images: int = 32
    holdout: int = 8
    bench_seconds: float = 3.0
    latency_cache: str | None = None
    verify_top: int = 3
    threads: int | None = None
    quiet_wait: float = 10.0
    profile_networks: int = 24
    profile_whole: int = 8
    check_every: int = 40

    @property
    def baseline_runner(self) -> str:
        """The baseline's row name in the bench: its zoo name or file stem."""
        return f"{Path(self.baseline).stem} FP32"

    def check(self) -> None:
        if (self.latency_ms is None) == (self.speedup is None):
            raise MaedetError("give either --latency-ms (a budget in ms) or --speedup (a budget relative to the "
                              f"{self.baseline} detector), not {'both' if self.latency_ms else 'neither'}")
        if self.speedup is not None and not self.speedup > 0:
            raise MaedetError(f"--speedup must be positive, got {self.speedup:g}")
        if self.images is not None and not Path(self.images).is_dir():
            raise MaedetError(f"--images {self.images} is not a folder")


def resolve_backend(name: str) -> str:
    """'auto': TensorRT when it and a CUDA GPU are present, else ONNX Runtime."""
    if name != "auto":
        return name
    if importlib.util.find_spec("tensorrt") is None:
        return "onnxruntime"
    import torch
    return "tensorrt" if torch.cuda.is_available() else "onnxruntime"


def qdq_placement(backend: str) -> str:
    """Where Q/DQ goes for the backend that will run the INT8 model: ONNX Runtime's CPU
    provider fuses DQ -> Conv -> Q into QLinearConv only with quantized outputs ("all");
    TensorRT wants compute-layer inputs only, and fuses the rest itself."""
    return "tensorrt" if backend == "tensorrt" else "all"


def sample_images() -> Path:
    """Real photographs that scikit-image ships, for users who bring no --images."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise MaedetError("no --images given and scikit-image (which ships sample photographs) is not installed; "
                          "pass --images DIR or pip install scikit-image")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@dataclass
class PipelineResult:
    stages: dict[str, StageResult] = field(default_factory=dict)
    report: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def run_pipeline(settings: PipelineSettings, log: Log = print,
                 search_runner: Callable | None = None) -> PipelineResult:
    """Run (or resume) every stage. `search_runner(job)` runs the search with progress display;
    by default the plain library call."""
    from ..search.job import run_search_job

    settings.check()
    backend = resolve_backend(settings.backend)
    placement = qdq_placement(backend)
    images = settings.images or sample_images()
    init, baseline = _check_inputs(settings, backend, images)
    out = Path(settings.out)
    result = PipelineResult()
    baseline_ms = None
    if settings.speedup is not None:
        baseline_ms = measure_baseline(settings, backend, baseline)
        settings = replace(settings, latency_ms=round(baseline_ms / settings.speedup, 3))
        log(f"budget: {settings.latency_ms:g} ms, the {settings.baseline} detector's {baseline_ms:.2f} ms "
            f"/ {settings.speedup:g}")

    def stage(name: str, config: dict[str, Any], work: Callable[[Path], dict[str, Any]]) -> StageResult:
        done = run_stage(out, name, config, work)
        log(f"{name}: {'reused from a previous run' if done.reused else f'done in {done.seconds:.1f} s'}")
        result.stages[name] = done
        return done

    search_config = {"latency_ms": settings.latency_ms, "image_size": settings.image_size, "batch": settings.batch,
                     "backend": backend, "scope": settings.scope, "layers": settings.layers,
                     "iterations": settings.iterations,
                     "population": settings.population, "seed": settings.seed, "init": settings.init,
                     "verify_top": settings.verify_top, "threads": settings.threads,
                     "profile": [settings.profile_networks, settings.profile_whole],
                     "check_every": settings.check_every}
    search = stage("search", search_config,
                   lambda d: _search(settings, backend, init, d, search_runner or run_search_job))
    export_config = {"search": settings_hash(search.data), "image_size": settings.image_size,
                     "num_classes": settings.num_classes, "baseline": settings.baseline, "batch": settings.batch}
    export = stage("export", export_config, lambda d: _export(settings, baseline, search.directory, d))
    calib_config = {"export": settings_hash(export.data), "images": str(images), "method": settings.method,
                    "num_images": settings.num_images, "holdout": settings.holdout, "seed": settings.seed,
                    "placement": placement}
    calib = stage("calibrate", calib_config,
                  lambda d: _calibrate(settings, export.data["detector"], images, placement, d))
    bench_config = {"export": settings_hash(export.data), "calibrate": settings_hash(calib.data),
                    "backend": backend, "seconds": settings.bench_seconds, "batch": settings.batch,
                    "threads": settings.threads, "rounds": BENCH_ROUNDS}
    bench = stage("bench", bench_config, lambda d: _bench(settings, backend, export.data, calib.data, d))
    result.summary = _summary(settings, backend, images, search, export, calib, bench, baseline_ms)
    markdown = render_markdown(result.summary)
    write_text(out / "report.md", markdown)
    write_text(out / "report.html", render_html(markdown))
    write_text(out / "summary.json", json.dumps(result.summary, indent=2, default=str) + "\n")
    result.report = out / "report.md"
    return result


def _check_inputs(settings: PipelineSettings, backend: str, images: Path) -> tuple[Structure, Structure]:
    """Everything a later stage would trip on, checked before any stage runs or writes;
    returns the search's seed structure and the baseline's."""
    from ..calib.data import list_images
    from ..calib.int8 import METHODS

    _latency_target(settings, backend)
    structures = resolve_structure(settings.init), resolve_structure(settings.baseline)
    if settings.method not in METHODS:
        raise MaedetError(f"unknown calibration method {settings.method!r} (choose from {', '.join(METHODS)})")
    found = len(list_images(images))
    if found <= settings.holdout:
        raise MaedetError(f"{images} holds {found} image(s): INT8 needs more than the {settings.holdout} held out "
                          "(lower --holdout or add images)")
    return structures


def _latency_target(settings: PipelineSettings, backend: str):
    from ..search.measurer import LatencyTarget

    return LatencyTarget(backend, "fp32", settings.batch, settings.threads)


def measure_baseline(settings: PipelineSettings, backend: str, baseline: Structure) -> float:
    """The baseline detector's latency, measured as the search measures candidates (and cached with them)."""
    from ..search.measurer import TimingSettings, open_measurer

    size = (settings.image_size, settings.image_size)
    measurer = open_measurer(_latency_target(settings, backend), settings.latency_cache,
                             TimingSettings.for_backend(backend, patience=settings.quiet_wait))
    try:
        return measurer.networks([baseline], size, settings.scope)[0]
    finally:
        measurer.close()


def _search(settings: PipelineSettings, backend: str, init: Structure, directory: Path,
            runner: Callable) -> dict[str, Any]:
    from ..search.budgets import cost_budgets
    from ..search.evolution import SearchSettings
    from ..search.job import SearchJob
    from ..search.latency import LatencySettings
    from ..search.measurer import TimingSettings

    latency = LatencySettings(settings.latency_ms, _latency_target(settings, backend),
                              settings.scope, settings.verify_top, settings.check_every,
                              cache_path=settings.latency_cache, plan_networks=settings.profile_networks,
                              plan_whole=settings.profile_whole)
    job = SearchJob(directory, SearchSettings(image_size=(settings.image_size, settings.image_size),
                                              iterations=settings.iterations, population=settings.population,
                                              seed=settings.seed),
                    init, cost_budgets(layers=settings.layers or None), latency,
                    timing=TimingSettings.for_backend(backend, patience=settings.quiet_wait))
    outcome = runner(job)
    if not outcome.found:
        closest = outcome.verification.closest()
        raise MaedetError(f"search: no candidate measured within {settings.latency_ms:g} ms (closest "
                          f"{closest['measured_ms']:.2f} ms); raise --latency-ms or lower --image-size")
    report = outcome.report
    return {"best": report["best"], "latency": report["latency"], "candidates": report["candidates"]}


def _export(settings: PipelineSettings, baseline: Structure, search_dir: Path, directory: Path) -> dict[str, Any]:
    from ..export import export_onnx
    from ..models import create_detector
    from ..search.score import entropy_score
    from ..structure import compute_cost

    size = settings.image_size
    reports: dict[str, Any] = {}
    for name, spec in (("detector", load_structure(search_dir / "best_structure.json")), ("baseline", baseline)):
        model = create_detector(spec, num_classes=settings.num_classes, image_size=size)
        path = directory / f"{name}.onnx"
        reports[name] = str(path)
        reports[f"{name}_report"] = export_onnx(model, path, size, batch=settings.batch).to_dict()
    cost = compute_cost(baseline, size)
    reports["baseline_backbone"] = {"name": Path(settings.baseline).stem,
                                    "score": entropy_score(baseline, image_size=size),
                                    "params": cost.params, "flops": cost.flops, "layers": cost.layers}
    return reports


def _calibrate(settings: PipelineSettings, detector: str, images: Path, placement: str,
               directory: Path) -> dict[str, Any]:
    from ..calib.run import CalibrateSettings, run_calibration

    report = run_calibration(CalibrateSettings(
        model=Path(detector), images=images, out=directory / "detector.int8.onnx", method=settings.method,
        num_images=settings.num_images, holdout=settings.holdout, seed=settings.seed, placement=placement,
        report=directory / "calibration.json"))
    return {"int8": str(directory / "detector.int8.onnx"), "report": report}


def _bench(settings: PipelineSettings, backend: str, export: dict[str, Any], calib: dict[str, Any],
           directory: Path) -> dict[str, Any]:
    """Every model twice in one run: the network alone (what the budget covers) and end to end with NMS."""
    import onnx

    from ..backends import open_runner
    from ..bench import run_bench, write_report
    from ..calib.graph import cut_before_nms

    models = {"searched FP32": export["detector"], "searched INT8": calib["int8"],
              settings.baseline_runner: export["baseline"]}
    runners = {}
    try:
        for index, (label, path) in enumerate(models.items()):
            network = cut_before_nms(onnx.load(path))
            if network is not None:
                network_path = directory / f"model{index}.network.onnx"
                write_bytes(network_path, network.SerializeToString())
                runners[f"{label}{PART_SEPARATOR}network"] = open_runner(network_path, backend, settings.threads)
            runners[f"{label}{PART_SEPARATOR}end to end"] = open_runner(path, backend, settings.threads)
        result = run_bench(runners, model=export["detector"], rounds=BENCH_ROUNDS, duration=settings.bench_seconds)
    finally:
        for runner in runners.values():
            runner.close()
    write_report(result, directory / "bench.json")
    write_report(result, directory / "bench.md")
    return result.to_dict()


def _flags(settings: PipelineSettings, names: Sequence[str]) -> str:
    """`--name value` for each of `names` whose setting differs from its default."""
    defaults = PipelineSettings(latency_ms=None, out=settings.out)
    return "".join(f" --{name.replace('_', '-')} {getattr(settings, name)}" for name in names
                   if getattr(settings, name) != getattr(defaults, name))


def reproduce_commands(settings: PipelineSettings, backend: str, images: Path) -> list[str]:
    """The pipeline command, then the same run as separate commands (stage by stage)."""
    out, size = Path(settings.out), settings.image_size
    tuning = ("threads", "quiet_wait", "latency_cache")
    search_flags = (f" --layers {settings.layers}" if settings.layers else "") + _flags(
        settings, ("iterations", "population", "seed", "init", "batch", "verify_top", *tuning))
    export = f"--image-size {size} --num-classes {settings.num_classes} --batch {settings.batch}"
    return [
        "maedet-deploy pipeline " + (f"--speedup {settings.speedup:g}" if settings.speedup is not None else
                                     f"--latency-ms {settings.latency_ms:g}")
        + f" --image-size {size} --backend {backend}"
        + _flags(settings, ("scope", "layers", "iterations", "population", "seed", "init", "baseline",
                            "num_classes", "batch", "images", "method", "num_images", "holdout", "bench_seconds",
                            *tuning))
        + f" --out {out}",
        "# the same, stage by stage:",
        f"maedet-deploy search --latency-ms {settings.latency_ms:g} --latency-scope {settings.scope} "
        f"--image-size {size} --backend {backend}{search_flags} --out {out / 'search'}",
        f"maedet-deploy export {out / 'search' / 'best_structure.json'} {export} "
        f"--out {out / 'export' / 'detector.onnx'}",
        f"maedet-deploy export {settings.baseline} {export} --out {out / 'export' / 'baseline.onnx'}",
        f"maedet-deploy calibrate {out / 'export' / 'detector.onnx'} --images {images} --method {settings.method} "
        f"--placement {qdq_placement(backend)} --num-images {settings.num_images} --holdout {settings.holdout} "
        f"--seed {settings.seed} "
        f"--out {out / 'calibrate' / 'detector.int8.onnx'} --report {out / 'calibrate' / 'calibration.json'}",
        *(f"maedet-deploy bench {model} --backend {backend} --duration {settings.bench_seconds:g}"
          for model in (out / "export" / "detector.onnx", out / "calibrate" / "detector.int8.onnx",
                        out / "export" / "baseline.onnx")),
    ]


def _summary(settings: PipelineSettings, backend: str, images: Path, search: StageResult, export: StageResult,
             calib: StageResult, bench: StageResult, baseline_ms: float | None) -> dict[str, Any]:
    from ..calib.graph import is_nms_input

    latency = search.data["latency"]
    rows = bench.data["results"]
    for row in rows:
        row["model"], row["part"] = row["runner"].split(PART_SEPARATOR)
    baseline = {row["part"]: row["median_ms"] for row in rows if row["model"] == settings.baseline_runner}
    for row in rows:
        row["speedup_vs_baseline"] = baseline[row["part"]] / row["median_ms"]
    report = calib.data["report"]
    int8 = report.get("int8") or {}
    outputs = report.get("outputs") or {}
    # Errors before NMS are smooth; after NMS a tiny change can swap a whole detection.
    raw = {name: o for name, o in outputs.items() if is_nms_input(name)} or outputs
    agreement = (report.get("detection") or {}).get("agreement") or {}
    seconds = latency["time_s"]
    return {
        "out": str(settings.out), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "latency_ms": settings.latency_ms, "speedup": settings.speedup, "baseline_ms": baseline_ms,
        "image_size": settings.image_size, "batch": settings.batch,
        "search": {"best": search.data["best"], "candidates": search.data["candidates"],
                   "seconds": search.seconds,
                   "time_s": {key: seconds.get(key) for key in ("profile", "scoring", "predicting", "measuring")},
                   "latency": {"scope": settings.scope, "backend": backend, "target": latency["settings"]["target"],
                               "seed_ms": latency["seed_measured_ms"], **latency["winner"],
                               "measurements": latency["measurements"]["measured"],
                               "cached": latency["measurements"]["cached"]}},
        "baseline": export.data["baseline_backbone"],
        "pareto_png": str(Path("search") / "pareto.png"),
        "bench": {"rows": rows, "baseline": settings.baseline_runner, "seconds": settings.bench_seconds,
                  "rounds": bench.data["settings"]["rounds"],
                  "warnings": bench.data.get("warnings", [])},
        "calibration": {"method": settings.method, "placement": int8.get("placement"),
                        "calibration_images": report.get("calibration_samples"),
                        "holdout_images": report.get("held_out"), "images": str(images),
                        "quantized_layers": (int8.get("qdq") or {}).get("quantized_layers"),
                        "float_layers": len((int8.get("qdq") or {}).get("float_layers") or []),
                        "raw_min_cosine": min((o["cosine"] for o in raw.values() if o.get("cosine") is not None),
                                              default=None),
                        "raw_min_sqnr_db": min((o["sqnr_db"] for o in raw.values() if o.get("sqnr_db") is not None),
                                               default=None),
                        "map50": agreement.get("map50"), "map": agreement.get("map50_95")},
        "fingerprint": bench.data["fingerprint"],
        "stages": {name: {"seconds": stage.seconds, "reused": stage.reused}
                   for name, stage in (("search", search), ("export", export), ("calibrate", calib),
                                       ("bench", bench))},
        "commands": reproduce_commands(settings, backend, images),
    }
