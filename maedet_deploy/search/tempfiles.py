"""Temporary files that outlive nothing: removed when no longer needed, and by a janitor process
when this process dies without removing them (a SIGKILL runs no cleanup code).

The janitor is one small Python process per measuring process, started at the first temporary
folder: this process tells it, line by line on a pipe, which paths to remove should the pipe
close (`+path`) and which are gone already (`-path`). A pipe closes when its writer dies,
however it dies; the janitor then removes what is still listed and exits. At a normal exit this
process dismisses it (`.`), and the paths' owners clean up as usual.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_JANITOR = """
import shutil, sys
paths = set()
for line in sys.stdin:
    if line == ".\\n":
        sys.exit()
    (paths.add if line[0] == "+" else paths.discard)(line[1:].rstrip("\\n"))
for path in paths:
    shutil.rmtree(path, ignore_errors=True)
"""


@functools.lru_cache(maxsize=1)
def _janitor() -> subprocess.Popen:
    janitor = subprocess.Popen([sys.executable, "-c", _JANITOR], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True, text=True)
    atexit.register(_dismiss, janitor)
    return janitor


def _dismiss(janitor: subprocess.Popen) -> None:
    """A normal exit: whatever is still listed is removed by its owner's own exit handlers."""
    janitor.stdin.write(".\n")
    janitor.stdin.close()
    janitor.wait()


def guard(path: str | Path, removed: bool = False) -> None:
    """Have the janitor remove `path` if this process dies (`removed`: it is gone, forget it)."""
    janitor = _janitor().stdin
    janitor.write(f"{'-' if removed else '+'}{path}\n")
    janitor.flush()


@contextmanager
def temporary_folder(parent: str | None = None) -> Iterator[Path]:
    """A private folder, removed when the block ends however it ends, or by the janitor."""
    folder = Path(tempfile.mkdtemp(prefix="maedet-latency-", dir=parent))
    guard(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        guard(folder, removed=True)
