"""`maedet-deploy calibrate` end to end: outputs on success; exit 2, one line and no file on bad input."""

import hashlib
import json

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli
from onnx import TensorProto
from test_calib_data import bomb_png, identity_model
from test_calib_quant import TinyGFL, WithResize, draw_images, export

from maedet_deploy.calib import DEFAULT_FLOAT_MACS, DEFAULT_METHOD


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return export(TinyGFL, root / "tiny.onnx"), draw_images(root / "images", 12)


def test_int8_for_onnxruntime_with_report_cache_and_target(setup, tmp_path, monkeypatch, capsys):
    model, images = setup
    out, report, cache = tmp_path / "q.onnx", tmp_path / "r.json", tmp_path / "cache.txt"
    code, stdout, err = run_cli(monkeypatch, capsys, "calibrate", model, "--images", images, "--out", out,
                                "--backend", "onnxruntime", "--num-images", 6, "--holdout", 4, "--report", report,
                                "--calibration-cache", cache, "--target-agreement", 0.999, "--latency", 0.2)
    assert code in (0, None), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.txt", "q.onnx", "r.json"]  # no temporary left
    data = json.loads(report.read_text())
    assert data["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()  # the report names its model
    assert data["calibration_samples"] == 6 and data["held_out"] == 4
    assert not set(data["calibration_names"]) & set(data["held_out_names"])
    int8 = data["int8"]
    assert int8["method"] == DEFAULT_METHOD == "mse" and int8["placement"] == "onnxruntime"
    assert int8["qdq"]["quantized_types"] == ["int8", "uint8"] and data["detection"]["decoder"] == "gfl"
    qdq = int8["qdq"]
    assert qdq["quantized_layers"] + len(qdq["float_layers"]) == 9 and 0 < qdq["int8_mac_share"] < 1
    partial = data["partial"]
    assert partial["met"] == (partial["agreement"] >= 0.999) and data["latency"]["speedup"] > 0
    assert cache.read_text().startswith("TRT-8601-EntropyCalibration2\n")
    assert "agreement mAP@0.5" in stdout and "% of MACs in INT8" in stdout
    assert "than float32 here" in stdout or "as fast as float32 here" in stdout  # a verdict; host speed not asserted


def test_tensorrt_placement_and_the_no_decoder_line(setup, tmp_path, monkeypatch, capsys):
    _, images = setup
    model = export(WithResize, tmp_path / "resize.onnx", names=("y",))  # not a detector
    out = tmp_path / "q.onnx"
    code, stdout, err = run_cli(monkeypatch, capsys, "calibrate", model, "--images", images, "--out", out,
                                "--backend", "tensorrt", "--num-images", 4, "--holdout", 4, "--report", tmp_path / "r.json")
    assert code in (0, None), err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["int8"]["qdq"]["zero_points_all_zero"] and data["int8"]["qdq"]["quantized_types"] == ["int8"]
    assert data["agreement"]["metric"] == "cosine" and "detection" not in data
    budget = data["partial"]  # the default: the most sensitive layers within DEFAULT_FLOAT_MACS stay float
    assert budget["target"] is None and DEFAULT_FLOAT_MACS == 0.10 and data["int8"]["bias_correction"]
    assert len(budget["float_layers"]) == len(data["int8"]["qdq"]["float_layers"]) - len(data["int8"]["excluded"])
    assert "no decoder fits the outputs (y [1, 2, 64, 64])" in err and "--decoder NAME" in err
    assert len(err.strip().splitlines()) == 1 or "warning" in err.strip().splitlines()[0]


def test_fp16_with_a_spec_file(setup, tmp_path, monkeypatch, capsys):
    model, images = setup
    (tmp_path / "spec.yaml").write_text("resize: letterbox\ncolor: bgr\nmean: 0.5\nstd: 0.25\n")
    out = tmp_path / "h.onnx"
    code, stdout, err = run_cli(monkeypatch, capsys, "calibrate", model, "--images", images, "--out", out,
                                "--precision", "fp16", "--preprocess", tmp_path / "spec.yaml",
                                "--report", tmp_path / "r.json", "--holdout", 3)
    assert code in (0, None), err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["preprocess"]["resize"] == "letterbox" and data["preprocess"]["color"] == "bgr"
    assert all(v["cosine"] > 0.999 for v in data["outputs"].values())
    assert all(i.data_type == TensorProto.FLOAT16 for i in onnx.load(str(out)).graph.initializer
               if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16))


def unreadable(folder):
    draw_images(folder, 3)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def bomb(folder):
    draw_images(folder, 3)
    bomb_png(folder / "huge.png")
    return folder


def tensors(tmp_path, kind):
    path = tmp_path / f"x.{'npy' if kind == 'empty' else 'npz'}"
    if kind == "objects":
        np.savez(path, images=np.array([{"x": 1}, None], dtype=object))
    elif kind == "corrupt":
        np.savez(path, images=np.zeros((4, 3, 64, 64), np.float32))
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("case, message", [
    ("empty", "no images"), ("unreadable", "cannot read image"), ("bomb", "too large to decode safely"),
    ("objects", "object arrays"), ("corrupt", "cannot read tensors"), ("empty_npy", "cannot read tensors"),
    ("channels", "4 channels"), ("no_float", "no float input"), ("holdout", "--holdout: 12 sample(s) found"),
    ("both_specs", "not both"), ("method", "--method: must be one of"), ("exclude", "--exclude: 'no_such_layer'"),
    ("decoder", "--decoder: unknown decoder 'yolo99'"), ("contradicting decoder", "do not fit the ultralytics"),
    ("report is out", "--report:"), ("cache is out", "--calibration-cache:"), ("report is model", "--report:"),
])
def test_bad_input_exits_2_without_output(case, message, setup, tmp_path, monkeypatch, capsys):
    model, images = setup
    args, out = ["--images", images], tmp_path / "out.onnx"
    cache = ["--calibration-cache", tmp_path / "cache.txt"]
    if case in ("empty", "unreadable", "bomb"):
        (tmp_path / case).mkdir()
        args = ["--images", {"empty": lambda f: f, "unreadable": unreadable, "bomb": bomb}[case](tmp_path / case)]
    elif case in ("objects", "corrupt", "empty_npy"):
        args = ["--images", tensors(tmp_path, case.replace("_npy", ""))]
    elif case in ("channels", "no_float"):
        model = tmp_path / "other.onnx"
        onnx.save(identity_model([1, 4, 16, 16]) if case == "channels" else
                  identity_model([1, 3, 16, 16], TensorProto.INT64), str(model))
    elif case == "holdout":
        args += ["--holdout", 12, "--report", tmp_path / "r.json"]
    elif case == "both_specs":
        (tmp_path / "spec.yaml").write_text("size: 64\n")
        args += ["--preprocess", tmp_path / "spec.yaml", "--bgr"]
    elif case == "method":
        args += ["--method", "kl"]
    elif case == "exclude":
        args += ["--exclude", "no_such_layer", "--num-images", 2]
    elif case in ("decoder", "contradicting decoder"):
        args += ["--decoder", "yolo99" if case == "decoder" else "ultralytics", "--holdout", 3, "--num-images", 2]
    elif case == "report is out":
        args += ["--report", out]
    elif case == "cache is out":
        cache = ["--calibration-cache", out]
    else:
        args += ["--report", model]
    before = set(tmp_path.rglob("*"))
    code, _, err = run_cli(monkeypatch, capsys, "calibrate", model, *args, "--out", out, *cache)
    assert code == 2 and message in err and err.strip().count("\n") == 0, err
    assert set(tmp_path.rglob("*")) == before  # nothing written, no temporary left


def test_tensor_input_via_cli(setup, tmp_path, monkeypatch, capsys):
    model, _ = setup
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32))
    code, _, err = run_cli(monkeypatch, capsys, "calibrate", model, "--images", tmp_path / "x.npy",
                           "--out", tmp_path / "q.onnx", "--method", "minmax", "--backend", "tensorrt")
    assert code in (0, None), err
    assert (tmp_path / "q.onnx").is_file()
