"""The timing loop, its statistics and feeds, bench runs and reports, and the bench CLI."""

import csv
import gc
import io
import json
import time

import numpy as np
import pytest
from cli_helpers import run_cli
from test_backends import ppocr_det, scale_model

from maedet_deploy.backends import load_runner
from maedet_deploy.backends.base import TensorSpec
from maedet_deploy.backends.torch import TorchRunner
from maedet_deploy.bench import LatencyStats, make_feed, measure, run_bench, to_markdown, write_report
from maedet_deploy.bench.measure import Timings, summarise, time_loop
from maedet_deploy.errors import MaedetError


class CountingRunner:
    """A runner whose call takes `seconds` and counts its calls."""

    backend = "fake"

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds, self.calls = seconds, 0
        self.inputs = [TensorSpec("x", (None, 3), np.dtype(np.float32))]
        self.outputs = [TensorSpec("y", (None, 3), np.dtype(np.float32))]

    def infer(self, feed):
        self.calls += 1
        if self.seconds:
            time.sleep(self.seconds)
        return {"y": feed["x"]}

    def close(self):
        pass


def test_stats_from_known_times():
    times_ns = [int(ms * 1e6) for ms in range(1, 101)]          # 1..100 ms
    stats = LatencyStats.from_times(times_ns, wall_ns=int(5.05e9), batch=4)
    assert (stats.min_ms, stats.max_ms, stats.median_ms, stats.mean_ms) == (1, 100, 50.5, 50.5)
    assert stats.p90_ms == pytest.approx(90.1) and stats.p99_ms == pytest.approx(99.01)
    assert stats.std_ms == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert stats.cv == pytest.approx(stats.std_ms / 50.5)
    assert stats.median_ci_ms[0] < 50.5 < stats.median_ci_ms[1] and 35 < stats.median_ci_ms[0]
    assert stats.throughput_fps == pytest.approx(100 / 5.05) and stats.images_per_s == pytest.approx(400 / 5.05)
    assert any("unstable" in w for w in stats.warnings)
    steady = LatencyStats.from_times([10_000_000] * 50, wall_ns=int(0.5e9))
    assert steady.cv == 0 and steady.warnings == ()
    few = LatencyStats.from_times([10_000_000] * 3, wall_ns=int(0.03e9))
    assert any("only 3 timed iterations" in w for w in few.warnings)
    assert set(json.loads(json.dumps(stats.to_dict()))) >= {"median_ms", "p95_ms", "cv", "warnings"}


def test_measure_runs_exact_iterations_or_a_duration():
    runner = CountingRunner()
    feed = {"x": np.zeros((2, 3), np.float32)}
    stats = measure(runner, feed, warmup=0, warmup_iterations=3, iterations=7)
    assert stats.iterations == 7 and stats.warmup_iterations == 3 and runner.calls == 10 and stats.batch == 2
    assert gc.isenabled()

    slow = CountingRunner(0.002)
    stats = measure(slow, feed, warmup=0.01, duration=0.001, min_iterations=5, batch=1)
    assert stats.iterations >= 5 and stats.warmup_s >= 0.01 and stats.min_ms >= 2 and stats.batch == 1
    stats = measure(slow, feed, warmup=0, duration=0.05)
    assert 0.05 <= stats.wall_s < 0.5 and stats.iterations >= 10

    for bad in (dict(iterations=3, duration=1.0), dict(iterations=0), dict(duration=0), dict(warmup=-1)):
        with pytest.raises(MaedetError):
            measure(runner, feed, **bad)


class SelfTimingRunner(CountingRunner):
    """Records how long each of its own calls took, from inside the call."""

    def __init__(self) -> None:
        super().__init__()
        self.durations_ns = []

    def infer(self, feed):
        start = time.perf_counter_ns()
        out = super().infer(feed)
        self.durations_ns.append(time.perf_counter_ns() - start)
        return out


def test_each_sample_times_exactly_one_call_and_nothing_else():
    """The loop's samples are the calls, one each, in order; the loop's own bookkeeping sits outside
    them (a sample covers its call and the wall covers every sample)."""
    runner = SelfTimingRunner()
    feed = {"x": np.zeros((1, 3), np.float32)}
    timings = time_loop(runner, feed, warmup=0, warmup_iterations=2, iterations=500)
    assert runner.calls == 502 and len(timings.times_ns) == 500 and timings.warmup_iterations == 2
    timed = runner.durations_ns[2:]
    assert all(sample >= own for sample, own in zip(timings.times_ns, timed))
    assert sum(timings.times_ns) <= timings.wall_ns


def test_make_feed_follows_declared_dtypes_and_shapes():
    inputs = [TensorSpec("image", ("n", 3, "h", "w"), np.dtype(np.float16)),
              TensorSpec("size", ("n", 2), np.dtype(np.int64)), TensorSpec("mask", (4,), np.dtype(np.bool_))]
    feed = make_feed(inputs, {"image": (1, 3, 8, 6), "size": (1, 2)}, batch=3, seed=5)
    assert feed["image"].shape == (3, 3, 8, 6) and feed["image"].dtype == np.float16
    assert 0 <= feed["image"].min() and feed["image"].max() < 1
    assert feed["size"].dtype == np.int64 and set(np.unique(feed["size"])) <= {0, 1}
    assert feed["mask"].dtype == np.bool_ and feed["mask"].shape == (4,)
    again = make_feed(inputs, {"image": (1, 3, 8, 6), "size": (1, 2)}, batch=3, seed=5)
    assert all(np.array_equal(feed[k], again[k]) for k in feed)
    other = make_feed(inputs, {"image": (1, 3, 8, 6), "size": (1, 2)}, batch=3, seed=6)
    assert not np.array_equal(feed["image"], other["image"])
    with pytest.raises(MaedetError, match=r"input 'image' dim 2 \('h'\) is dynamic"):
        make_feed(inputs, {"size": (1, 2)}, batch=1)


def test_bench_a_third_party_detector_with_a_batch_sweep_and_reports(tmp_path):
    ort = load_runner(ppocr_det())
    import torch

    baseline = TorchRunner(torch.nn.Conv2d(3, 1, 3, padding=1), ort.inputs, ("prob",), threads=1)
    result = run_bench({"onnxruntime": ort, "torch": baseline}, "ppocr-det", {"x": (1, 3, 64, 64)}, [1, 2],
                       warmup=0.02, duration=0.05)
    torch.set_num_threads(ort.settings["intra_threads"])
    assert [(r.runner, r.batch, r.shapes["x"]) for r in result.rows] == [
        ("onnxruntime", 1, [1, 3, 64, 64]), ("torch", 1, [1, 3, 64, 64]),
        ("onnxruntime", 2, [2, 3, 64, 64]), ("torch", 2, [2, 3, 64, 64])]
    assert all(r.stats.iterations >= 10 and r.stats.median_ms > 0 for r in result.rows)
    assert [(s["batch"], s["baseline"]) for s in result.speedups()] == [(1, "torch"), (2, "torch")]
    data = result.to_dict()
    assert data["fingerprint"]["cpu"] and len(data["fingerprint_id"]) == 12
    assert data["runners"]["onnxruntime"]["intra_threads"] >= 1 and data["settings"]["duration"] == 0.05

    for name in ("r.md", "r.csv", "r.json"):
        write_report(result, tmp_path / name)
    markdown = (tmp_path / "r.md").read_text()
    assert "| onnxruntime | 2 | x:2x3x64x64 |" in markdown and "p99" in markdown and "Speed-up" in markdown
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert len(rows) == 4 and float(rows[0]["median_ms"]) > 0 and rows[0]["fingerprint_id"] == data["fingerprint_id"]
    assert json.loads((tmp_path / "r.json").read_text())["format"] == "maedet-bench/1"
    with pytest.raises(MaedetError, match="report must end in"):
        write_report(result, tmp_path / "r.txt")
    assert to_markdown(result).startswith("# Latency: ppocr-det")


def test_cli_bench_json_and_report(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(monkeypatch, capsys, "bench", ppocr_det(), "--shape", "x:1x3x64x64", "--batch", "1,2", "--warmup-ms", "10",
                           "--iterations", "5", "--threads", "1", "--json", "--report", tmp_path / "r.csv")
    assert code == 0
    data = json.loads(out)
    assert [(r["batch"], r["iterations"]) for r in data["results"]] == [(1, 5), (2, 5)]
    assert data["runners"]["onnxruntime"]["intra_threads"] == 1 and (tmp_path / "r.csv").is_file()
    code, out, _ = run_cli(monkeypatch, capsys, "bench", ppocr_det(), "--shape", "x:1x3x64x64", "--duration", "0.05", "--warmup-ms", "0")
    assert code == 0 and "median" in out and "p99" in out


@pytest.mark.parametrize("args, message", [
    (["--duration", "0.1"], "input 'x' dim 0 ('p2o.DynamicDimension.0') is dynamic"),
    (["--shape", "x:1x3x64x64", "--backend", "openvino"], "unknown backend 'openvino'"),
    (["--shape", "x:1x3x64x64", "--iterations", "3", "--duration", "1"], "not both"),
    (["--shape", "x:1x3x64x64", "--batch", "0"], "batch must look like"),
    (["--shape", "y:1x3x64x64"], "no input named 'y'"),
])
def test_cli_bench_bad_input_is_one_line_exit_2(args, message, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "bench", ppocr_det(), *args)
    assert code == 2 and message in " ".join(err.split()) and err.startswith("error:")


def test_cli_bench_refuses_a_file_that_is_not_onnx(monkeypatch, capsys, tmp_path):
    junk = tmp_path / "model.onnx"
    junk.write_text("not a model")
    code, _, err = run_cli(monkeypatch, capsys, "bench", junk)
    assert code == 2 and "onnxruntime cannot load" in err


def test_cli_bench_with_the_torch_eager_baseline(monkeypatch, capsys, tmp_path):
    from maedet_deploy.export import export_structure_onnx
    from maedet_deploy.zoo import resolve_structure

    model = tmp_path / "seed.onnx"
    export_structure_onnx(resolve_structure("maedet-seed"), model, 64, scope="detector", num_classes=3)
    code, out, _ = run_cli(monkeypatch, capsys, "bench", model, "--torch-baseline", "maedet-seed", "--num-classes", "3", "--iterations",
                           "3", "--warmup-ms", "0", "--json")
    assert code == 0
    data = json.loads(out)
    assert [r["runner"] for r in data["results"]] == ["onnxruntime", "torch eager"]
    assert data["speedups"][0]["speedup"] > 0 and data["runners"]["torch eager"]["module"] == "Detector"


def test_scale_model_bench_runs_the_real_model(tmp_path):
    runner = load_runner(scale_model(tmp_path / "s.onnx"))
    stats = measure(runner, make_feed(runner.inputs, {"x": (1, 3, 8, 8)}), warmup=0, warmup_iterations=2,
                    iterations=10)
    assert stats.iterations == 10 and stats.warmup_iterations == 2 and stats.batch == 1
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.max_ms
    assert stats.wall_s * 1e3 >= 10 * stats.min_ms


class Recorded:
    """A real runner whose calls are written to a shared log, to see who ran when."""

    def __init__(self, runner, label: str, log: list) -> None:
        self.runner, self.label, self.log = runner, label, log
        self.inputs, self.outputs = runner.inputs, runner.outputs

    def infer(self, feed):
        self.log.append(self.label)
        return self.runner.infer(feed)


def test_rounds_interleave_runners_and_pool_their_samples(tmp_path):
    log: list[str] = []
    runners = {name: Recorded(load_runner(scale_model(tmp_path / f"{name}.onnx", (1, 3))), name, log)
               for name in ("a", "b")}
    result = run_bench(runners, rounds=3, warmup=0.0, iterations=12)
    assert [r.stats.iterations for r in result.rows] == [12, 12]
    assert result.settings["rounds"] == 3
    blocks = [label for index, label in enumerate(log) if index == 0 or log[index - 1] != label]
    assert blocks == ["a", "b"] * 3        # each round: a's loop (with its warm-up call), then b's
    assert log.count("a") == log.count("b") == 12 + 3
    with pytest.raises(MaedetError, match="rounds must be >= 1"):
        run_bench(runners, rounds=0)


def test_round_medians_widen_the_interval_and_warn_when_the_machine_changed_speed():
    ms = 1_000_000
    steady = [Timings([10 * ms + i * 1000 for i in range(20)], 20 * 10 * ms, 1, ms) for _ in range(3)]
    stats = summarise(steady, batch=1)
    assert stats.round_medians_ms == pytest.approx((10.0095,) * 3)
    assert stats.median_ci_ms[0] <= 10.0095 <= stats.median_ci_ms[1] and not stats.warnings
    drifting = steady[:2] + [Timings([18 * ms] * 20, 20 * 18 * ms, 1, ms)]
    slow = summarise(drifting, batch=1)
    assert slow.median_ci_ms[1] == 18.0 and slow.median_ci_ms[0] <= 10.0095
    assert any("machine's speed changed" in w for w in slow.warnings)
    assert summarise(steady[:1], batch=1).round_medians_ms == ()   # one loop: the plain pooled statistics
