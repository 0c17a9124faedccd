"""`pipeline`: latency-budgeted search -> detector export -> INT8 calibration -> bench -> report.

Every stage writes into `<out>/<stage>/` and is skipped when run again with the
same settings (see `stages`); a changed upstream result changes the settings of
every stage after it, so stale outputs are never reused.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..atomic import write_text
from ..errors import MaedetError
from ..structure import load_structure
from ..zoo import resolve_structure
from .report import render_html, render_markdown
from .stages import StageResult, run_stage, settings_hash

Log = Callable[[str], None]


@dataclass(frozen=True)
class PipelineSettings:
    latency_ms: float
    out: Path
    image_size: int = 256
    batch: int = 1
    backend: str = "auto"
    scope: str = "detector"
    iterations: int = 10_000
    population: int = 64
    seed: int = 0
    init: str = "maedet-seed"
    baseline: str = "resnet50"
    num_classes: int = 80
    images: Path | None = None
    method: str = "entropy"
    num_images: int = 32
    holdout: int = 8
    bench_seconds: float = 3.0
    latency_cache: str | None = None
    verify_top: int = 3

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def resolve_backend(name: str) -> str:
    """'auto': TensorRT when it and a CUDA GPU are present, else ONNX Runtime."""
    if name != "auto":
        return name
    if importlib.util.find_spec("tensorrt") is None:
        return "onnxruntime"
    import torch
    return "tensorrt" if torch.cuda.is_available() else "onnxruntime"


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

    backend = resolve_backend(settings.backend)
    images = settings.images or sample_images()
    if settings.images is not None and not Path(settings.images).is_dir():
        raise MaedetError(f"--images {settings.images} is not a folder")
    out = Path(settings.out)
    result = PipelineResult()

    def stage(name: str, config: dict[str, Any], work: Callable[[Path], dict[str, Any]]) -> StageResult:
        done = run_stage(out, name, config, work)
        log(f"{name}: {'reused from a previous run' if done.reused else f'done in {done.seconds:.1f} s'}")
        result.stages[name] = done
        return done

    search_config = {"latency_ms": settings.latency_ms, "image_size": settings.image_size, "batch": settings.batch,
                     "backend": backend, "scope": settings.scope, "iterations": settings.iterations,
                     "population": settings.population, "seed": settings.seed, "init": settings.init,
                     "verify_top": settings.verify_top}
    search = stage("search", search_config,
                   lambda d: _search(settings, backend, d, search_runner or run_search_job))
    export_config = {"search": settings_hash(search.data), "image_size": settings.image_size,
                     "num_classes": settings.num_classes, "baseline": settings.baseline, "batch": settings.batch}
    export = stage("export", export_config, lambda d: _export(settings, search.directory, d))
    calib_config = {"export": settings_hash(export.data), "images": str(images), "method": settings.method,
                    "num_images": settings.num_images, "holdout": settings.holdout, "seed": settings.seed}
    calib = stage("calibrate", calib_config, lambda d: _calibrate(settings, export.data["detector"], images, d))
    bench_config = {"export": settings_hash(export.data), "calibrate": settings_hash(calib.data),
                    "backend": backend, "seconds": settings.bench_seconds, "batch": settings.batch}
    bench = stage("bench", bench_config, lambda d: _bench(settings, backend, export.data, calib.data, d))
    result.summary = _summary(settings, backend, images, search, calib, bench)
    markdown = render_markdown(result.summary)
    write_text(out / "report.md", markdown)
    write_text(out / "report.html", render_html(markdown))
    write_text(out / "summary.json", json.dumps(result.summary, indent=2, default=str) + "\n")
    result.report = out / "report.md"
    return result


def _search(settings: PipelineSettings, backend: str, directory: Path, runner: Callable) -> dict[str, Any]:
    from ..search.evolution import SearchSettings
    from ..search.job import SearchJob
    from ..search.latency import LatencySettings, LatencyTarget

    job = SearchJob(directory, SearchSettings(image_size=(settings.image_size, settings.image_size),
                                              iterations=settings.iterations, population=settings.population,
                                              seed=settings.seed),
                    resolve_structure(settings.init),
                    latency=LatencySettings(settings.latency_ms, LatencyTarget(backend, "fp32", settings.batch),
                                            settings.scope, settings.verify_top, cache_path=settings.latency_cache))
    outcome = runner(job)
    if not outcome.found:
        closest = outcome.verification.closest()
        raise MaedetError(f"search: no candidate measured within {settings.latency_ms:g} ms (closest "
                          f"{closest['measured_ms']:.2f} ms); raise --latency-ms or lower --image-size")
    report = outcome.report
    return {"best": report["best"], "latency": report["latency"], "candidates": report["candidates"],
            "wall_seconds": report["wall_seconds"], "structure": str(directory / "best_structure.json"),
            "pareto_png": str(directory / "pareto.png")}


def _export(settings: PipelineSettings, search_dir: Path, directory: Path) -> dict[str, Any]:
    from ..export import export_onnx
    from ..models import create_detector

    size = settings.image_size
    reports = {}
    for name, spec in (("detector", load_structure(search_dir / "best_structure.json")),
                       ("baseline", settings.baseline)):
        model = create_detector(spec, num_classes=settings.num_classes, image_size=size)
        path = directory / f"{name}.onnx"
        reports[name] = str(path)
        reports[f"{name}_report"] = export_onnx(model, path, size, batch=settings.batch).to_dict()
    return reports


def _calibrate(settings: PipelineSettings, detector: str, images: Path, directory: Path) -> dict[str, Any]:
    from ..calib.run import CalibrateSettings, run_calibration

    report = run_calibration(CalibrateSettings(
        model=Path(detector), images=images, out=directory / "detector.int8.onnx", method=settings.method,
        num_images=settings.num_images, holdout=settings.holdout, seed=settings.seed,
        report=directory / "calibration.json"))
    return {"int8": str(directory / "detector.int8.onnx"), "report": report}


def _bench(settings: PipelineSettings, backend: str, export: dict[str, Any], calib: dict[str, Any],
           directory: Path) -> dict[str, Any]:
    from ..backends import open_runner
    from ..bench import run_bench, write_report

    runners = {"searched FP32": open_runner(export["detector"], backend),
               "searched INT8": open_runner(calib["int8"], backend),
               f"{settings.baseline} FP32": open_runner(export["baseline"], backend)}
    try:
        result = run_bench(runners, model=export["detector"], duration=settings.bench_seconds)
    finally:
        for runner in runners.values():
            runner.close()
    write_report(result, directory / "bench.json")
    write_report(result, directory / "bench.md")
    return result.to_dict()


def _summary(settings: PipelineSettings, backend: str, images: Path, search: StageResult, calib: StageResult,
             bench: StageResult) -> dict[str, Any]:
    best, latency = search.data["best"], search.data["latency"]
    rows = bench.data["results"]
    baseline = next(row for row in rows if row["runner"].startswith(settings.baseline))
    for row in rows:
        row["speedup_vs_baseline"] = baseline["median_ms"] / row["median_ms"]
    report = calib.data["report"]
    agreement = (report.get("detection") or {}).get("agreement") or {}
    cosines = [o["cosine"] for o in (report.get("outputs") or {}).values() if o.get("cosine") is not None]
    winner = latency["winner"]
    return {
        "out": str(settings.out), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "latency_ms": settings.latency_ms, "image_size": settings.image_size, "batch": settings.batch,
        "search": {"best": best, "candidates": search.data["candidates"], "wall_seconds": search.data["wall_seconds"],
                   "latency": {"scope": settings.scope, "backend": backend, "measured_ms": winner["measured_ms"],
                               "predicted_ms": winner["predicted_ms"],
                               "measurements": latency["measurements"]["measured"],
                               "measure_seconds": latency["time_s"]["measuring"]}},
        "pareto_png": str(Path("search") / "pareto.png"),
        "bench": {"rows": rows, "warnings": bench.data.get("warnings", [])},
        "calibration": {"method": settings.method, "num_images": report.get("calibration_samples"),
                        "holdout_images": report.get("held_out"), "map50": agreement.get("map50"),
                        "map": agreement.get("map50_95"), "min_cosine": min(cosines) if cosines else None,
                        "float_layers": len((report.get("int8") or {}).get("excluded") or {})},
        "fingerprint": bench.data["fingerprint"],
        "stages": {name: {"seconds": s.seconds, "reused": s.reused} for name, s in
                   {"search": search, "calibrate": calib, "bench": bench}.items()},
        "commands": [f"maedet-deploy pipeline --latency-ms {settings.latency_ms:g} --image-size {settings.image_size} "
                     f"--iterations {settings.iterations} --population {settings.population} --seed {settings.seed} "
                     f"--backend {backend} --out {settings.out}"
                     + (f" --images {settings.images}" if settings.images else "")],
    }
