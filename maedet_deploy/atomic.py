"""Atomic, durable file writes: a result file is either complete or absent, never half-written.

The bytes go to a temporary file beside the target, are flushed to disk (fsync),
and only then renamed over the target; the folder is synced after the rename, so
a crash or power cut leaves the old file or the new one. A full disk, a file-size
limit or a read-only folder is the user's to fix: it surfaces as one MaedetError
naming the file, and the temporary file is removed.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import MaedetError


def _cannot_write(target: Path, exc: OSError) -> MaedetError:
    return MaedetError(f"cannot write {target}: {exc.strerror or exc}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; fsync it and rename it over `path` only on success.
    An OSError while writing (ENOSPC, EFBIG, EACCES, ...) becomes a MaedetError."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        fsync_file(tmp_path)
        os.replace(tmp_path, target)
        fsync_folder(target.parent)
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
