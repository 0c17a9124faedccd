"""Exporting what the measurer times, in a child process.

An export builds a PyTorch module and traces it: torch alone takes 700 MB of a
process's memory, and tracing a large network hundreds more. The process that
times models needs none of it (ONNX Runtime and the compact graphs are about
100 MB), so exports run in one child process that lives as long as the
exporter, and send back only compact models (tens of kB). The child never
runs while a model is timed on a CPU target (it would share the caches and
memory bandwidth the timed model uses, and on a host with SMT its core); on a
GPU target, where the timing leaves the CPU idle, the next window is exported
while the current one is timed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import multiprocessing
import multiprocessing.util
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable
from dataclasses import dataclass
from pathlib import Path

from .compact import CompactModel, compact_model
from .requests import NECK_CHANNELS, Request
from .tempfiles import guard

MB = 2 ** 20


@dataclass(frozen=True)
class Exported:
    """A request exported: its compact model, the export's wall time and the file's size."""

    model: CompactModel
    export_s: float
    file_mb: float


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    library = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(library), "malloc_trim", None) if library else None


def trim_heap() -> None:
    """Hand freed heap memory back to the system: glibc keeps it otherwise, and a process that loads
    and drops hundreds of models would hold its high-water mark."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def export_compact(request: Request, folder: str, batch: int) -> Exported:
    """Export `request` into `folder`, read it into its compact form and delete the file."""
    from ..export import export_structure_onnx

    path = Path(folder) / f"export-{os.getpid()}.onnx"
    try:
        start = time.perf_counter()
        export_structure_onnx(request.structure, path, request.image_size, batch=batch, scope=request.scope,
                              neck_channels=NECK_CHANNELS)
        file_mb = path.stat().st_size / MB
        return Exported(compact_model(path), time.perf_counter() - start, file_mb)
    finally:
        path.unlink(missing_ok=True)
        trim_heap()


def _exit_with(owner: int) -> None:
    """In the child: exit as soon as the process that owns the exporter is gone (killed, it can
    close nothing), so a killed search leaves no export process, and no fork server, behind."""

    def watch() -> None:
        while True:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(1)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def _context() -> multiprocessing.context.BaseContext:
    """A fork server that has imported torch and the exporter once: every export process after the
    first starts in milliseconds, from a process that never ran anything (safe to fork)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["maedet_deploy.export", __name__])
    return context


class Exporter:
    """One child process that exports requests (started at the first export, stopped by `close`).
    `overlaps`: it may export while models are timed (a GPU target)."""

    def __init__(self, overlaps: bool = False) -> None:
        self.overlaps = overlaps
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, request: Request, folder: Path, batch: int) -> Future:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=_context(), initializer=_exit_with,
                                             initargs=(os.getpid(),))
            future = self._pool.submit(export_compact, request, str(folder), batch)
            guard(multiprocessing.util.get_temp_dir())   # the fork server's socket lives there
            return future
        return self._pool.submit(export_compact, request, str(folder), batch)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
