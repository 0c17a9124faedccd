"""Output comparison: the arithmetic, a real detector against its optimized build and against a
perturbed copy, real images, and the compare CLI's exit codes."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw
from cli_helpers import run_cli
from test_backends import ppocr_det, scale_model
from test_calib_data import bomb_png

from maedet_deploy.backends import build_model, load_runner
from maedet_deploy.compare import compare_arrays, compare_runners, image_feeds, pair_outputs, random_feeds
from maedet_deploy.inputs import PreprocessSpec
from maedet_deploy.errors import MaedetError


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "det.opt.onnx"
    build_model(ppocr_det(), out)
    return out


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory):
    """The detector with its largest weight (Paddle's exporter keeps weights in Constant nodes)
    scaled by 1.05: still a working model, with different outputs."""
    model = onnx.load(str(ppocr_det()))
    constants = [n.attribute[0].t for n in model.graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"]
    largest = max(constants, key=lambda t: np.prod(t.dims))
    largest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(largest) * np.float32(1.05), largest.name))
    path = tmp_path_factory.mktemp("perturbed") / "det.perturbed.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for index, (width, height) in enumerate([(160, 90), (70, 120), (128, 128)]):
        image = Image.new("RGB", (width, height), (240, 240, 230))
        draw = ImageDraw.Draw(image)
        for line in range(3):
            draw.text((8, 8 + line * 25), f"Hello text {line}", fill=(20 * index, 30, 60))
            draw.rectangle([10, 40 + line * 8, width - 20, 42 + line * 8], fill=(20 * index, 30, 60))
        image.save(folder / f"page{index}.{'png' if index % 2 else 'jpg'}")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_array_comparison_statistics():
    a = np.array([[1.0, 2.0, 0.0, -4.0]], np.float32)
    same = compare_arrays("y", a, a.copy())
    assert same.passed and same.max_abs == 0 and same.cosine == pytest.approx(1.0) and same.elements == 4
    near = compare_arrays("y", a, a + np.float32(1e-5), atol=1e-4, rtol=0)
    assert near.passed and near.max_abs == pytest.approx(1e-5, rel=1e-2)
    far = compare_arrays("y", a, a * 1.1, atol=1e-4, rtol=1e-2)
    assert not far.passed and far.mismatches == 3 and far.max_rel == pytest.approx(0.1, rel=1e-5)
    assert far.max_abs == pytest.approx(0.4, rel=1e-5) and "3 of 4 elements" in far.message
    assert compare_arrays("y", a, -a).cosine == pytest.approx(-1.0)
    shape = compare_arrays("y", a, a.reshape(2, 2))
    assert not shape.passed and shape.message == "shapes differ: 1x4 vs 2x2"
    nan = np.array([np.nan, 1.0])
    assert compare_arrays("y", nan, nan.copy()).passed
    broken = compare_arrays("y", nan, np.array([0.0, 1.0]))
    assert not broken.passed and "NaN/inf" in broken.message
    assert compare_arrays("z", np.zeros(3), np.zeros(3)).cosine == 1.0
    assert compare_arrays("z", np.zeros(3), np.full(3, 1e-9)).cosine is None      # undefined, not 0
    assert compare_arrays("k", np.array([1, 2], np.int64), np.array([1, 2], np.int32)).passed


def test_outputs_pair_by_name_else_by_position():
    assert pair_outputs(["a", "b"], ["b", "a"]) == [("a", "a"), ("b", "b")]
    assert pair_outputs(["boxes", "scores"], ["output0", "output1"]) == [("boxes", "output0"), ("scores", "output1")]
    assert pair_outputs(["a", "b"], ["a", "c"]) == [("a", "a"), ("b", None), (None, "c")]


PADDLE = PreprocessSpec(resize="letterbox", color="bgr", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def test_detector_matches_its_optimized_build_and_not_a_perturbed_copy(optimized, perturbed, images):
    reference = load_runner(ppocr_det())
    shapes = {"x": (1, 3, 64, 96)}
    result = compare_runners(reference, load_runner(optimized), random_feeds(reference.inputs, shapes, samples=2))
    assert result.passed and result.samples == 2
    (output,) = result.outputs
    assert output.shape_a == [1, 1, 64, 96] and output.elements == 2 * 64 * 96

    # On text the detector fires, so the 5% weight change shows; on random noise its map stays ~0.
    result = compare_runners(reference, load_runner(perturbed), image_feeds(reference.inputs, images, PADDLE, shapes["x"]),
                             atol=1e-3)
    (output,) = result.outputs
    assert not result.passed and output.max_abs > 1e-2 and output.mismatches > 0 and 0.9 < output.cosine < 1
    data = result.to_dict()
    assert data["passed"] is False and data["fingerprint_id"] and data["outputs"][0]["name"] == "sigmoid_0.tmp_0"
    assert output.message == f"{output.mismatches} of {3 * 64 * 96} elements outside atol + rtol * |a|"
    assert compare_runners(reference, load_runner(optimized), image_feeds(reference.inputs, images, PADDLE,
                                                                          shapes["x"])).passed


def test_images_are_preprocessed_into_batches(images, tmp_path):
    reference = load_runner(ppocr_det())
    feeds = list(image_feeds(reference.inputs, images, PADDLE, (1, 3, 64, 96)))
    assert len(feeds) == 3 and all(f.feed["x"].shape == (1, 3, 64, 96) and f.feed["x"].dtype == np.float32
                                   for f in feeds)

    white = tmp_path / "white"
    white.mkdir()
    Image.new("RGB", (100, 50), (255, 255, 255)).save(white / "w.png")
    (plain,) = image_feeds(reference.inputs, white, PreprocessSpec(resize="letterbox", scale=1.0), (1, 3, 64, 64))
    column = plain.feed["x"][0, 0, :, 32]
    assert column[0] == 114 and column[32] == 255 and column[-1] == 114      # padded above and below
    (stretched,) = image_feeds(reference.inputs, white, PreprocessSpec(), (1, 3, 64, 64))
    assert np.allclose(stretched.feed["x"], 1.0)
    with pytest.raises(MaedetError, match="dim 0 .* is dynamic"):
        next(iter(image_feeds(reference.inputs, white)))
    with pytest.raises(MaedetError, match="no images"):
        (tmp_path / "empty").mkdir()
        next(iter(image_feeds(reference.inputs, tmp_path / "empty", PreprocessSpec(), (1, 3, 8, 8))))


def test_cli_compare_passes_on_the_optimized_build_with_real_images(optimized, images, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "compare", ppocr_det(), optimized, "--images", images, "--shape", "x:1x3x64x96",
                           "--letterbox", "--bgr", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
                           "--json")
    data = json.loads(out)
    assert code == 0 and data["passed"] and data["samples"] == 3
    code, out, _ = run_cli(monkeypatch, capsys, "compare", ppocr_det(), optimized, "--shape", "x:1x3x64x64")
    assert code == 0 and "PASSED" in out and "cosine" in out


def test_cli_compare_fails_with_exit_1_on_the_perturbed_copy(perturbed, images, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "compare", ppocr_det(), perturbed, "--shape", "x:1x3x64x64", "--atol", "1e-3",
                           "--images", images, "--bgr", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225")
    assert code == 1 and "FAILED" in out


def test_cli_compare_fails_when_output_shapes_differ(tmp_path, monkeypatch, capsys):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    pooled = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], keepdims=1, axes=[2, 3])], "pool",
                               [x], [y])
    onnx.save(helper.make_model(pooled, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              tmp_path / "pool.onnx")
    scale_model(tmp_path / "scale.onnx", dims=("n", 3, 4, 4))
    code, out, _ = run_cli(monkeypatch, capsys, "compare", tmp_path / "scale.onnx", tmp_path / "pool.onnx", "--shape", "x:1x3x4x4",
                           "--json")
    data = json.loads(out)
    assert code == 1 and data["outputs"][0]["message"] == "shapes differ: 1x3x4x4 vs 1x3x1x1"


@pytest.mark.parametrize("second, args, message", [
    (False, [], "nothing to compare"),
    (False, ["--backend-b", "openvino"], "unknown backend 'openvino'"),
    (True, [], "dim 0 ('p2o.DynamicDimension.0') is dynamic"),
    (True, ["--shape", "x:1x3x64x64", "--images", "/nonexistent/folder"], "image folder not found"),
    (True, ["--shape", "x:1x3x64x64", "--images", "IMAGES", "--mean", "1,2"], "mean has 2 values but the model input has 3"),
    (True, ["--shape", "x:1x3x64x64", "--images", "BOMB"], "too large to decode safely"),
])
def test_cli_compare_bad_input_is_exit_2(second, args, message, optimized, images, tmp_path, monkeypatch, capsys):
    models = [ppocr_det(), optimized] if second else [ppocr_det()]
    (tmp_path / "bomb").mkdir()
    bomb_png(tmp_path / "bomb" / "huge.png")
    args = [{"IMAGES": images, "BOMB": tmp_path / "bomb"}.get(a, a) for a in args]
    code, _, err = run_cli(monkeypatch, capsys, "compare", *models, *args)
    assert code == 2 and message in " ".join(err.split()) and err.strip().count("\n") == 0, err


def test_models_with_different_inputs_are_refused(tmp_path):
    a = load_runner(scale_model(tmp_path / "a.onnx"))
    b = load_runner(ppocr_det())
    renamed = onnx.load(str(tmp_path / "a.onnx"))
    renamed.graph.input[0].name = "images"
    renamed.graph.node[0].input[0] = "images"
    onnx.save(renamed, tmp_path / "b.onnx")
    with pytest.raises(MaedetError, match="different inputs: x vs images"):
        compare_runners(a, load_runner(tmp_path / "b.onnx"), random_feeds(a.inputs, {"x": (1, 3, 2, 2)}))
    assert b.inputs[0].name == "x"
