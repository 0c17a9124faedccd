"""The one input path (maedet_deploy.inputs) and calibration's data selection: image
discovery, safe decoding, preprocessing values, tensor files, deterministic splits."""

import json
import struct
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from maedet_deploy.backends.onnx_file import graph_inputs
from maedet_deploy.calib.data import open_data, split_indices
from maedet_deploy.errors import MaedetError
from maedet_deploy.inputs import (ImageBatches, PreprocessSpec, declared_size, list_images, load_arrays, load_image,
                                  load_spec, open_image, resolve_image_input)


def identity_model(shape, elem_type=TensorProto.FLOAT, name="images", metadata=None) -> onnx.ModelProto:
    """A one-node model with the given input, enough for the data code (it reads only the input)."""
    graph = helper.make_graph([helper.make_node("Identity", [name], ["out"])], "g",
                              [helper.make_tensor_value_info(name, elem_type, shape)],
                              [helper.make_tensor_value_info("out", elem_type, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def write_images(folder, names, size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)


def bomb_png(path, width=20000, height=20000):
    """A small PNG file that declares width x height pixels (PIL's decompression-bomb case)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_list_images_recursive_sorted_with_every_suffix(tmp_path):
    write_images(tmp_path, ["b.png", "a.JPG", "sub/c.bmp", "sub/deeper/a.jpeg", "z.webp", "t.tif"])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "x.gif").write_bytes(b"GIF89a")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a.JPG", "b.png", "sub/c.bmp", "sub/deeper/a.jpeg", "t.tif", "z.webp"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaedetError, match="no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(MaedetError, match="not found"):
        list_images(tmp_path / "missing")


def test_broken_and_oversized_images_are_one_line_errors(tmp_path):
    with pytest.raises(MaedetError, match="bomb.png is too large to decode safely"):
        open_image(bomb_png(tmp_path / "bomb.png"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(MaedetError, match="cannot read image .*broken.png"):
        open_image(tmp_path / "broken.png")


def test_selection_is_deterministic_disjoint_and_holdout_stable():
    calib, held = split_indices(50, 10, 5, seed=3)
    assert (calib, held) == split_indices(50, 10, 5, seed=3)
    assert (calib, held) != split_indices(50, 10, 5, seed=4)
    assert len(calib) == 10 and len(held) == 5 and not set(calib) & set(held)
    assert calib == sorted(calib) and held == sorted(held)
    assert split_indices(50, 20, 5, seed=3)[1] == held  # the held-out set does not depend on how many calibrate
    assert set(split_indices(50, None, 5, seed=3)[0]) == set(range(50)) - set(held)
    with pytest.raises(MaedetError, match="held out") as error:
        split_indices(5, None, 5, seed=0)
    assert error.value.setting == "holdout"


def test_open_data_splits_files_the_same_way_each_time(tmp_path):
    write_images(tmp_path / "imgs", [f"{i:02d}.png" for i in range(12)])
    model = identity_model([1, 3, 16, 16])
    first = open_data(tmp_path / "imgs", model, PreprocessSpec(), num_images=5, holdout=3, seed=1)
    again = open_data(tmp_path / "imgs", model, PreprocessSpec(), num_images=5, holdout=3, seed=1)
    assert first[0].names() == again[0].names() and first[1].names() == again[1].names()
    assert len(first[0].names()) == 5 and len(first[1].names()) == 3
    assert not set(first[0].names()) & set(first[1].names())
    batches = list(first[0])
    assert len(batches) == 5 and batches[0].feed["images"].shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(batches[0].feed["images"], next(iter(again[0])).feed["images"])


def test_preprocessing_values_resize_rgb_bgr_mean_std(tmp_path):
    left, right = (200, 100, 50), (10, 20, 30)
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[:, :4], pixels[:, 4:] = left, right
    Image.fromarray(pixels).save(tmp_path / "two.png")
    spec = PreprocessSpec(size=(4, 4), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    array, meta = load_image(tmp_path / "two.png", spec, 3)
    assert array.shape == (3, 4, 4) and array.dtype == np.float32
    expected = (np.array(left) / 255 - (0.5, 0.25, 0.0)) / (0.5, 0.25, 1.0)
    np.testing.assert_allclose(array[:, 0, 0], expected, rtol=1e-5)
    bgr, _ = load_image(tmp_path / "two.png", PreprocessSpec(size=(4, 4), color="bgr"), 3)
    np.testing.assert_allclose(bgr[:, 0, 3], np.array(right[::-1]) / 255, rtol=1e-5)
    nhwc, _ = load_image(tmp_path / "two.png", PreprocessSpec(size=(4, 4), layout="NHWC", scale=1.0), 3)
    assert nhwc.shape == (4, 4, 3) and tuple(nhwc[0, 0]) == left
    assert (meta.height, meta.width, meta.scale_x, meta.scale_y) == (8, 8, 0.5, 0.5)


def test_letterbox_pads_and_maps_boxes_back(tmp_path):
    Image.fromarray(np.full((10, 20, 3), 255, np.uint8)).save(tmp_path / "wide.png")
    spec = PreprocessSpec(size=(20, 20), resize="letterbox", pad_value=114, scale=1.0)
    array, meta = load_image(tmp_path / "wide.png", spec, 3)
    assert meta.pad_top == 5 and meta.pad_left == 0 and meta.scale_x == 1.0
    assert np.all(array[:, :5] == 114) and np.all(array[:, 5:15] == 255) and np.all(array[:, 15:] == 114)
    back = meta.to_original(np.array([[0, 5, 20, 15], [-3, 0, 30, 25]], np.float32))
    np.testing.assert_allclose(back, [[0, 0, 20, 10], [0, 0, 20, 10]])


def test_gray_and_rgba_images_become_the_models_channels(tmp_path):
    Image.fromarray(np.full((6, 6), 77, np.uint8), "L").save(tmp_path / "gray.png")
    Image.fromarray(np.full((6, 6, 4), 9, np.uint8), "RGBA").save(tmp_path / "rgba.png")
    spec = PreprocessSpec(size=(6, 6), scale=1.0)
    gray3, _ = load_image(tmp_path / "gray.png", spec, 3)
    assert gray3.shape == (3, 6, 6) and np.all(gray3 == 77)
    assert load_image(tmp_path / "rgba.png", spec, 1)[0].shape == (1, 6, 6)


def test_spec_files_and_their_errors(tmp_path):
    (tmp_path / "spec.yaml").write_text("size: 32x48\nresize: letterbox\ncolor: BGR\nmean: [0.5, 0.5, 0.5]\n"
                                        "std: 0.25\nlayout: nchw\nbatch: 2\n")
    spec = load_spec(tmp_path / "spec.yaml")
    assert (spec.size, spec.resize, spec.color, spec.mean, spec.std, spec.batch) == \
        ((32, 48), "letterbox", "bgr", (0.5, 0.5, 0.5), (0.25,), 2)
    (tmp_path / "spec.json").write_text(json.dumps({"size": [8, 8], "scale": 1}))
    assert load_spec(tmp_path / "spec.json").size == (8, 8)
    (tmp_path / "bad.yaml").write_text("size: 8\nnormalize: true\n")
    with pytest.raises(MaedetError, match="unknown key"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("resize: crop\n")
    with pytest.raises(MaedetError, match="resize must be"):
        load_spec(tmp_path / "bad2.yaml")


def resolve(model, spec=PreprocessSpec()):
    return resolve_image_input(graph_inputs(model), spec, {p.key: p.value for p in model.metadata_props})


def test_spec_is_checked_against_the_model_and_its_declared_size():
    model_input, spec, channels = resolve(identity_model([2, 1, 24, 32]))
    assert (spec.size, spec.batch, channels) == ((24, 32), 2, 1)
    with pytest.raises(MaedetError, match="does not match"):
        resolve(identity_model([1, 3, 24, 32]), PreprocessSpec(size=(32, 32)))
    with pytest.raises(MaedetError, match="dynamic size") as error:
        resolve(identity_model(["b", 3, "h", "w"]))
    assert error.value.setting == "size"
    dynamic = resolve(identity_model(["b", 3, "h", "w"]), PreprocessSpec(size=(8, 16), batch=4))[1]
    assert (dynamic.size, dynamic.batch) == ((8, 16), 4)
    ultralytics = identity_model(["b", 3, "h", "w"], metadata={"imgsz": "[640, 480]"})
    assert resolve(ultralytics)[1].size == (640, 480)  # Ultralytics' imgsz: --size only when nothing declares one
    assert declared_size({"imgsz": "320"}) == (320, 320) and declared_size({"imgsz": "oops"}) is None
    with pytest.raises(MaedetError, match="4 channels"):
        resolve(identity_model([1, 4, 8, 8]))
    with pytest.raises(MaedetError, match="not an image tensor"):
        resolve(identity_model([1, 3, 8, 8], TensorProto.INT64))


def test_fixed_batch_fills_the_last_batch_and_marks_it(tmp_path):
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    model_input, spec, channels = resolve(identity_model([2, 3, 8, 8]))
    data = ImageBatches(list_images(tmp_path), model_input, spec, channels)
    batches = list(data)
    assert len(data) == len(batches) == 2
    assert [b.valid for b in batches] == [2, 1] and batches[1].metas[1] is None
    np.testing.assert_array_equal(batches[1].feed["images"][0], batches[1].feed["images"][1])


def test_tensor_files(tmp_path):
    model = identity_model([1, 3, 4, 4])
    samples = np.random.default_rng(0).standard_normal((6, 3, 4, 4)).astype(np.float64)
    np.save(tmp_path / "x.npy", samples)
    calib, held = open_data(tmp_path / "x.npy", model, num_images=3, holdout=2, seed=0)
    assert calib.num_samples == 3 and held.num_samples == 2
    batch = next(iter(calib))
    assert batch.feed["images"].dtype == np.float32 and batch.feed["images"].shape == (1, 3, 4, 4)
    np.savez(tmp_path / "x.npz", images=samples[:, :, :2])
    with pytest.raises(MaedetError, match="shape"):
        open_data(tmp_path / "x.npz", model)
    np.savez(tmp_path / "y.npz", other=samples, more=samples)
    with pytest.raises(MaedetError, match="no array for model input"):
        open_data(tmp_path / "y.npz", model)
    np.save(tmp_path / "ints.npy", np.zeros((2, 3, 4, 4), np.int32))
    with pytest.raises(MaedetError, match="int32"):
        open_data(tmp_path / "ints.npy", model)


@pytest.mark.parametrize("case, message", [
    ("objects.npz", "object arrays"), ("corrupt.npz", "cannot read tensors"), ("empty.npy", "cannot read tensors"),
    ("nosamples.npy", "holds no samples"), ("text.npy", "give numeric arrays")])
def test_bad_tensor_files_are_one_line_errors_never_unpickled(case, message, tmp_path):
    path = tmp_path / case
    if case == "objects.npz":
        np.savez(path, images=np.array([{"x": 1}, None], dtype=object))
    elif case == "corrupt.npz":
        np.savez(path, images=np.zeros((2, 3)))
        path.write_bytes(path.read_bytes()[:40])
    elif case == "empty.npy":
        path.write_bytes(b"")
    elif case == "nosamples.npy":
        np.save(path, np.zeros((0, 3, 4, 4), np.float32))
    else:
        np.save(path, np.array(["a", "b"]))
    with pytest.raises(MaedetError, match=message):
        load_arrays(path)


def test_sample_images_are_the_photographs_that_decode_linked_once(tmp_path, monkeypatch):
    from maedet_deploy.calib import sample_images
    from maedet_deploy.inputs import list_images, open_image

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = sample_images()
    files = list_images(folder)
    assert folder.parent == tmp_path / "maedet-deploy" and len(files) > 20
    for path in files:
        open_image(path)                                   # every one decodes
    shipped = {path.name for path in list_images(files[0].resolve().parent)}
    assert {path.name for path in files} < shipped and "multipage_rgb.tif" not in {path.name for path in files}
    assert sample_images() == folder and not list(folder.parent.glob(".sample-images-*"))
