"""Runners on real models: ONNX Runtime on a third-party PaddleOCR detector (dynamic dims), offline
optimization, the torch eager runner, shape specs and the device fingerprint."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from maedet_deploy.backends import build_model, load_runner, metadata_path
from maedet_deploy.backends.base import Runner, TensorSpec
from maedet_deploy.backends.fingerprint import ID_FIELDS, device_fingerprint, fingerprint_id, usable_cores
from maedet_deploy.backends.shapes import parse_batches, parse_shapes, profile_shapes, resolve_shapes
from maedet_deploy.backends.torch import TorchRunner
from maedet_deploy.bench import make_feed
from maedet_deploy.errors import MaedetError


def ppocr_det() -> Path:
    """A real trained text detector exported from Paddle by a third party: input x [?,3,?,?]."""
    root = importlib.util.find_spec("rapidocr_onnxruntime").submodule_search_locations[0]
    return Path(root) / "models" / "ch_PP-OCRv4_det_infer.onnx"


def scale_model(path: Path, dims=("batch", 3, "height", "width"), factor: float = 2.0) -> Path:
    """y = x * factor, with the given (possibly named dynamic) input dims."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(dims))
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [factor])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "scale", [x], [y], [k])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_onnxruntime_runner_on_a_third_party_detector():
    runner = load_runner(ppocr_det())
    assert isinstance(runner, Runner)
    (spec,) = runner.inputs
    assert spec.name == "x" and spec.shape[1] == 3 and spec.is_dynamic and spec.dtype == np.float32
    assert runner.settings["intra_threads"] == usable_cores()
    assert runner.settings["graph_optimization"] == "all" and runner.settings["execution_mode"] == "sequential"
    out = runner.infer(make_feed(runner.inputs, {"x": (1, 3, 64, 96)}))
    (prob,) = out.values()
    assert prob.shape == (1, 1, 64, 96) and 0 <= prob.min() and prob.max() <= 1
    runner.close()


def test_runner_options_are_applied_and_checked():
    runner = load_runner(ppocr_det(), intra_threads=1, graph_optimization="basic", execution_mode="parallel",
                         spinning=False)
    assert runner.settings["intra_threads"] == 1 and runner.settings["graph_optimization"] == "basic"
    with pytest.raises(MaedetError, match="graph optimization"):
        load_runner(ppocr_det(), graph_optimization="max")
    with pytest.raises(MaedetError, match="execution mode"):
        load_runner(ppocr_det(), execution_mode="async")
    with pytest.raises(MaedetError, match="no CUDAExecutionProvider|onnxruntime-gpu"):
        load_runner(ppocr_det(), device="cuda")


def test_bad_models_and_backends_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(MaedetError, match="cannot load") as info:
        load_runner(junk)
    assert "\n" not in str(info.value)
    with pytest.raises(MaedetError, match="not found"):
        load_runner(tmp_path / "missing.onnx")
    with pytest.raises(MaedetError, match="unknown backend 'openvino'"):
        load_runner(junk, backend="openvino")


def test_offline_optimized_build_loads_without_reoptimizing_and_matches(tmp_path):
    out = tmp_path / "det.opt.onnx"
    record = build_model(ppocr_det(), out)
    assert out.is_file() and json.loads(metadata_path(out).read_text())["graph_optimization"] == "all"
    assert record["source_sha256"] and record["load_seconds_optimized"] > 0
    original, optimized = load_runner(ppocr_det()), load_runner(out)
    assert optimized.settings["graph_optimization"] == "none"
    feed = make_feed(original.inputs, {"x": (1, 3, 64, 64)}, seed=3)
    np.testing.assert_allclose(*(list(r.infer(feed).values())[0] for r in (original, optimized)), atol=1e-5)

    record = json.loads(metadata_path(out).read_text())
    record["cpu"] = "Some Other CPU"
    metadata_path(out).write_text(json.dumps(record))
    with pytest.raises(MaedetError, match="optimized by onnxruntime .* on Some Other CPU.*build it again here"):
        load_runner(out)
    with pytest.raises(MaedetError, match="must differ"):
        build_model(out, out)


def test_torch_runner_wraps_any_module_with_the_same_interface():
    import torch

    class TwoHeads(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)), x * 2

    spec = TensorSpec("images", (2, 3, 8, 8), np.dtype(np.float32))
    runner = TorchRunner(TwoHeads(), [spec], ("pooled", "doubled"), threads=1)
    assert isinstance(runner, Runner) and torch.get_num_threads() == 1
    assert [(o.name, o.shape) for o in runner.outputs] == [("pooled", (2, 3)), ("doubled", (2, 3, 8, 8))]
    feed = make_feed(runner.inputs)
    np.testing.assert_allclose(runner.infer(feed)["doubled"], feed["images"] * 2)
    torch.set_num_threads(usable_cores())


def test_shape_specs_parse_and_resolve():
    assert parse_shapes(["x:1x3x640x640", "input:0:1x4,y:2"]) == {"x": (1, 3, 640, 640), "input:0": (1, 4),
                                                                    "y": (2,)}
    for bad in ("x", "x:", "x:1x0", "x:1xa", ":1x2"):
        with pytest.raises(MaedetError, match="NAME:1x3x640x640"):
            parse_shapes([bad])
    with pytest.raises(MaedetError, match="two shapes"):
        parse_shapes(["x:1x2", "x:1x3"])
    assert parse_batches("1,2,4") == [1, 2, 4] and parse_batches(None) == [None]
    with pytest.raises(MaedetError, match="batch"):
        parse_batches("1,two")

    dynamic = TensorSpec("x", ("N", 3, None, None), np.dtype(np.float32))
    assert resolve_shapes([dynamic], {"x": (1, 3, 32, 48)}, batch=4) == {"x": (4, 3, 32, 48)}
    with pytest.raises(MaedetError, match=r"input 'x' dim 2 is dynamic.*e\.g\. x:1x3x\?x\?") as info:
        resolve_shapes([dynamic], batch=1)
    assert info.value.for_cli().startswith("--shape: ")
    with pytest.raises(MaedetError, match="dim 1 is fixed at 3"):
        resolve_shapes([dynamic], {"x": (1, 4, 8, 8)})
    with pytest.raises(MaedetError, match="no input named 'y'"):
        resolve_shapes([dynamic], {"y": (1,)})
    fixed = TensorSpec("x", (1, 3, 8, 8), np.dtype(np.float32))
    with pytest.raises(MaedetError, match="fixed batch of 1"):
        resolve_shapes([fixed], batch=2)
    assert profile_shapes([dynamic], {"x": (1, 3, 32, 32)}, [2, 1, 8]) == (
        {"x": (1, 3, 32, 32)}, {"x": (2, 3, 32, 32)}, {"x": (8, 3, 32, 32)})


def test_fingerprint_is_recorded_and_its_id_is_stable():
    data = device_fingerprint()
    assert data["cpu"] and data["physical_cores"] >= 1 and data["onnxruntime"] and data["python"]
    assert 1 <= data["usable_cores"] <= data["physical_cores"]
    assert "tensorrt" in data and "gpu" in data
    key = fingerprint_id()
    assert key == fingerprint_id(dict(data)) and len(key) == 12
    assert fingerprint_id({**data, "python": "0.0"}) == key            # not a latency factor
    for field in ("cpu", "usable_cores", "onnxruntime", "gpu"):
        assert field in ID_FIELDS and fingerprint_id({**data, field: "changed"}) != key
    data["cpu"] = "mutated"
    assert device_fingerprint()["cpu"] != "mutated"                    # callers get a copy


def test_resolve_backend_auto_picks_tensorrt_only_with_a_gpu(monkeypatch):
    import importlib.machinery
    import sys
    import types

    import torch

    from maedet_deploy.backends import resolve_backend

    assert [resolve_backend(name) for name in ("onnxruntime", "tensorrt")] == ["onnxruntime", "tensorrt"]
    with pytest.raises(MaedetError, match="unknown backend 'openvino'") as info:
        resolve_backend("openvino")
    assert info.value.setting == "backend"
    monkeypatch.setitem(sys.modules, "tensorrt", None)           # not installed
    assert resolve_backend("auto") == "onnxruntime"
    installed = types.ModuleType("tensorrt")
    installed.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", installed)      # installed: the GPU decides
    assert resolve_backend("auto") == ("tensorrt" if torch.cuda.is_available() else "onnxruntime")
