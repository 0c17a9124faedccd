"""How much memory a job may ask for: a request the machine cannot hold is refused up front with
one line, instead of a numpy/torch allocator traceback or the kernel's OOM killer later."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import MaedetError, first_line
from .format import human

_CGROUP = Path("/sys/fs/cgroup")


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _cgroup_headroom() -> int | None:
    """What the container's memory limit (cgroup v2) still allows; None without a limit."""
    try:
        limit = (_CGROUP / "memory.max").read_text(encoding="ascii").strip()
        if limit == "max":
            return None
        return int(limit) - int((_CGROUP / "memory.current").read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes a new allocation can get now (the smaller of the host's and the container's), or None
    where the platform does not say."""
    known = [value for value in (_meminfo_available(), _cgroup_headroom()) if value is not None]
    return min(known) if known else None


def check_memory(nbytes: int, what: str, setting: str | None = None) -> None:
    """Refuse `what` when it needs more than the memory available now."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise MaedetError(f"{what} needs {human(nbytes)}B of memory, {human(max(available, 0))}B is available",
                          setting)


@contextmanager
def out_of_memory_as_error(what: str) -> Iterator[None]:
    """An allocator failure inside (numpy's MemoryError, torch's or ONNX Runtime's "can't allocate"
    RuntimeError) becomes one line: the input was too large for this machine, not a bug."""
    try:
        yield
    except MemoryError:
        raise MaedetError(f"{what}: out of memory") from None
    except RuntimeError as exc:
        if "alloc" not in str(exc).lower():
            raise
        raise MaedetError(f"{what}: out of memory ({first_line(exc)})") from None
