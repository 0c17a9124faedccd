"""One run per output folder: an exclusive lock held for the whole run.

    with output_lock(out, "pipeline"):
        ...

Two runs writing one folder would overwrite each other's files and stage
markers. The lock is `<folder>/.maedet.lock`, holding the owner's pid, host,
command and start time, and an advisory `flock` on it that the kernel drops
when the owner dies however it dies (SIGKILL included). So a lock left behind
by a dead run is taken over, with a message naming it, while a live owner's is
refused with one line naming the owner. The file is removed on release.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import MaedetError

LOCK_NAME = ".maedet.lock"


def _describe(owner: dict) -> str:
    started = owner.get("started")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) \
        else ""
    return f"{owner.get('command', 'a run')} (pid {owner.get('pid', '?')} on {owner.get('host', '?')}{when})"


def _read_owner(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 4096)
    try:
        owner = json.loads(data.decode("utf-8")) if data else {}
    except (UnicodeDecodeError, ValueError):
        owner = {}
    return owner if isinstance(owner, dict) else {}


def _open_locked(path: Path) -> tuple[int, dict]:
    """Open and flock the lock file; returns the fd and the previous owner's record (empty when
    none). Retries when the file was replaced between open and flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise MaedetError(f"{path.parent} is in use by {_describe(owner)}; wait for it to finish or choose "
                              "another output folder", "out") from None
        except OSError:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, _read_owner(fd)
        os.close(fd)  # the previous owner removed the file while we waited: lock the new one


@contextmanager
def output_lock(folder: str | os.PathLike, command: str, log: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold `folder` (created if needed) for this process until the block ends; a MaedetError
    when another live run holds it. `log` hears about a stale lock taken over."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, previous = _open_locked(path)
    except OSError as exc:
        raise MaedetError(f"cannot write its lock file into {folder}: {exc.strerror or exc}", "out") from None
    try:
        if previous and log is not None:
            log(f"taking over {path}: left by {_describe(previous)}, which is no longer running")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        yield folder
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
