"""Run the real console entry point in a subprocess, as a user would."""

import subprocess
import sys


def cli(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maedet_deploy.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)
