"""INT8 Q/DQ graphs for each backend, ranges, MACs, FP16, the TensorRT cache, the accuracy
check and partial quantization, on a tiny GFL-style detector built here."""

import io
import json
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from PIL import Image, ImageDraw
from torch import nn

from maedet_deploy.backends import load_runner
from maedet_deploy.backends.onnx_file import load_model
from maedet_deploy.calib.data import open_data
from maedet_deploy.calib.decoders import DecodeSettings
from maedet_deploy.calib.fp16 import convert_fp16
from maedet_deploy.calib.graph import default_exclusions, resolve_exclusions
from maedet_deploy.calib.int8 import exclusions, prepare, qdq_summary, quantize_qdq, quantized_layers
from maedet_deploy.calib.macs import layer_macs
from maedet_deploy.calib.partial import layer_sensitivity, partial_quantize, quantize_only, within_budget
from maedet_deploy.calib.placement import qdq_placement
from maedet_deploy.calib.ranges import Histogram, collect, entropy_amax
from maedet_deploy.calib.refine import bias_corrected, rounded_weights
from maedet_deploy.calib.report import AccuracyCheck, accuracy_report
from maedet_deploy.calib.trt_cache import calibration_cache_text, read_calibration_cache
from maedet_deploy.errors import MaedetError
from maedet_deploy.inputs import PreprocessSpec, TensorBatches

torch.set_num_threads(2)
SIZE = 64
CLASSES = 3
BINS = 8


class TinyGFL(nn.Module):
    """Stem with BN, a residual join, two levels (strides 8, 16) of sigmoid scores and
    box distributions, exported per level like PicoDet."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.res = nn.Conv2d(16, 16, 3, 1, 1)
        self.down = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.cls = nn.ModuleList(nn.Conv2d(16, CLASSES, 1) for _ in range(2))
        self.reg = nn.ModuleList(nn.Conv2d(16, 4 * BINS, 1) for _ in range(2))

    def forward(self, x):
        p3 = self.stem(x)
        p3 = p3 + torch.relu(self.res(p3))
        p4 = self.down(p3)
        scores = [self.cls[i](f).sigmoid().flatten(2).transpose(1, 2) for i, f in enumerate((p3, p4))]
        dists = [self.reg[i](f).flatten(2).transpose(1, 2) for i, f in enumerate((p3, p4))]
        return (*scores, *dists)


def export(factory, path: Path, channels: int = 3, names=("s3", "s4", "d3", "d4"), size=SIZE, **options) -> Path:
    """Build `factory()` with fixed random weights and export it."""
    torch.manual_seed(0)
    module = factory()
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    for conv in getattr(module, "cls", []):  # a few confident cells, not all
        nn.init.normal_(conv.weight, std=40.0)
        nn.init.constant_(conv.bias, 2.0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(1, channels, size, size),), buffer, dynamo=False,
                          opset_version=17, input_names=["images"], output_names=list(names), **options)
    path.write_bytes(buffer.getvalue())
    return path


def draw_images(folder: Path, count: int, seed: int = 0, size=(96, 80)) -> Path:
    """Real image files: coloured shapes on a textured background."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = Image.fromarray(rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(2, 5)):
            x0, y0 = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
            box = [x0, y0, x0 + int(rng.integers(10, 40)), y0 + int(rng.integers(10, 40))]
            colour = tuple(int(c) for c in rng.integers(100, 256, 3))
            (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
        image.save(folder / f"img_{index:03d}.png")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return export(TinyGFL, root / "tiny.onnx"), draw_images(root / "images", 14)


@pytest.fixture(scope="module")
def quantized(tiny):
    model, images = tiny
    calib, held = open_data(images, load_model(model), PreprocessSpec(), num_images=8, holdout=6, seed=0)
    prepared = prepare(model)
    return prepared, collect(prepared.model, calib), calib, held


def initializers(model):
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_tensorrt_placement_is_symmetric_int8_per_channel_on_compute_inputs(quantized):
    prepared, statistics, calib, _ = quantized
    placement = qdq_placement("tensorrt")
    excluded = exclusions(prepared, placement=placement)
    model = quantize_qdq(prepared, statistics.with_method("mse", symmetric=True), excluded, placement)
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)  # folded by pre-processing
    inits, made_by = initializers(model), {out: n for n in model.graph.node for out in n.output}
    for node in (n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        assert inits[node.input[2]].dtype == np.int8 and not np.any(inits[node.input[2]])
    readers = {name for node in model.graph.node for name in node.input}
    for node in model.graph.node:  # Q/DQ only in front of Conv and the residual Add; layer outputs stay float
        if node.op_type == "DequantizeLinear" and node.output[0] in readers:
            assert {n.op_type for n in model.graph.node if node.output[0] in n.input} <= {"Conv", "Add"}
    for conv in (n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in made_by):
        weight = made_by[conv.input[1]]
        assert inits[weight.input[1]].shape == (inits[weight.input[0]].shape[0],)  # one scale per output channel
        assert len(conv.input) < 3 or inits[conv.input[2]].dtype == np.float32  # float bias
    summary = qdq_summary(model)
    assert summary["zero_points_all_zero"] and summary["quantized_types"] == ["int8"]
    assert summary["per_channel_weights"] == summary["quantized_layers"] == 5 and summary["per_tensor_weights"] == 0
    assert len(summary["float_layers"]) == 4 and set(summary["float_layers"]) <= set(excluded)  # the head's last convs
    assert set(load_runner(model.SerializeToString()).infer(next(iter(calib)).feed)) == {"s3", "s4", "d3", "d4"}


def optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    """The op types ONNX Runtime's CPU provider runs after its graph optimizations."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_onnxruntime_placement_becomes_integer_kernels(quantized, tmp_path):
    prepared, statistics, _, _ = quantized
    placement = qdq_placement("onnxruntime")
    excluded = exclusions(prepared, placement=placement)
    model = quantize_qdq(prepared, statistics.with_method("mse", symmetric=False), excluded, placement)
    summary = qdq_summary(model)
    assert summary["quantized_types"] == ["int8", "uint8"]  # uint8 activations, int8 weights (U8S8)
    stem = next(n.name for n in prepared.model.graph.node if n.op_type == "Conv")
    assert "reads 3 channels" in excluded[stem] and stem in summary["float_layers"]
    ops = optimized_ops(model, tmp_path)
    assert ops.count("QLinearConv") == 4 and ops.count("Conv") == 5  # 4 INT8 convs; the stem and the head's 4 float
    trt = quantize_qdq(prepared, statistics.with_method("mse", symmetric=True), exclusions(prepared),
                       qdq_placement("tensorrt"))
    assert "QLinearConv" not in optimized_ops(trt, tmp_path)  # int8 activations: ONNX Runtime leaves convs float


def test_default_and_user_exclusions(quantized):
    prepared = quantized[0]
    defaults = default_exclusions(prepared.model)
    final = [n for n, why in defaults.items() if why == "final layer of an output branch"]
    assert len(final) == 4 and all(n.startswith("/cls") or n.startswith("/reg") for n in final)
    assert {n.op_type for n in prepared.model.graph.node if n.name in defaults} == {"Conv", "Sigmoid", "Transpose",
                                                                                  "Reshape"}
    assert set(resolve_exclusions(prepared.model, ["Sigmoid"])) == {
        n.name for n in prepared.model.graph.node if n.op_type == "Sigmoid"}
    assert set(resolve_exclusions(prepared.model, ["/res/*"])) == {"/res/Conv"}
    with pytest.raises(MaedetError, match="matches no node") as error:
        resolve_exclusions(prepared.model, ["NoSuchLayer"])
    assert error.value.setting == "exclude"


def brute_force_entropy(hist: np.ndarray, edges: np.ndarray, levels: int) -> float:
    """TensorRT's EntropyCalibration2 written out loop by loop, as its documentation states it."""
    best, best_edge = math.inf, float(edges[-1])
    for end in range(levels, len(hist) + 1):
        p = hist[:end].astype(np.float64).copy()
        p[end - 1] += hist[end:].sum()
        if p[end - 1] > 0 and hist[end - 1] == 0 and hist[end:].sum() > 0:
            continue  # P has mass where Q has none: infinite divergence
        width = end // levels
        q = np.zeros(end)
        for group in range(levels):
            start, stop = group * width, (end if group == levels - 1 else (group + 1) * width)
            chunk = hist[start:stop]
            filled = np.count_nonzero(chunk)
            if filled:
                q[start:stop] = np.where(chunk > 0, chunk.sum() / filled, 0)
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        divergence = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if divergence < best:
            best, best_edge = divergence, float(edges[end])
    return best_edge


def test_entropy_threshold_is_exactly_tensorrts_recipe():
    rng = np.random.default_rng(0)
    for sample in (np.abs(np.concatenate([rng.standard_normal(20_000), [40.0, 55.0]])), rng.exponential(1.0, 5_000),
                   np.abs(rng.standard_cauchy(5_000)).clip(0, 50)):
        hist, edges = np.histogram(sample, bins=256)
        assert entropy_amax(hist, edges, levels=32) == brute_force_entropy(hist, edges, 32)
    assert entropy_amax(np.array([0, 5, 0]), np.array([0, 1, 2, 3.0])) == 3.0  # too few bins: the max


def test_histogram_takes_subnormal_and_signed_values():
    hist = Histogram()
    hist.add(np.array([1e-42, -1e-41, 0.0], np.float32))  # subnormal float32: counted as zero
    assert hist.amax == 0 and hist.positive[0] == 3
    hist.add(np.array([-3.0, 1.0, 2.0, np.inf]))
    assert (hist.min, hist.max, hist.count) == (-3.0, 2.0, 6) and hist.negative.sum() == 1
    assert hist.threshold("minmax", 99.99, True) == 3.0


def test_methods_order_ranges_and_asymmetric_ranges_follow_the_values(quantized):
    prepared, statistics, _, _ = quantized
    minmax = statistics.with_method("minmax", symmetric=True).amax
    for method in ("percentile", "entropy", "mse"):
        amax = statistics.with_method(method, 99.0, symmetric=True).amax
        assert all(amax[name] <= top * 1.001 + 1e-6 for name, top in minmax.items())
        assert sum(amax.values()) < sum(minmax.values())
    relu_out = next(n.output[0] for n in prepared.model.graph.node if n.op_type == "Relu")
    low, high = statistics.with_method("mse", symmetric=False).ranges[relu_out]
    assert low == 0 < high  # after ReLU, all 256 levels on [0, t]
    with pytest.raises(MaedetError, match="must be one of") as error:
        statistics.with_method("kl")
    assert error.value.setting == "method"


def test_layer_macs_and_int8_share(quantized):
    prepared, statistics, _, _ = quantized
    macs = layer_macs(prepared.model, {"images": (1, 3, SIZE, SIZE)})
    convs = [n.name for n in prepared.model.graph.node if n.op_type == "Conv"]
    assert macs[convs[0]] == 32 * 32 * 8 * 3 * 3 * 3  # 3 -> 8 channels, 3x3, stride 2 on 64x64
    assert macs[convs[1]] == 16 * 16 * 16 * 8 * 3 * 3
    placement = qdq_placement("tensorrt")
    model = quantize_qdq(prepared, statistics.with_method("mse", symmetric=True), exclusions(prepared), placement)
    share = qdq_summary(model, macs)["int8_mac_share"]
    assert share == pytest.approx(sum(macs[n] for n in quantized_layers(model)) / sum(macs.values()))
    assert 0.9 < share < 1


def test_trt_calibration_cache(quantized, tiny, tmp_path):
    statistics = quantized[1].with_method("mse", symmetric=True)
    text = calibration_cache_text(statistics, ["images", "missing"], version="8.5.2")
    (tmp_path / "cache.txt").write_text(text)
    header, scales = read_calibration_cache(tmp_path / "cache.txt")
    assert header == "TRT-8502-EntropyCalibration2" and set(scales) == {"images"}
    assert math.isclose(scales["images"], statistics.amax["images"] / 127, rel_tol=1e-6)
    assert text.splitlines()[1] == "images: " + struct.pack(">f", statistics.amax["images"] / 127).hex()


class WithResize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(nn.functional.interpolate(torch.relu(self.conv(x)), scale_factor=2.0, mode="nearest"))


def test_fp16_graph(tiny, tmp_path):
    path = export(WithResize, tmp_path / "resize.onnx", names=("y",))
    result = convert_fp16(path)
    model = result.model
    onnx.checker.check_model(model)
    types = {init.name: init.data_type for init in model.graph.initializer}
    resize = next(n for n in model.graph.node if n.op_type == "Resize")
    weights = [v for k, v in types.items() if k not in resize.input]
    assert weights and all(t == onnx.TensorProto.FLOAT16 for t in weights)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT]
    assert resize.name in result.float32_nodes and result.casts >= 3  # in, around Resize, out
    feed = {"images": np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)}
    ref, got = load_runner(path).infer(feed)["y"], load_runner(model.SerializeToString()).infer(feed)["y"]
    assert got.dtype == np.float32 and np.abs(ref - got).max() < 1e-2 * max(1.0, np.abs(ref).max())
    half_io = convert_fp16(path, keep_io_types=False).model
    assert half_io.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert load_runner(half_io.SerializeToString()).infer({"images": feed["images"].astype(np.float16)})["y"].dtype \
        == np.float16
    detector = convert_fp16(tiny[0]).model  # every float constant stored in float16, runs in ONNX Runtime
    assert all(init.data_type != onnx.TensorProto.FLOAT for init in detector.graph.initializer)
    assert set(load_runner(detector.SerializeToString()).infer(feed)) == {"s3", "s4", "d3", "d4"}


def test_fp16_keeps_float32_where_values_overflow(tmp_path):
    proto = onnx.load(str(export(WithResize, tmp_path / "m.onnx", names=("y",))))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    weight = next(i for i in proto.graph.initializer if i.name == conv.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1e6, weight.name))
    result = convert_fp16(proto, optimize=False)
    assert conv.name in result.float32_nodes and result.notes


def test_accuracy_against_itself_and_quantized(quantized, tiny, tmp_path):
    prepared, statistics, _, held = quantized
    model_path = tiny[0]
    same = accuracy_report(model_path, model_path, held, out=tmp_path / "same.json")
    assert same["detection"]["decoder"] == "gfl" and same["detection"]["float_detections"] > 0
    assert same["detection"]["agreement"] == {"map50": 1.0, "map50_95": 1.0}
    assert all(v["cosine"] == pytest.approx(1.0) and v["max_abs_error"] == 0 for v in same["outputs"].values())
    assert json.loads((tmp_path / "same.json").read_text())["agreement"]["metric"] == "map50"
    q = quantize_qdq(prepared, statistics.with_method("mse", symmetric=True), exclusions(prepared))
    report = accuracy_report(model_path, q, held)
    assert report["held_out"] == 6 and set(report["outputs"]) == {"s3", "s4", "d3", "d4"}
    for values in report["outputs"].values():
        assert 0.9 < values["cosine"] <= 1.0 and values["sqnr_db"] > 10 and values["max_abs_error"] > 0
    assert 0 < report["detection"]["agreement"]["map50"] <= 1.0


def test_true_map_with_coco_annotations(tiny, tmp_path):
    model_path, images = tiny
    _, held = open_data(images, load_model(model_path), PreprocessSpec(resize="letterbox"), num_images=2, holdout=4,
                        seed=1)
    check = AccuracyCheck(load_model(model_path), held, settings=DecodeSettings(score_threshold=0.05))
    # ground truth: the float model's own confident detections, in original-image pixels
    coco = {"images": [], "annotations": [], "categories": [{"id": 10 + c, "name": f"c{c}"} for c in range(CLASSES)]}
    for outputs, batch in zip(check.reference.outputs, held):
        for det, meta in zip(check.decoder({k: outputs[k] for k in check.output_names}, check.settings), batch.metas):
            image_id = len(coco["images"]) + 1
            coco["images"].append({"id": image_id, "file_name": Path(meta.path).name, "height": meta.height,
                                   "width": meta.width})
            for box, cls in zip(meta.to_original(det.above(0.3).boxes), det.above(0.3).classes):
                x1, y1, x2, y2 = box.tolist()
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                            "category_id": 10 + int(cls), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                            "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    assert coco["annotations"]
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    report = accuracy_report(model_path, model_path, held, annotations=tmp_path / "gt.json",
                             settings=DecodeSettings(score_threshold=0.05))
    truth = report["detection"]["annotations"]
    assert truth["images_matched"] == 4 and truth["class_mapping"] == "by sorted category id"
    assert truth["float"]["map50"] == pytest.approx(1.0) and truth["candidate"] == truth["float"]


def test_quantize_only_and_partial_quantization_spend_the_fewest_macs(quantized, tiny):
    prepared, statistics, calib, held = quantized
    placement = qdq_placement("tensorrt")
    ranges, base = statistics.with_method("mse", symmetric=True), exclusions(prepared)
    quantize = lambda extra: quantize_qdq(prepared, ranges, {**base, **extra}, placement)
    full = quantize({})
    layers = quantized_layers(full)
    single = quantize_only(prepared.model, full, [layers[0]])
    onnx.checker.check_model(single)
    assert quantized_layers(single) == [layers[0]]
    batches = list(calib)[:2]
    macs = layer_macs(prepared.model, {"images": (1, 3, SIZE, SIZE)})
    ranking = layer_sensitivity(prepared.model, full, batches, macs)
    assert sorted(s.layer for s in ranking) == sorted(layers)
    per_mac = [s.error / s.macs for s in ranking]
    assert per_mac == sorted(per_mac, reverse=True)  # the knapsack's order: most error per MAC first
    check = AccuracyCheck(load_model(tiny[0]), held)
    full_agreement = check.judge(full)
    result = partial_quantize(full, full_agreement, prepared.model, quantize, check.judge, 1.0, batches, macs)
    assert result.met == (result.agreement.metric[1] >= 1.0)
    assert result.float_layers == [s.layer for s in result.sensitivity][:len(result.float_layers)]
    assert qdq_summary(result.model)["quantized_layers"] == len(layers) - len(result.float_layers)
    easy = partial_quantize(full, full_agreement, prepared.model, quantize, check.judge, 0.01, batches, macs)
    assert easy.met and easy.float_layers == [] and easy.sensitivity == []


def test_float_mac_budget_keeps_the_most_sensitive_layers_that_fit(quantized):
    prepared, statistics, calib, _ = quantized
    placement = qdq_placement("onnxruntime")
    ranges, base = statistics.with_method("mse", symmetric=False), exclusions(prepared, placement=placement)
    quantize = lambda extra: quantize_qdq(prepared, ranges, {**base, **extra}, placement)
    full, macs = quantize({}), layer_macs(prepared.model, {"images": (1, 3, SIZE, SIZE)})
    before, total = qdq_summary(full, macs), sum(macs.values())
    result = within_budget(full, prepared.model, quantize, 0.5, list(calib)[:2], macs)
    kept = [s for s in result.sensitivity if s.layer in result.float_layers]
    left = (0.5 - (1 - before["int8_mac_share"])) * total  # what the default exclusions leave of the budget
    assert kept and sum(s.macs for s in kept) <= left
    skipped = [s for s in result.sensitivity[:result.sensitivity.index(kept[-1])] if s not in kept]
    assert all(s.macs > left - sum(k.macs for k in kept) for s in skipped)  # skipped only when too large
    summary = qdq_summary(result.model, macs)
    assert summary["quantized_layers"] == before["quantized_layers"] - len(kept)
    assert 0.5 <= summary["int8_mac_share"] == pytest.approx(before["int8_mac_share"] - sum(s.macs for s in kept) / total)
    assert within_budget(full, prepared.model, quantize, 0.0, list(calib)[:2], macs).float_layers == []


def test_bias_correction_removes_the_mean_shift_of_weight_rounding(quantized):
    prepared, statistics = quantized[0], quantized[1]
    corrected = bias_corrected(prepared.model, statistics.channel_means)
    before, after = initializers(prepared.model), initializers(corrected)
    convs = [n for n in corrected.graph.node if n.op_type == "Conv" and n.input[0] in statistics.channel_means]
    assert len(convs) >= 6
    for node in convs:  # float conv at the mean input == rounded-weight conv with the corrected bias
        original = next(n for n in prepared.model.graph.node if n.name == node.name)
        weight, mean = before[node.input[1]], statistics.channel_means[node.input[0]].astype(np.float64)
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        assert groups == 1
        float_out = weight.sum((2, 3)) @ mean + before[original.input[2]]
        int8_out = rounded_weights(weight, True).sum((2, 3)) @ mean + after[node.input[2]]
        assert np.allclose(float_out, int8_out, atol=1e-4)
    assert all(before[k].shape == v.shape for k, v in initializers(prepared.model).items())  # input untouched


class HardSwishNet(nn.Module):
    """Hard-swish written out as Paddle2ONNX exports PicoDet's: x * clip(x + 3, 0, 6) / 6."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1)

    def forward(self, x):
        x = self.a(x)
        return self.b(x * torch.clamp(x + 3, 0, 6) / 6)


def test_hard_swish_division_runs_as_an_integer_kernel(tmp_path):
    path = export(HardSwishNet, tmp_path / "hswish.onnx", names=("y",), size=32)
    exported = load_model(path)
    assert "Div" in {n.op_type for n in exported.graph.node}
    prepared = prepare(path)
    assert "Div" not in {n.op_type for n in prepared.model.graph.node}
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    feed = {"images": images[:1]}
    with load_runner(path) as before, load_runner(prepared.model.SerializeToString()) as after:
        assert np.allclose(before.infer(feed)["y"], after.infer(feed)["y"], atol=1e-5)
    placement = qdq_placement("onnxruntime")
    statistics = collect(prepared.model, TensorBatches({"images": images}, 1))
    model = quantize_qdq(prepared, statistics.with_method("mse", symmetric=False), (), placement)
    ops = optimized_ops(model, tmp_path)
    assert "Div" not in ops and "QuantizeLinear" not in ops[1:] and ops.count("QLinearMul") == 2, ops
