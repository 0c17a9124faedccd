"""What runs on a farm node: the probe that tells the driver what the node is, and the task that
measures one window of requests there.

What travels is the window's `Request`s (structures: a few hundred bytes each),
not ONNX files: the node exports, so exporting scales with the number of nodes
instead of queueing on the driver, and a detector's ONNX (megabytes) never
crosses the network (bench/farm_scaling.py measures both sides).

A device has little memory and disk: each task works in its own temporary
folder (every temporary file of the export and the measurer lands there) and
removes it when it ends, also when it fails. A task killed outright (its node
died, or the driver cancelled a hung one) cannot clean up after itself; the next
task on that machine removes folders whose process is gone.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

from ..latency_cache import Entry
from ..measurer import InProcessExecutor
from ..requests import Request
from ..target import PROTOCOL, LatencyTarget, MeasureLimits, TimingSettings

TEMP_PREFIX = "maedet-farm-"


class WindowResult(NamedTuple):
    """A measured window, with where and on what it was measured."""

    node_id: str
    host: str
    fingerprint_id: str
    entries: list[Entry]
    peak_rss_mb: float         # of the worker process, over its life so far


_HERE = InProcessExecutor()    # this worker process's measuring: one export process, reused by its tasks


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(root: Path) -> list[Path]:
    """Remove the temporary folders of tasks whose process is gone; returns them."""
    removed = []
    for folder in root.glob(f"{TEMP_PREFIX}*"):
        pid = folder.name[len(TEMP_PREFIX):].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextmanager
def task_folder(root: Path | None = None) -> Iterator[Path]:
    """A fresh folder that every `tempfile` user in this process writes into while the task runs,
    removed at the end whatever happens."""
    root = Path(root or tempfile.gettempdir())
    sweep_stale(root)
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=root))
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(folder, ignore_errors=True)


def _node_id() -> str:
    import ray
    return ray.get_runtime_context().get_node_id()


def measure_task(target: LatencyTarget, timing: TimingSettings, limits: MeasureLimits,
                 requests: Sequence[Request]) -> WindowResult:
    """Measure one window on this node (the Ray task body), within the driver's memory and disk limits."""
    from ...backends import fingerprint_id

    with task_folder() as folder:
        limits = MeasureLimits(len(requests), limits.memory_mb, limits.disk_mb, str(folder))
        measured = {request.item: entry for request, entry in _HERE.run(target, timing, limits, [requests], None)}
        entries = [measured[request.item] for request in requests]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return WindowResult(_node_id(), socket.gethostname(), fingerprint_id(), entries, rss_mb)


def probe_task() -> dict[str, Any]:
    """What this node is: its fingerprint, software and backends. Imports what measuring needs,
    so the first window's time is not an import."""
    import platform

    from ... import __version__
    from ...backends import device_fingerprint
    from ...export import export_structure_onnx  # noqa: F401  (warms the worker: torch, onnx)

    fingerprint = device_fingerprint()
    backends = ["onnxruntime"] + (["tensorrt"] if fingerprint.get("tensorrt") and fingerprint.get("gpu") else [])
    return {"node_id": _node_id(), "host": socket.gethostname(), "fingerprint": fingerprint,
            "maedet_deploy": __version__, "protocol": PROTOCOL, "python": platform.python_version(),
            "backends": backends}
