"""Run the console entry point as a user would: in a subprocess, or in-process (fast)."""

import subprocess
import sys


def cli(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maedet_deploy.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The console entry point in-process (a subprocess pays seconds of imports per call):
    exit code, stdout, stderr."""
    from maedet_deploy.cli.main import run

    monkeypatch.setattr(sys, "argv", ["maedet-deploy", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        run()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
