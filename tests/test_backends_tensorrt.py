"""TensorRT: the pure-Python parts everywhere (precision plans, profiles, metadata checks, the
missing-library error); building and running engines only where tensorrt and a CUDA GPU exist."""

import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from cli_helpers import run_cli
from test_backends import ppocr_det, scale_model

from maedet_deploy.backends import load_runner, metadata_path, open_runner
from maedet_deploy.backends.base import TensorSpec, read_metadata, save_with_metadata
from maedet_deploy.backends.onnx_file import graph_inputs
from maedet_deploy.backends.tensorrt import (INSTALL_HINT, METADATA_FORMAT, BuildOptions, check_engine,
                                             onnx_precisions, optimization_profile, precision_plan,
                                             trusted_metadata)
from maedet_deploy.errors import MaedetError

GPU = {"gpu": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"}


def metadata(**changes) -> dict:
    return {"format": METADATA_FORMAT, "tensorrt_version": "10.3.0", **GPU, "source_onnx": "det.onnx", **changes}


def qdq_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "qdq", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def fp16_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["n", 4])
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)], "half", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_graph_precision_is_read_from_the_onnx_graph():
    assert onnx_precisions(qdq_model()) == {"int8"}
    assert onnx_precisions(fp16_model()) == {"fp16"}
    assert onnx_precisions(onnx.load(str(ppocr_det()), load_external_data=False)) == set()
    (spec,) = graph_inputs(fp16_model())
    assert spec == TensorSpec("x", ("n", 4), np.dtype(np.float32))


def test_precision_plan_per_tensorrt_version():
    # 8.x: weakly typed, builder flags; a Q/DQ graph needs the INT8 flag too.
    assert precision_plan("8.5.2", set(), fp16=True, int8=False).flags == ("FP16",)
    plan = precision_plan("8.6.1", {"int8"}, fp16=True, int8=False)
    assert plan.flags == ("FP16", "INT8") and not plan.strongly_typed and plan.precision == "int8+fp16"
    assert precision_plan("8.6.1", set(), False, False).precision == "fp32"
    with pytest.raises(MaedetError, match="Q/DQ graph"):
        precision_plan("8.6.1", set(), fp16=False, int8=True)
    # >= 10: strongly typed, no flags, the graph decides; asking for more than it holds is an error.
    plan = precision_plan("10.3.0", {"int8", "fp16"}, fp16=True, int8=True)
    assert plan.flags == () and plan.strongly_typed and plan.precision == "int8+fp16"
    with pytest.raises(MaedetError, match="TensorRT 10.12.0 takes precision from the ONNX graph.*leave fp16 off") \
            as info:
        precision_plan("10.12.0", set(), fp16=True, int8=False)
    assert info.value.for_cli().startswith("--fp16: ")
    with pytest.raises(MaedetError, match="QuantizeLinear/DequantizeLinear.*leave int8 off") as info:
        precision_plan("11.0.0", {"fp16"}, fp16=False, int8=True)
    assert info.value.setting == "int8"
    assert precision_plan("11.0.0", set(), False, False, has_strongly_typed=False).strongly_typed is False


def test_optimization_profile_from_min_opt_max_shapes():
    inputs = [TensorSpec("x", ("n", 3, "h", "w"), np.dtype(np.float32)), TensorSpec("k", (1,), np.dtype(np.int64))]
    options = BuildOptions(min_shapes={"x": (1, 3, 320, 320)}, opt_shapes={"x": (1, 3, 640, 640)},
                           max_shapes={"x": (4, 3, 640, 640)})
    assert optimization_profile(inputs, options) == {"x": ((1, 3, 320, 320), (1, 3, 640, 640), (4, 3, 640, 640))}
    assert optimization_profile(inputs, BuildOptions(opt_shapes={"x": (1, 3, 64, 64)}))["x"] == ((1, 3, 64, 64),) * 3
    with pytest.raises(MaedetError, match="input 'x' .*needs an opt shape"):
        optimization_profile(inputs, BuildOptions())
    with pytest.raises(MaedetError, match="min <= opt <= max"):
        optimization_profile(inputs, BuildOptions(min_shapes={"x": (2, 3, 64, 64)}, opt_shapes={"x": (1, 3, 64, 64)},
                                                  max_shapes={"x": (4, 3, 64, 64)}))
    with pytest.raises(MaedetError, match="does not fit input 'x'"):
        optimization_profile(inputs, BuildOptions(opt_shapes={"x": (1, 4, 64, 64)}))
    with pytest.raises(MaedetError, match="no input named 'y'"):
        optimization_profile(inputs, BuildOptions(opt_shapes={"y": (1,)}))


def test_engine_metadata_from_another_tensorrt_or_gpu_is_refused():
    check_engine(metadata(), "10.3.0", GPU, "det.engine")
    with pytest.raises(MaedetError, match=r"built with TensorRT 8\.6\.1, this is TensorRT 10\.3\.0; build it again "
                                          r"here from det\.onnx"):
        check_engine(metadata(tensorrt_version="8.6.1"), "10.3.0", GPU, "det.engine")
    with pytest.raises(MaedetError, match=r"built for NVIDIA A100-SXM4-40GB \(sm 8\.0\), this GPU is Orin \(sm 8\.7\)"):
        check_engine(metadata(), "10.3.0", {"gpu": "Orin", "compute_capability": "8.7"}, "det.engine")
    with pytest.raises(MaedetError, match="not maedet engine metadata"):
        check_engine({"format": "other"}, "10.3.0", GPU, "det.engine")


def test_missing_tensorrt_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(MaedetError) as info:
        load_runner(scale_model(tmp_path / "s.onnx"), backend="tensorrt")
    assert str(info.value) == INSTALL_HINT and "pip install tensorrt" in INSTALL_HINT and "JetPack" in INSTALL_HINT


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """A `tensorrt` module with only a version: enough for everything checked before a GPU is touched."""
    import maedet_deploy.cli.main  # noqa: F401  (torch's import-time probing must not see the fake)

    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.3.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def test_onnx_for_tensorrt_is_checked_before_building(fake_tensorrt, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    with pytest.raises(MaedetError, match="not an ONNX model"):
        open_runner(junk, backend="tensorrt")
    with pytest.raises(MaedetError, match=r"input 'x' dim 0 \('batch'\) is dynamic"):
        open_runner(scale_model(tmp_path / "s.onnx"), backend="tensorrt")


def fake_engine(folder: Path, **record) -> Path:
    """An engine file with a record as `build` writes it: its sha256 included."""
    engine = folder / "det.engine"
    engine.write_bytes(b"\0" * 16)
    (folder / "det.engine.json").write_text(json.dumps({**metadata(**record), "sha256": hashlib.sha256(
        engine.read_bytes()).hexdigest()}))
    return engine


def test_cli_refuses_an_engine_from_another_tensorrt_version(fake_tensorrt, monkeypatch, capsys, tmp_path):
    engine = fake_engine(tmp_path, tensorrt_version="8.6.1")
    code, out, err = run_cli(monkeypatch, capsys, "bench", engine, "--backend", "tensorrt")
    assert code == 2 and "built with TensorRT 8.6.1, this is TensorRT 10.3.0" in err
    assert len(err.strip().splitlines()) == 1


def test_engines_load_only_with_a_matching_record_or_explicit_trust(monkeypatch, capsys, tmp_path):
    """Engines are code: the check runs before TensorRT is even imported, so it holds everywhere."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = fake_engine(tmp_path)
    assert trusted_metadata(engine)["sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    engine.write_bytes(b"\1" * 16)                          # replaced after it was built
    with pytest.raises(MaedetError, match="does not match it") as info:
        trusted_metadata(engine)
    assert info.value.setting == "trust_engine"
    assert trusted_metadata(engine, trust=True) is None     # trusted: loaded without the record's checks
    metadata_path(engine).unlink()
    code, _, err = run_cli(monkeypatch, capsys, "bench", engine, "--backend", "tensorrt")
    assert code == 2 and err.count("\n") == 1 and "--trust-engine" in err and "is missing" in err
    code, _, err = run_cli(monkeypatch, capsys, "bench", engine, "--backend", "tensorrt", "--trust-engine")
    assert code == 2 and err == f"error: {INSTALL_HINT}\n"   # past the trust check, on to TensorRT itself
    with pytest.raises(MaedetError, match="is an ONNX model, not an engine"):
        trusted_metadata(scale_model(tmp_path / "s.onnx"))


def test_tensorrt_build_refuses_to_overwrite_its_input(monkeypatch, capsys, tmp_path):
    model = scale_model(tmp_path / "s.onnx")
    for out in (model, tmp_path / "s.engine.onnx"):
        code, _, err = run_cli(monkeypatch, capsys, "build", model, "--backend", "tensorrt", "--out", out)
        assert code == 2 and err.startswith("error: --out: ") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx"]


def test_a_sidecar_is_written_last_and_names_its_file(tmp_path):
    out = tmp_path / "m.bin"
    out.write_bytes(b"old")
    metadata_path(out).write_text(json.dumps({"sha256": hashlib.sha256(b"old").hexdigest(), "v": 1}))
    seen = []
    record = save_with_metadata(out, lambda tmp: seen.append(metadata_path(out).exists()) or tmp.write_bytes(b"new"),
                                {"v": 2})
    assert seen == [True]       # the old pair stays whole until the new file is complete...
    assert read_metadata(out) == record == {"v": 2, "sha256": hashlib.sha256(b"new").hexdigest()}  # ...then swaps
    with pytest.raises(MaedetError, match="cannot write"):
        save_with_metadata(out, lambda tmp: (_ for _ in ()).throw(OSError(28, "No space left on device")), {"v": 3})
    assert read_metadata(out) == record
    out.write_bytes(b"changed")
    assert read_metadata(out) is None


@pytest.mark.tensorrt
def test_engine_build_run_and_metadata_on_a_gpu(tmp_path):
    pytest.importorskip("tensorrt")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from maedet_deploy.backends import build_model
    from maedet_deploy.bench import make_feed
    from maedet_deploy.compare import compare_runners, random_feeds

    engine = tmp_path / "det.engine"
    record = build_model(ppocr_det(), engine, "tensorrt", opt_shapes={"x": (1, 3, 320, 320)},
                         timing_cache=str(tmp_path / "timing.cache"))
    assert record["precision"] == "fp32" and (tmp_path / "timing.cache").is_file()
    trt_runner, ort_runner = load_runner(engine, "tensorrt"), load_runner(ppocr_det())
    assert make_feed(trt_runner.inputs, {"x": (1, 3, 320, 320)})["x"].shape == (1, 3, 320, 320)
    result = compare_runners(ort_runner, trt_runner, random_feeds(ort_runner.inputs, {"x": (1, 3, 320, 320)}),
                             atol=1e-3, rtol=1e-2)
    assert result.passed, result.to_dict()
