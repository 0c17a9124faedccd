from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from cli_helpers import cli, run_cli
from torch import nn

from maedet_deploy.backends import load_runner
from maedet_deploy.errors import MaedetError
from maedet_deploy.export import EndToEnd, export_onnx, export_structure_onnx
from maedet_deploy.models import create_detector
from maedet_deploy.structure import Structure, save_structure
from maedet_deploy.zoo import get_structure

torch.set_num_threads(2)
CLASSES = 3
SIZE = 128
# The seed's topology (stem, five K1KXK1 blocks, a stride-1 block closing C4) at a quarter
# of its channels: the same graph shape, a 16th of the weights, so exports stay fast.
TINY = Structure(tuple(replace(b, cin=b.cin // 4 if i else b.cin, cout=b.cout // 4, btn=b.btn // 4)
                       for i, b in enumerate(get_structure("maedet-seed").blocks)))


@pytest.fixture(scope="module")
def detector():
    return create_detector(TINY, num_classes=CLASSES, image_size=SIZE, neck_channels=32)


def op_types(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_end_to_end_graph(detector, tmp_path):
    path = tmp_path / "det.onnx"
    k = 20
    # Threshold 0 so the random-weight head yields many candidates and NMS really works.
    report = export_onnx(detector, path, SIZE, score_threshold=0.0, iou_threshold=0.5, max_detections=k)
    assert report.max_abs_error is not None and report.max_abs_error < 1e-3
    assert report.outputs == {"num_dets": [1, 1], "det_boxes": [1, k, 4], "det_scores": [1, k],
                              "det_classes": [1, k]}
    assert "NonMaxSuppression" in op_types(path)
    runner = load_runner(path)
    assert [(o.name, o.dtype) for o in runner.outputs] == [
        ("num_dets", np.int64), ("det_boxes", np.float32), ("det_scores", np.float32), ("det_classes", np.int64)]
    images = np.random.default_rng(1).standard_normal((1, 3, SIZE, SIZE), dtype=np.float32)
    out = runner.infer({"images": images})
    n = int(out["num_dets"][0, 0])
    assert 0 < n <= k
    boxes, scores, classes = out["det_boxes"][0], out["det_scores"][0], out["det_classes"][0]
    assert boxes.min() >= 0 and boxes.max() <= SIZE
    assert np.all(np.diff(scores[:n]) <= 0) and np.all(scores[:n] > 0)
    assert np.all((0 <= classes[:n]) & (classes[:n] < CLASSES))
    assert np.all(boxes[n:] == 0) and np.all(scores[n:] == 0) and np.all(classes[n:] == -1)
    # The same input through PyTorch (torchvision NMS in eager mode) gives the same detections.
    with torch.no_grad():
        num, tboxes, tscores, tclasses = EndToEnd(detector, k, 0.5, 0.0)(torch.from_numpy(images))
    assert int(num) == n and np.array_equal(tclasses.numpy()[0], classes)
    np.testing.assert_allclose(tboxes.numpy()[0], boxes, atol=1e-3)


def test_raw_export_without_nms(detector, tmp_path):
    path = tmp_path / "raw.onnx"
    report = export_onnx(detector, path, SIZE, nms=False)
    points = 16 * 16 + 8 * 8 + 4 * 4
    assert report.outputs == {"boxes": [1, points, 4], "scores": [1, points, CLASSES]}
    assert report.max_abs_error < 1e-3
    assert "NonMaxSuppression" not in op_types(path)


def test_dynamic_batch_and_size(detector, tmp_path):
    path = tmp_path / "dyn.onnx"
    report = export_onnx(detector, path, SIZE, nms=False, dynamic_batch=True, dynamic_size=True)
    assert report.inputs == {"images": ["batch", 3, "height", "width"]}
    assert report.outputs["scores"] == ["batch", "anchors", CLASSES]
    images = np.random.default_rng(2).standard_normal((2, 3, 97, 130), dtype=np.float32)
    out = load_runner(path).infer({"images": images})
    with torch.no_grad():
        boxes, scores = detector(torch.from_numpy(images))
    np.testing.assert_allclose(out["boxes"], boxes.numpy(), atol=1e-2, rtol=1e-4)
    np.testing.assert_allclose(out["scores"], scores.numpy(), atol=1e-4)
    assert out["boxes"][..., 0::2].max() <= 130 and out["boxes"][..., 1::2].max() <= 97


def test_dynamic_batch_with_nms(detector, tmp_path):
    path = tmp_path / "dyn_nms.onnx"
    export_onnx(detector, path, SIZE, dynamic_batch=True, score_threshold=0.0, max_detections=10)
    images = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    out = load_runner(path).infer({"images": images})
    assert out["num_dets"].shape == (2, 1) and out["det_boxes"].shape == (2, 10, 4)
    assert np.all(out["num_dets"] <= 10) and np.all(out["num_dets"] > 0)
    single = load_runner(path).infer({"images": images[1:]})
    np.testing.assert_array_equal(single["det_classes"][0], out["det_classes"][1])  # NMS is per image


class Given(nn.Module):
    """Boxes and scores read straight from the input: images [B, 1, N, 4 + C]."""

    image_size = (4, 6)
    in_channels = 1

    def forward(self, images):
        return images[:, 0, :, :4], images[:, 0, :, 4:]


def test_nms_is_class_aware_and_thresholded(tmp_path):
    path = tmp_path / "nms.onnx"
    export_onnx(Given(), path, score_threshold=0.2, iou_threshold=0.5, max_detections=5, verify=False,
                simplify=False)
    rows = np.array([[0, 0, 10, 10, 0.9, 0.0],   # class 0, best
                     [1, 1, 10, 10, 0.8, 0.0],   # class 0, overlaps the best: suppressed
                     [1, 1, 10, 10, 0.0, 0.7],   # class 1, same place: kept (class-aware)
                     [20, 20, 30, 30, 0.1, 0.0]],  # below the score threshold
                    dtype=np.float32)
    out = load_runner(path).infer({"images": rows[None, None]})
    assert out["num_dets"].tolist() == [[2]]
    assert out["det_classes"][0, :2].tolist() == [0, 1]
    np.testing.assert_allclose(out["det_scores"][0, :2], [0.9, 0.7])
    np.testing.assert_allclose(out["det_boxes"][0, :2], rows[[0, 2], :4])


def test_verification_failure_writes_nothing(detector, tmp_path):
    path = tmp_path / "never.onnx"
    with pytest.raises(MaedetError, match="differs from PyTorch"):
        export_onnx(detector, path, 64, nms=False, simplify=False, tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option, message", [({"opset": 16}, "opset 16"), ({"iou_threshold": 0}, "IoU"),
                                             ({"max_detections": 0}, "max detections")])
def test_bad_options_are_user_errors(detector, tmp_path, option, message):
    with pytest.raises(MaedetError, match=message):
        export_onnx(detector, tmp_path / "x.onnx", 64, **option)


@pytest.mark.parametrize("scope, names", [("backbone", ["C3", "C4", "C5"]), ("detector", ["boxes", "scores"])])
def test_fast_structure_export(tmp_path, scope, names):
    path = tmp_path / f"{scope}.onnx"
    report = export_structure_onnx(get_structure("maedet-seed"), path, 96, scope=scope, num_classes=4)
    assert list(report.outputs) == names and report.max_abs_error is None
    assert "BatchNormalization" not in op_types(path) and "Conv" in op_types(path)
    runner = load_runner(path)
    out = runner.infer({"images": np.zeros((1, 3, 96, 96), np.float32)})
    assert list(out) == names


def test_cli_export(tmp_path):
    structure = tmp_path / "tiny.json"
    save_structure(structure, TINY)
    path = tmp_path / "cli.onnx"
    result = cli("export", structure, "--image-size", "96", "--num-classes", "2", "--neck-channels", "16",
                 "--out", path, "--max-detections", "7", "--json")
    assert result.returncode == 0, result.stderr
    assert '"det_boxes": [\n      1,\n      7,\n      4\n    ]' in result.stdout
    assert path.is_file()




def test_cli_bad_inputs_exit_2_without_a_file(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"class": "ConvKXBNRELU", "in": 3, "out": 16, "s": 2}]')
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(monkeypatch, capsys, "export", bad, "--out", out)
    assert code == 2 and "missing field 'k'" in err and err.strip().count("\n") == 0
    code, _, err = run_cli(monkeypatch, capsys, "export", "no-such-net", "--out", out)
    assert code == 2 and "neither a zoo name" in err
    checkpoint = tmp_path / "other.pth"
    torch.save({"state_dict": {"head.scales": torch.ones(3)}}, checkpoint)
    code, _, err = run_cli(monkeypatch, capsys, "export", "maedet-seed", "--checkpoint", checkpoint, "--out", out)
    assert code == 2 and "missing key" in err
    assert not out.exists()


def test_tiny_input_with_saturated_tied_scores_verifies(tmp_path):
    """At 32x32 the random-weight MAE-DET-S saturates hundreds of scores to exactly 1.0: which
    tied detections fill the K slots is up to each NMS, and is not a verification failure."""
    detector = create_detector("maedet-s", num_classes=80, image_size=32)
    report = export_onnx(detector, tmp_path / "tiny.onnx", 32, simplify=False)
    outputs = load_runner(report.path).infer({"images": np.zeros((1, 3, 32, 32), np.float32)})
    assert outputs["num_dets"][0, 0] == 100 and outputs["det_scores"].min() == 1.0
