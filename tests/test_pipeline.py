"""The pipeline on a tiny setting: real search with measured latency, real export,
INT8 calibration on scikit-image's photographs, bench, report; then resume, content-keyed reuse,
runs killed with SIGKILL and resumed, and two runs on one output folder.

One latency cache is filled once per module (by the first run) and shared: every later run finds its
measurements there, so its search is fast and its outputs are deterministic."""

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from cli_helpers import cli
from maedet_deploy.calib import DEFAULT_METHOD
from maedet_deploy.cli.pipeline_cmd import reproduce_commands
from maedet_deploy.errors import MaedetError
from maedet_deploy.outlock import LOCK_NAME
from maedet_deploy.pipeline import PipelineSettings, make_plan, run_pipeline
from maedet_deploy.pipeline.stages import MARKER, run_stage
from maedet_deploy.search import network_item
from maedet_deploy.search.latency_cache import LatencyCache
from maedet_deploy.structure import load_structure
from nets import TINY

SIZE = 64


TINY_OPTIONS = dict(latency_ms=None, speedup=0.5, image_size=SIZE, backend="onnxruntime", iterations=256,
                    population=8, num_classes=4, num_images=4, holdout=3, bench_seconds=0.2, threads=1,
                    quiet_wait=0.0, round_s=0.03, profile_walks=2, latency_check_every=4,
                    float_macs=0.0)   # no sensitivity ranking: the crash test runs 20 pipelines


def tiny_settings(tmp_path, tiny_file, **changes) -> PipelineSettings:
    values = dict(TINY_OPTIONS, out=tmp_path / "run", init=str(tiny_file), baseline=str(tiny_file),
                  latency_cache=str(tmp_path / "latency.sqlite"))
    values.update(changes)
    return PipelineSettings(**values)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The module's folder: the tiny structure file and the shared latency cache."""
    root = tmp_path_factory.mktemp("pipeline")
    (root / "tiny.json").write_text(json.dumps({"blocks": TINY.to_dicts()}))
    return root


def test_tiny_pipeline_report_matches_its_stages_and_resumes(workspace):
    # --speedup 0.5 against the tiny net itself: a budget of twice its measured latency.
    tiny_file = workspace / "tiny.json"
    settings = tiny_settings(workspace, tiny_file, float_macs=PipelineSettings.float_macs)   # calibrate's default
    lines = []
    first = run_pipeline(settings, log=lines.append, reproduce=reproduce_commands)
    out = settings.out
    assert [name for name in first.stages] == ["search", "export", "calibrate", "bench"]
    assert not any(stage.reused for stage in first.stages.values())
    for path in ("search/best_structure.json", "search/pareto.png", "export/detector.onnx", "export/baseline.onnx",
                 "calibrate/detector.int8.onnx", "calibrate/calibration.json", "bench/bench.json", "bench/bench.md",
                 "report.md", "report.html", "summary.json"):
        assert (out / path).stat().st_size > 0, path

    # The winner's latency is a measurement of this structure, within the budget.
    search = json.loads((out / "search" / "report.json").read_text())["latency"]
    winner = load_structure(out / "search" / "best_structure.json")
    cached = LatencyCache(settings.latency_cache, search["device"]["fingerprint_id"], {}, search["cache_target"])
    measured = cached.get(network_item(winner, "detector", (SIZE, SIZE))).latency_ms
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline_ms"] == cached.get(network_item(TINY, "detector", (SIZE, SIZE))).latency_ms
    budget = summary["latency_ms"]
    assert budget == round(summary["baseline_ms"] / 0.5, 3) == search["settings"]["limit_ms"]
    assert summary["search"]["latency"]["measured_ms"] == measured <= budget

    # Three models benched in one run; the baseline row is 1.00x and the ratios follow the medians.
    rows = {(row["model"], row["part"]): row for row in summary["bench"]["rows"]}
    assert set(rows) == {(model, part) for model in ("searched FP32", "searched INT8", "tiny FP32")
                         for part in ("network", "end to end")}
    for (model, part), row in rows.items():
        assert row["speedup_vs_baseline"] == pytest.approx(rows[("tiny FP32", part)]["median_ms"] / row["median_ms"])
    assert rows[("tiny FP32", "network")]["speedup_vs_baseline"] == 1.0
    ops = lambda path: {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "NonMaxSuppression" in ops(out / "export" / "detector.onnx")
    assert "NonMaxSuppression" not in ops(out / "bench" / "model0.network.onnx")
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert [r["median_ms"] for r in bench["results"]] == [r["median_ms"] for r in summary["bench"]["rows"]]

    # Calibration figures come from the calibration report, and the report shows them.
    calibration = json.loads((out / "calibrate" / "calibration.json").read_text())
    agreement = calibration["detection"]["agreement"]
    assert summary["calibration"]["map50"] == agreement["map50"] and 0.0 <= agreement["map50"] <= 1.0
    assert summary["calibration"]["holdout_images"] == 3 and summary["calibration"]["method"] == DEFAULT_METHOD
    share = summary["calibration"]["int8_mac_share"]
    assert share == calibration["int8"]["qdq"]["int8_mac_share"] and 0.5 < share <= 1.0
    report = (out / "report.md").read_text()
    assert f"{100 * share:.1f}% of conv MACs in INT8" in report
    assert f"{measured:.2f} ms" in report and f"{budget:g} ms" in report
    assert f"{rows[('searched INT8', 'network')]['median_ms']:.2f}" in report and f"{agreement['map50']:.4f}" in report
    assert "![Pareto front](search/pareto.png)" in report
    assert "maedet-deploy pipeline --speedup 0.5 --image-size 64 --backend onnxruntime" in report
    assert f"maedet-deploy search --latency-ms {budget:g} --latency-scope detector" in report
    assert report.count("--quiet-wait 0.0 --round-s 0.03") == 2   # the pipeline and its search stage
    assert "<table>" in (out / "report.html").read_text()

    # Run again: every stage is reused. A new bench setting redoes the bench only.
    again = run_pipeline(settings, log=lines.append)
    assert all(stage.reused for stage in again.stages.values())
    assert again.stages["search"].data == first.stages["search"].data
    longer = run_pipeline(tiny_settings(workspace, tiny_file, float_macs=settings.float_macs, bench_seconds=0.3),
                          log=lines.append)
    assert [name for name, stage in longer.stages.items() if not stage.reused] == ["bench"]
    assert any("reused" in line for line in lines)


def test_bad_settings_are_clear_errors(tmp_path, tiny_file):
    with pytest.raises(MaedetError, match="is not a folder"):
        run_pipeline(tiny_settings(tmp_path, tiny_file, images=tmp_path / "nowhere"))
    with pytest.raises(MaedetError, match="not both"):
        run_pipeline(tiny_settings(tmp_path, tiny_file, latency_ms=5.0))
    with pytest.raises(MaedetError, match="not neither"):
        run_pipeline(tiny_settings(tmp_path, tiny_file, speedup=None))
    # Checked before any stage runs: nothing is measured, nothing is written.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    for changes, message in (({"images": empty}, "no images"), ({"method": "bogus"}, "unknown calibration method"),
                             ({"init": "nosuch"}, "neither a zoo name"), ({"baseline": "nosuch"}, "neither a zoo name"),
                             ({"holdout": 1000}, "INT8 needs more than the 1000 held out")):
        with pytest.raises(MaedetError, match=message):
            run_pipeline(tiny_settings(tmp_path, tiny_file, **changes))
        assert not (tmp_path / "run").exists() and not (tmp_path / "latency.sqlite").exists()
    result = cli("pipeline", "--latency-ms", "5", "--images", tmp_path / "nowhere", "--out", tmp_path / "run")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "nowhere" in result.stderr and not (tmp_path / "run").exists()


def test_a_stage_is_reused_only_while_its_settings_and_files_are_unchanged(tmp_path):
    runs = []

    def work(directory: Path) -> dict:
        runs.append(directory)
        (directory / "out.txt").write_text(f"run {len(runs)}")
        return {"runs": len(runs)}

    first = run_stage(tmp_path, "stage", {"x": 1}, work)
    assert not first.reused and run_stage(tmp_path, "stage", {"x": 1}, work).reused and len(runs) == 1
    (tmp_path / "stage" / "out.txt").write_text("edited by hand")          # an output changed: run again
    assert not run_stage(tmp_path, "stage", {"x": 1}, work).reused and len(runs) == 2
    (tmp_path / "stage" / "out.txt").unlink()                              # an output is gone: run again
    assert not run_stage(tmp_path, "stage", {"x": 1}, work).reused and len(runs) == 3
    assert not run_stage(tmp_path, "stage", {"x": 2}, work).reused and len(runs) == 4   # other settings
    (tmp_path / "stage" / MARKER).unlink()                                 # killed before it finished...
    (tmp_path / "stage" / ".out.txt.123.tmp").write_text("partial")
    again = run_stage(tmp_path, "stage", {"x": 2}, work)
    assert not again.reused and sorted(p.name for p in again.directory.iterdir()) == ["out.txt", MARKER]


def test_inputs_are_keyed_by_content_not_by_name(workspace, tmp_path, tiny_file):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(4):
        (images / f"{index}.png").write_bytes(Path(_sample_image(index)).read_bytes())
    settings = tiny_settings(tmp_path, tiny_file, images=images)
    plan = make_plan(settings)
    tiny_file.write_text(json.dumps({"blocks": TINY.to_dicts()}, indent=4))     # same structure, new layout
    assert make_plan(settings).digests == plan.digests
    (images / "0.png").write_bytes(Path(_sample_image(5)).read_bytes())        # same name, new picture
    changed = make_plan(settings).digests
    assert changed["images"] != plan.digests["images"] and changed["init"] == plan.digests["init"]
    deeper = [dict(block, L=2) if block.get("L") else block for block in TINY.to_dicts()]
    tiny_file.write_text(json.dumps({"blocks": deeper}))                         # same name, new structure
    assert make_plan(settings).digests["init"] != plan.digests["init"]


def _sample_image(index: int) -> Path:
    from maedet_deploy.calib import sample_images
    from maedet_deploy.inputs import list_images

    return list_images(sample_images())[index]


# ---- real processes: SIGKILL at random moments, and two runs on one output folder -------------------------

FORKSERVER = Path(__file__).with_name("forkserver.py")
KILLS = 6
DETERMINISTIC = ("search/best_structure.json", "search/best_structure.txt", "search/top_k.json",
                 "export/detector.onnx", "export/baseline.onnx", "calibrate/detector.int8.onnx",
                 "bench/model0.network.onnx", "bench/model1.network.onnx", "bench/model2.network.onnx")


class ForkServer:
    """`maedet-deploy` processes forked from one that imported everything once (see forkserver.py)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(FORKSERVER)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)

    def _ask(self, line: str) -> int:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def start(self, argv: list[str], log: Path) -> int:
        return self._ask("run " + json.dumps({"argv": [str(a) for a in argv], "log": str(log)}))

    def wait(self, pid: int) -> int:
        return self._ask(f"wait {pid}")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def forkserver():
    server = ForkServer()
    yield server
    server.close()


def tiny_argv(workspace: Path, out: Path) -> list[str]:
    """The tiny setting as a command line (a shorter bench: its timings are not compared)."""
    options = dict(TINY_OPTIONS, bench_seconds=0.01, init=workspace / "tiny.json", baseline=workspace / "tiny.json",
                   latency_cache=workspace / "latency.sqlite", out=out)
    return ["pipeline", *(item for name, value in options.items() if value is not None
                          for item in (f"--{name.replace('_', '-')}", str(value)))]


def snapshot(out: Path) -> dict[str, object]:
    """What must not depend on whether the run was interrupted: every file's name, the structures, ONNX
    models and the calibration report without its timings."""
    def timeless(data):
        if isinstance(data, dict):
            return {k: timeless(v) for k, v in data.items() if not k.endswith("seconds")}
        return [timeless(v) for v in data] if isinstance(data, list) else data

    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return {"files": files, **{name: (out / name).read_bytes() for name in DETERMINISTIC},
            "calibration": timeless(json.loads((out / "calibrate" / "calibration.json").read_text()))}


def quick_check(cache: Path) -> str:
    with sqlite3.connect(cache) as db:
        return db.execute("PRAGMA quick_check").fetchone()[0]


@pytest.fixture(scope="module")
def reference(workspace, forkserver):
    """An uninterrupted run through the CLI, and a second run on the same folder started while it runs."""
    out = workspace / "crash"
    started = time.perf_counter()
    first = forkserver.start(tiny_argv(workspace, out), workspace / "first.log")
    while not (out / LOCK_NAME).exists() and time.perf_counter() - started < 120:
        time.sleep(0.005)
    second = forkserver.wait(forkserver.start(tiny_argv(workspace, out), workspace / "second.log"))
    first_running = not (out / "report.md").exists()
    code = forkserver.wait(first)
    return {"code": code, "seconds": time.perf_counter() - started, "first": first, "second": second,
            "second_log": (workspace / "second.log").read_text(), "first_running": first_running,
            "log": (workspace / "first.log").read_text(), "snapshot": snapshot(out) if code == 0 else None}


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_finishes(reference):
    assert reference["code"] == 0, reference["log"]
    assert reference["first_running"] and reference["second"] == 2
    assert reference["second_log"].count("\n") == 1 and reference["second_log"].startswith("error: --out: ")
    assert f"in use by pipeline (pid {reference['first']} on " in reference["second_log"]
    assert "report:" in reference["log"] and "taking over" not in reference["log"]


def test_runs_killed_at_random_moments_resume_to_identical_outputs(workspace, forkserver, reference):
    out, cache, rng = workspace / "crash", workspace / "latency.sqlite", random.Random(2024)
    assert reference["code"] == 0, reference["log"]
    shutil.rmtree(out)
    started = time.perf_counter()                          # one run alone: the span kill moments are drawn from
    assert forkserver.wait(forkserver.start(tiny_argv(workspace, out), workspace / "whole.log")) == 0
    span, landed = time.perf_counter() - started, 0
    assert snapshot(out) == reference["snapshot"]
    for kill in range(KILLS):
        shutil.rmtree(out)
        moment = rng.uniform(0.0, span)
        pid = forkserver.start(tiny_argv(workspace, out), workspace / f"killed{kill}.log")
        time.sleep(moment)
        os.kill(pid, signal.SIGKILL)
        code = forkserver.wait(pid)
        assert code in (-signal.SIGKILL, 0)                  # 0: it had just finished
        landed += code != 0
        assert quick_check(cache) == "ok"
        left_lock = (out / LOCK_NAME).exists()
        log = workspace / f"rerun{kill}.log"
        assert forkserver.wait(forkserver.start(tiny_argv(workspace, out), log)) == 0, log.read_text()
        assert ("taking over" in log.read_text()) == left_lock
        assert snapshot(out) == reference["snapshot"], f"killed at {moment:.2f} s"
        assert quick_check(cache) == "ok"
    assert landed >= KILLS // 2
