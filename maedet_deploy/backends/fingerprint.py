"""What machine and software a latency was measured on.

Every bench and compare result carries `device_fingerprint()`, and the latency
cache keys on `fingerprint_id()`: a number measured on one machine or one
runtime version must never be reused for another. Everything here is read
without importing torch or tensorrt (slow imports), and computed once per process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

# Fields that change latency. Python, the OS release and the hostname do not key the cache.
ID_FIELDS = ("cpu", "machine", "physical_cores", "usable_cores", "gpu", "gpu_driver", "board",
             "onnxruntime", "tensorrt", "torch")


def _cpuinfo() -> list[dict[str, str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    blocks = []
    for chunk in text.strip().split("\n\n"):
        entry = {}
        for line in chunk.splitlines():
            key, _, value = line.partition(":")
            entry[key.strip()] = value.strip()
        blocks.append(entry)
    return blocks


def _cpu_model(cpuinfo: list[dict[str, str]]) -> str:
    for entry in cpuinfo:
        for key in ("model name", "Model", "Hardware"):  # x86, then Arm boards
            if entry.get(key):
                return entry[key]
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Distinct (package, core) pairs; SMT siblings share a core's arithmetic units."""
    cores = {(e.get("physical id", "0"), e["core id"]) for e in _cpuinfo() if "core id" in e}
    return len(cores) or os.cpu_count() or 1


def _cgroup_cpus() -> float | None:
    """The container's CPU quota (cgroup v2, then v1), None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


@cache
def usable_cores() -> int:
    """Physical cores this process may actually run on (affinity mask, container quota):
    the right intra-op thread count for latency; more threads only contend."""
    count = physical_cores()
    if hasattr(os, "sched_getaffinity"):
        count = min(count, len(os.sched_getaffinity(0)))
    quota = _cgroup_cpus()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _version(distribution: str, *alternatives: str) -> str | None:
    for name in (distribution, *alternatives):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _tensorrt_version() -> str | None:
    """JetPack installs the bindings without package metadata: then ask the module itself."""
    version = _version("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")
    if version is None and importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt
            version = tensorrt.__version__
        except Exception:  # a broken install is reported as absent, never fatal here
            return None
    return version


def _gpu() -> tuple[str | None, str | None]:
    """(name, driver) of GPU 0 from nvidia-smi; torch only if it is already imported."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
            if out:
                name, _, driver = out[0].partition(",")
                return name.strip(), driver.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0), None
    return None, None


def _board() -> str | None:
    """Jetson and other embedded boards name themselves in the device tree."""
    try:
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00 \n") or None
    except OSError:
        return None


@cache
def _fingerprint() -> tuple[tuple[str, object], ...]:
    cpuinfo = _cpuinfo()
    gpu, driver = _gpu()
    data = {
        "cpu": _cpu_model(cpuinfo),
        "machine": platform.machine(),
        "physical_cores": physical_cores(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": gpu,
        "gpu_driver": driver,
        "board": _board(),
        "onnxruntime": _version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": _tensorrt_version(),
        "torch": _version("torch"),
    }
    return tuple(data.items())


def device_fingerprint() -> dict:
    """CPU, cores, OS, Python, runtime versions and GPU of this machine (a fresh dict each call)."""
    return dict(_fingerprint())


def fingerprint_id(fingerprint: dict | None = None) -> str:
    """A short stable hash of the fields that change latency (see ID_FIELDS)."""
    data = fingerprint if fingerprint is not None else device_fingerprint()
    key = json.dumps({field: data.get(field) for field in ID_FIELDS}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]
