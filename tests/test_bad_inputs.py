"""Every command given broken files and odd flags, as a new user would: each case exits with code 2,
prints exactly one line on stderr naming the problem, and leaves no new file or folder (in the working
folder, beside its inputs, or as a latency cache)."""

import json
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from cli_helpers import run_cli
from maedet_deploy.atomic import atomic_path
from maedet_deploy.errors import MaedetError
from maedet_deploy.structure import parse_structure
from nets import TINY

STEM = {"class": "ConvKXBNRELU", "in": 3, "out": 8, "s": 2, "k": 3}


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size (its pixels are never there): what a decompression bomb looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        chunk(b"IEND", b"")


def _conv_model(path: Path, dims: list) -> Path:
    """images [dims] -> 3x3 conv -> relu: small, quantizable, with static or named dynamic dims."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.random.default_rng(0).normal(
        size=(4, 3, 3, 3)).astype(np.float32).ravel().tolist())
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["out"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Broken and valid inputs, made once; every case is checked not to write beside them."""
    root = tmp_path_factory.mktemp("inputs")
    def blocks(*rest: dict) -> str:
        return json.dumps({"blocks": [STEM, *rest]})

    def super_block(**changes) -> dict:
        return {"class": "SuperResK1KXK1", "in": 8, "out": 16, "s": 2, "k": 3, "L": 1, "btn": 8, **changes}

    files = {
        "tiny.json": json.dumps({"blocks": TINY.to_dicts()}),
        "deep.json": "[" * 100_000 + "]" * 100_000,
        "huge_out.json": json.dumps({"blocks": [{**STEM, "out": 10**12}]}),
        "deep_l.json": blocks(super_block(L=10**9)),
        "wide.json": json.dumps({"blocks": [{**STEM, "out": 60_000}, super_block(**{"in": 60_000, "out": 60_000,
                                                                                    "btn": 60_000, "k": 63})]}),
        "long_int.json": '{"blocks": [{"class": "ConvKXBNRELU", "in": 3, "out": ' + "9" * 5000 + ', "s": 2, "k": 3}]}',
        "big.json": " " * (2 << 20) + "[]",
        "garbage.txt": "this is not a structure",
        "junk.onnx": "not a protobuf",
        "junk.pth": "not a checkpoint",
        "model.engine": "\0" * 16,
        "a_file": "",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    _conv_model(root / "static.onnx", [1, 3, 8, 8])
    _conv_model(root / "dynamic.onnx", ["n", 3, "h", "w"])
    (root / "bomb").mkdir()
    (root / "bomb" / "bomb.png").write_bytes(_png_header(20_000, 20_000))
    (root / "folder").mkdir()
    np.savez(root / "objects.npz", images=np.array([{"a": 1}], dtype=object))
    (root / "corrupt.npz").write_bytes(b"PK\x03\x04 truncated zip")
    np.save(root / "empty.npy", np.zeros((0, 3, 8, 8), np.float32))
    np.save(root / "subnormal.npy", np.full((4, 3, 8, 8), 1e-41, np.float32))
    np.save(root / "samples.npy", np.random.default_rng(0).random((40, 3, 8, 8), np.float32))
    return root


# (id, arguments ({in} is the inputs folder), text the one line must hold); outputs go to the working folder.
CASES = [
    ("info-nested-1e5", ["info", "{in}/deep.json"], "nested 100000 deep"),
    ("info-out-1e12", ["info", "{in}/huge_out.json"], "out=1,000,000,000,000 is over the limit"),
    ("info-L-1e9", ["info", "{in}/deep_l.json"], "L=1,000,000,000 is over the limit"),
    ("info-params-cap", ["info", "{in}/wide.json"], "parameters; the limit is"),
    ("info-5000-digit-int", ["info", "{in}/long_int.json"], "not JSON"),
    ("info-2MB-file", ["info", "{in}/big.json"], "a structure file is at most"),
    ("info-garbage", ["info", "{in}/garbage.txt"], "not JSON"),
    ("info-folder", ["info", "{in}/folder"], "cannot read structure"),
    ("info-size-0", ["info", "maedet-s", "--image-size", "0"], "--image-size"),
    ("info-flops-cap", ["info", "maedet-s", "--image-size", "200000"], "MACs at 200000x200000; the limit"),
    ("info-forward-memory", ["info", "maedet-seed", "--method", "forward", "--image-size", "40000"], "of memory"),
    ("info-kernel-vs-size", ["info", "maedet-l", "--image-size", "8"], "only see padding"),
    ("zoo-size-text", ["zoo", "--image-size", "abc"], "--image-size"),
    ("search-init-nested", ["search", "--out", "s", "--layers", "91", "--init", "{in}/deep.json"], "nested"),
    ("search-size-0", ["search", "--out", "s", "--layers", "91", "--image-size", "0"], "--image-size"),
    ("profile-size-0", ["profile", "--image-size", "0"], "--image-size"),
    ("profile-round-0", ["profile", "--round-s", "0"], "--round-s: must be > 0"),
    ("search-round-1e3", ["search", "--out", "s", "--latency-ms", "5", "--round-s", "1000"], "--round-s"),
    ("export-out-1e12", ["export", "{in}/huge_out.json", "--out", "x.onnx"], "over the limit"),
    ("export-flops-cap", ["export", "maedet-s", "--image-size", "200000", "--out", "x.onnx"], "the limit is"),
    ("export-memory", ["export", "maedet-s", "--image-size", "30000", "--out", "x.onnx"], "of memory"),
    ("export-classes-0", ["export", "{in}/tiny.json", "--num-classes", "0"], "--num-classes"),
    ("export-classes-1e9", ["export", "{in}/tiny.json", "--num-classes", "1000000000"], "--num-classes"),
    ("export-neck-1e12", ["export", "{in}/tiny.json", "--neck-channels", "1000000000000"], "--neck-channels"),
    ("export-opset", ["export", "{in}/tiny.json", "--opset", "12", "--image-size", "64"], "opset 12"),
    ("export-batch-0", ["export", "{in}/tiny.json", "--batch", "0", "--image-size", "64"], "batch"),
    ("export-checkpoint", ["export", "{in}/tiny.json", "--checkpoint", "{in}/junk.pth"], "cannot read checkpoint"),
    ("export-out-under-file", ["export", "{in}/tiny.json", "--image-size", "64", "--out", "{in}/a_file/x.onnx"],
     "cannot write"),
    ("export-usage", ["export", "{in}/tiny.json", "--num-classes", "abc"], "--num-classes"),
    ("build-out-is-input", ["build", "{in}/static.onnx", "--out", "{in}/static.onnx"], "--out: must differ"),
    ("build-trt-out-is-input", ["build", "{in}/static.onnx", "--backend", "tensorrt", "--out", "{in}/static.onnx"],
     "--out: must differ"),
    ("build-junk", ["build", "{in}/junk.onnx", "--out", "y.onnx"], "cannot load"),
    ("build-missing", ["build", "{in}/missing.onnx", "--out", "y.onnx"], "not found"),
    ("build-fp16-on-ort", ["build", "{in}/static.onnx", "--out", "y.onnx", "--fp16"], "only apply to"),
    ("bench-shape-memory", ["bench", "{in}/dynamic.onnx", "--shape", "images:1x3x200000x200000"], "of memory"),
    ("bench-duration-0", ["bench", "{in}/static.onnx", "--duration", "0"], "--duration"),
    ("bench-report-suffix", ["bench", "{in}/static.onnx", "--report", "r.txt"], "--report"),
    ("bench-rounds-0", ["bench", "{in}/static.onnx", "--rounds", "0"], "--rounds"),
    ("bench-batch-0", ["bench", "{in}/dynamic.onnx", "--batch", "0"], "batch"),
    ("bench-untrusted-engine", ["bench", "{in}/model.engine", "--backend", "tensorrt"], "--trust-engine"),
    ("bench-torch-out-1e12", ["bench", "{in}/static.onnx", "--torch-baseline", "{in}/huge_out.json"],
     "over the limit"),
    ("bench-missing-arg", ["bench"], "Missing argument"),
    ("compare-junk", ["compare", "{in}/static.onnx", "{in}/junk.onnx"], "cannot load"),
    ("compare-image-bomb", ["compare", "{in}/static.onnx", "{in}/static.onnx", "--images", "{in}/bomb"], "pixels"),
    ("calibrate-npz-objects", ["calibrate", "{in}/static.onnx", "--images", "{in}/objects.npz", "--out", "q.onnx"],
     "objects.npz"),
    ("calibrate-npz-corrupt", ["calibrate", "{in}/static.onnx", "--images", "{in}/corrupt.npz", "--out", "q.onnx"],
     "corrupt.npz"),
    ("calibrate-npy-empty", ["calibrate", "{in}/static.onnx", "--images", "{in}/empty.npy", "--out", "q.onnx"],
     "empty.npy"),
    ("calibrate-image-bomb", ["calibrate", "{in}/static.onnx", "--images", "{in}/bomb", "--out", "q.onnx"],
     "pixels"),
    ("calibrate-report-is-out", ["calibrate", "{in}/static.onnx", "--images", "{in}/samples.npy", "--out", "q.onnx",
                                 "--report", "q.onnx"], "--report"),
    ("calibrate-cache-is-out", ["calibrate", "{in}/static.onnx", "--images", "{in}/samples.npy", "--out", "q.onnx",
                                "--calibration-cache", "q.onnx"], "--calibration-cache"),
    ("pipeline-size-0", ["pipeline", "--latency-ms", "5", "--image-size", "0", "--out", "p"], "--image-size"),
    ("pipeline-size-huge", ["pipeline", "--latency-ms", "5", "--image-size", "200000", "--out", "p"], "--image-size"),
    ("pipeline-both-budgets", ["pipeline", "--latency-ms", "5", "--speedup", "2", "--out", "p"], "not both"),
    ("pipeline-negative-budget", ["pipeline", "--latency-ms", "-1", "--out", "p"], "--latency-ms"),
    ("pipeline-nan-speedup", ["pipeline", "--speedup", "nan", "--out", "p"], "--speedup"),
    ("pipeline-init-nested", ["pipeline", "--latency-ms", "5", "--init", "{in}/deep.json", "--out", "p"], "nested"),
    ("pipeline-no-images", ["pipeline", "--latency-ms", "5", "--images", "{in}/missing", "--out", "p"], "--images"),
    ("pipeline-out-is-file", ["pipeline", "--latency-ms", "5", "--out", "{in}/a_file"], "--out"),
    ("pipeline-method", ["pipeline", "--latency-ms", "5", "--method", "bogus", "--out", "p"], "--method"),
    ("pipeline-seed", ["pipeline", "--latency-ms", "5", "--seed", "-1", "--out", "p"], "--seed"),
    ("pipeline-backend", ["pipeline", "--latency-ms", "5", "--backend", "openvino", "--out", "p"], "--backend"),
    ("pipeline-bench-seconds", ["pipeline", "--latency-ms", "5", "--bench-seconds", "0", "--out", "p"],
     "--bench-seconds"),
    ("pipeline-holdout", ["pipeline", "--latency-ms", "5", "--holdout", "100000", "--out", "p"], "--holdout"),
    ("pipeline-float-macs", ["pipeline", "--latency-ms", "5", "--float-macs", "1", "--out", "p"], "--float-macs"),
    ("pipeline-cache-is-folder", ["pipeline", "--latency-ms", "5", "--latency-cache", "{in}/folder", "--out", "p"],
     "--latency-cache"),
]


def _tree(*roots: Path) -> set[str]:
    return {str(path) for root in roots for path in root.rglob("*")}


@pytest.mark.parametrize("case", [pytest.param(case, id=case[0]) for case in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, inputs, tmp_path, monkeypatch, capsys):
    _, args, expected = case
    cache = tmp_path / "cache" / "latency.sqlite"
    monkeypatch.setenv("MAEDET_LATENCY_CACHE", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _tree(work, inputs)
    code, out, err = run_cli(monkeypatch, capsys, *(arg.replace("{in}", str(inputs)) for arg in args))
    assert (code, err.count("\n")) == (2, 1), err
    assert err.startswith("error: ") and expected in err, err
    assert _tree(work, inputs) == before and not cache.parent.exists()


def test_enough_cases_across_every_command():
    commands = {args[0] for _, args, _ in CASES}
    assert len(CASES) >= 40 and commands == {"info", "zoo", "search", "profile", "export", "build", "bench",
                                             "compare", "calibrate", "pipeline"}


def test_a_file_size_limit_while_writing_is_one_line_and_leaves_nothing(inputs, tmp_path, monkeypatch, capsys):
    """The atomic writer's OSError (here EFBIG from RLIMIT_FSIZE; ENOSPC takes the same path)."""
    monkeypatch.chdir(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))   # Python ignores SIGXFSZ: writes fail
    try:
        code, _, err = run_cli(monkeypatch, capsys, "export", inputs / "tiny.json", "--image-size", "64",
                               "--out", "det.onnx")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert (code, err.count("\n")) == (2, 1) and "cannot write det.onnx: File too large" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_is_one_error_and_leaves_nothing(tmp_path):
    import errno

    with pytest.raises(MaedetError, match="cannot write .*out.bin: No space left on device"):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda children: st.lists(children, max_size=4) | st.dictionaries(
                         st.sampled_from(["class", "in", "out", "s", "k", "L", "btn", "blocks", "x"]) | st.text(
                             max_size=4), children, max_size=6), max_leaves=30)
_FIELD = st.one_of(st.integers(-2, 2**70), st.floats(allow_nan=True), st.text(max_size=3), st.none(),
                   st.lists(st.integers(), max_size=2))
_BLOCK = st.fixed_dictionaries({"class": st.sampled_from(["ConvKXBNRELU", "SuperResK1KXK1", "SuperResKXKX",
                                                          "SuperResK1DWK1", "Nope"]),
                                "in": _FIELD, "out": _FIELD, "s": _FIELD, "k": _FIELD},
                               optional={"L": _FIELD, "btn": _FIELD, "extra": _FIELD})


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    _JSON.map(json.dumps),
    st.lists(_BLOCK, max_size=4).map(lambda blocks: json.dumps({"blocks": blocks})),
    st.lists(_BLOCK, max_size=3).map(lambda blocks: repr({"best_structures": [blocks]})),
    st.text(alphabet="[]{}()\"',:0123456789abe.-+ \\\n\0", max_size=200),
    st.binary(max_size=64).map(lambda data: data.decode("latin-1")),
))
def test_structure_parser_raises_only_its_own_error(text):
    """Whatever the text, the parser returns a structure or raises MaedetError: never anything else."""
    try:
        structure = parse_structure(text, "fuzz")
    except MaedetError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 1000
    else:
        assert structure.blocks


def test_subnormal_activations_calibrate_without_error(inputs, tmp_path, monkeypatch, capsys):
    """Not bad input: values below float32's normal range count as zero in the histogram."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "calibrate", str(inputs / "static.onnx"), "--images",
                           str(inputs / "subnormal.npy"), "--method", "entropy", "--latency", "0", "--out", "q.onnx")
    assert code == 0 and "Traceback" not in err and (tmp_path / "q.onnx").stat().st_size > 0
