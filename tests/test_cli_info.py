import json

from cli_helpers import cli


def test_info_json_prints_the_figures():
    result = cli("info", "maedet-m", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert round(data["params"] / 1e6, 1) == 25.8
    assert data["layers"] == 91
    assert len(data["stages"]) == 5 and data["stages"][-1]["channels"] == 2048
    assert data["score"] > 0 and data["flops"] > 0


def test_info_table_and_zoo():
    result = cli("info", "resnet50", "--image-size", "320x480")
    assert result.returncode == 0 and "23,508,032" in result.stdout
    assert "maedet-l" in cli("zoo").stdout


def test_malformed_file_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"class": "ConvKXBNRELU", "in": 3, "out": 16, "s": 2}]')
    result = cli("info", path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "missing field 'k'" in result.stderr and "Traceback" not in result.stderr


def test_not_json_at_all_is_exit_2(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    result = cli("info", path)
    assert result.returncode == 2 and "not JSON" in result.stderr


def test_alpha_mismatch_is_exit_2():
    result = cli("info", "maedet-s", "--alpha", "1,1")
    assert result.returncode == 2 and "alpha has 2" in result.stderr


def test_help_text_is_wrapped_by_the_terminal_and_shows_the_usual_types(monkeypatch, capsys):
    """A docstring's paragraph is one line for the terminal to wrap (a hard-wrapped one breaks
    mid-sentence); indented example lines keep their lines; value types read TEXT/INTEGER/FLOAT/PATH
    and on/off flags show none."""
    from cli_helpers import run_cli
    from maedet_deploy.cli.common import command_help
    from maedet_deploy.cli.pipeline_cmd import pipeline
    from maedet_deploy.cli.search_cmd import search

    for command in (search, pipeline):
        for paragraph in command_help(command).split("\n\n"):
            lines = paragraph.splitlines()
            assert len(lines) == 1 or all(line.startswith("  ") for line in lines), paragraph
    assert "\n  maedet-deploy pipeline --latency-ms 45" in command_help(pipeline)
    for name in ("info", "zoo", "search", "profile", "export", "build", "bench", "compare", "calibrate", "pipeline"):
        code, out, _ = run_cli(monkeypatch, capsys, name, "--help")
        assert code == 0 and "Usage" in out
        assert not any(tag in out for tag in ("<str>", "<int>", "<float>", "<bool>", "<path>", "<list")), name
    _, out, _ = run_cli(monkeypatch, capsys, "export", "--help")
    row = next(line for line in out.splitlines() if "--dynamic-batch" in line)
    assert "INTEGER" in next(line for line in out.splitlines() if "--num-classes" in line)
    assert not any(kind in row for kind in ("TEXT", "INTEGER", "FLOAT", "PATH", "BOOL"))
