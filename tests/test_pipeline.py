"""The pipeline on a tiny setting: real search with measured latency, real export,
INT8 calibration on scikit-image's photographs, bench, report; then resume."""

import json

import onnx
import pytest

from cli_helpers import cli
from maedet_deploy.cli.pipeline_cmd import reproduce_commands
from maedet_deploy.errors import MaedetError
from maedet_deploy.pipeline import PipelineSettings, run_pipeline
from maedet_deploy.search.measurer import network_item
from maedet_deploy.search.latency_cache import LatencyCache
from maedet_deploy.structure import load_structure
from nets import TINY

SIZE = 64


def tiny_settings(tmp_path, tiny_file, **changes) -> PipelineSettings:
    values = dict(latency_ms=None, speedup=0.5, out=tmp_path / "run", image_size=SIZE, backend="onnxruntime",
                  iterations=256, population=8, init=str(tiny_file), baseline=str(tiny_file), num_classes=4,
                  num_images=4, holdout=3, bench_seconds=0.2, latency_cache=str(tmp_path / "latency.sqlite"),
                  threads=1, quiet_wait=0.0, profile_networks=2, profile_whole=2, check_every=4)
    values.update(changes)
    return PipelineSettings(**values)


def test_tiny_pipeline_report_matches_its_stages_and_resumes(tmp_path, tiny_file):
    # --speedup 0.5 against the tiny net itself: a budget of twice its measured latency.
    settings = tiny_settings(tmp_path, tiny_file)
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
    assert summary["calibration"]["holdout_images"] == 3
    report = (out / "report.md").read_text()
    assert f"{measured:.2f} ms" in report and f"{budget:g} ms" in report
    assert f"{rows[('searched INT8', 'network')]['median_ms']:.2f}" in report and f"{agreement['map50']:.4f}" in report
    assert "![Pareto front](search/pareto.png)" in report
    assert "maedet-deploy pipeline --speedup 0.5 --image-size 64 --backend onnxruntime" in report
    assert f"maedet-deploy search --latency-ms {budget:g} --latency-scope detector" in report
    assert "<table>" in (out / "report.html").read_text()

    # Run again: every stage is reused. A new bench setting redoes the bench only.
    again = run_pipeline(settings, log=lines.append)
    assert all(stage.reused for stage in again.stages.values())
    assert again.stages["search"].data == first.stages["search"].data
    longer = run_pipeline(tiny_settings(tmp_path, tiny_file, bench_seconds=0.3), log=lines.append)
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
