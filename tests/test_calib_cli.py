"""`maedet-deploy calibrate` end to end: outputs on success; exit 2, one line and no file on bad input."""

import json

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli
from onnx import TensorProto
from test_calib_data import identity_model
from test_calib_quant import TinyGFL, draw_images, export



@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return export(TinyGFL, root / "tiny.onnx"), draw_images(root / "images", 12)




def test_int8_with_report_cache_and_target(setup, tmp_path, monkeypatch, capsys):
    model, images = setup
    out, report, cache = tmp_path / "q.onnx", tmp_path / "r.json", tmp_path / "cache.txt"
    code, stdout, err = run_cli(monkeypatch, capsys, "calibrate", model, "--images", images, "--out", out,
                                "--num-images", 6, "--holdout", 4, "--method", "percentile", "--report", report,
                                "--calibration-cache", cache, "--target-agreement", 0.999, "--latency", 0.2)
    assert code in (0, None), err
    assert out.is_file() and report.is_file() and cache.is_file()
    data = json.loads(report.read_text())
    assert data["calibration_samples"] == 6 and data["held_out"] == 4
    assert not set(data["calibration_names"]) & set(data["held_out_names"])
    assert data["int8"]["qdq"]["zero_points_all_zero"] and data["detection"]["decoder"] == "gfl"
    partial = data["partial"]
    assert partial["met"] == (partial["agreement"] >= 0.999) and data["latency"]["ratio"] > 0
    assert data["int8"]["qdq"]["quantized_layers"] + len(data["int8"]["qdq"]["float_layers"]) == 9
    assert cache.read_text().startswith("TRT-8601-EntropyCalibration2\n")
    assert "agreement mAP@0.5" in stdout and "calibrate (int8)" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.txt", "q.onnx", "r.json"]


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


@pytest.mark.parametrize("case, message", [
    ("empty", "no images"),
    ("unreadable", "cannot read image"),
    ("channels", "4 channels"),
    ("no_float", "no float input"),
    ("holdout", "need more than --holdout"),
    ("both_specs", "not both"),
    ("method", "--method must be"),
    ("exclude", "matches no node"),
])
def test_bad_input_exits_2_without_output(case, message, setup, tmp_path, monkeypatch, capsys):
    model, images = setup
    args = ["--images", images]
    if case == "empty":
        (tmp_path / "empty").mkdir()
        args = ["--images", tmp_path / "empty"]
    elif case == "unreadable":
        args = ["--images", unreadable(tmp_path / "bad")]
    elif case == "channels":
        model = tmp_path / "four.onnx"
        onnx.save(identity_model([1, 4, 16, 16]), str(model))
    elif case == "no_float":
        model = tmp_path / "ints.onnx"
        onnx.save(identity_model([1, 3, 16, 16], TensorProto.INT64), str(model))
    elif case == "holdout":
        args += ["--holdout", 12, "--report", tmp_path / "r.json"]
    elif case == "both_specs":
        (tmp_path / "spec.yaml").write_text("size: 64\n")
        args += ["--preprocess", tmp_path / "spec.yaml", "--bgr"]
    elif case == "method":
        args += ["--method", "kl"]
    elif case == "exclude":
        args += ["--exclude", "no_such_layer", "--num-images", 2]
    out = tmp_path / "out.onnx"
    before = set(tmp_path.rglob("*"))
    code, _, err = run_cli(monkeypatch, capsys, "calibrate", model, *args, "--out", out,
                           "--calibration-cache", tmp_path / "cache.txt")
    assert code == 2 and message in err and err.strip().count("\n") == 0, err
    assert set(tmp_path.rglob("*")) == before  # nothing written, no temporary left


def test_tensor_input_via_cli(setup, tmp_path, monkeypatch, capsys):
    model, _ = setup
    samples = np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", samples)
    code, _, err = run_cli(monkeypatch, capsys, "calibrate", model, "--images", tmp_path / "x.npy",
                           "--out", tmp_path / "q.onnx", "--method", "minmax")
    assert code in (0, None), err
    assert (tmp_path / "q.onnx").is_file()
