"""Joining a device to a farm: check that it can measure, fingerprint it, start a Ray node that
advertises it.

The node gets no CPUs for Ray's own scheduling (`--num-cpus 0`): nothing but
measurement tasks, which ask for the device's resource, ever runs there, so a
measurement never shares the device with other work. Its object store is kept
small (results are a few kilobytes; a Jetson has little memory to spare).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from ...backends import BACKENDS, fingerprint_id
from ...errors import MaedetError
from .connect import check_reachable, import_ray, split_address, version_mismatch
from .fleet import device_resource

STARTED = "Ray runtime started"      # what `ray start` prints once the node has joined
DEFAULT_OBJECT_STORE_MB = 128
MIN_OBJECT_STORE_MB = 80   # Ray refuses less than about 75 MiB


def check_backend(backend: str) -> None:
    """Fail before joining when this machine cannot measure on `backend`."""
    if backend == "tensorrt":
        from ...backends.tensorrt import cuda_torch, import_tensorrt
        import_tensorrt()
        cuda_torch()
    elif backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise MaedetError("ONNX Runtime is not installed here: pip install onnxruntime", setting="backend") from None
    else:
        raise MaedetError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})", setting="backend")


@dataclass(frozen=True)
class WorkerPlan:
    """What `maedet-deploy worker` is about to do."""

    address: str
    device: str
    backend: str
    fingerprint: dict[str, Any]
    command: list[str]

    @property
    def resource(self) -> str:
        return device_resource(self.device, fingerprint_id(self.fingerprint))


def plan_worker(address: str, device: str, backend: str = "onnxruntime", node_ip: str | None = None,
                object_store_mb: int = DEFAULT_OBJECT_STORE_MB) -> WorkerPlan:
    """Check everything a join needs (Ray, the backend, the head's address) and build the
    `ray start` command line, run with this Python so the node's Ray is this one."""
    from ...backends import device_fingerprint

    import_ray(setting=None)
    split_address(address, "address")
    if address.startswith("ray://"):
        raise MaedetError("a device joins through the head's GCS address (HOST:6379), not a ray:// client address",
                          setting="address")
    if object_store_mb < MIN_OBJECT_STORE_MB:
        raise MaedetError(f"Ray's object store needs at least {MIN_OBJECT_STORE_MB} MB, got {object_store_mb}",
                          setting="object_store_mb")
    check_backend(backend)
    fingerprint = device_fingerprint()
    resource = device_resource(device, fingerprint_id(fingerprint))
    check_reachable(address, "address")
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--address", address, "--num-cpus", "0",
               "--resources", json.dumps({resource: 1}), "--object-store-memory", str(object_store_mb * 2**20),
               "--disable-usage-stats", "--block"]
    if node_ip:
        command += ["--node-ip-address", node_ip]
    return WorkerPlan(address, device, backend, fingerprint, command)


def run_node(plan: WorkerPlan) -> None:
    """Run the node in the foreground until it stops. `ray start`'s output is held back until the
    node has joined, so a failed join is one line (Ray's version mismatch says what to install
    where), then passed through."""
    process = subprocess.Popen(plan.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    held: list[str] | None = []
    try:
        for line in process.stdout:
            if held is None:
                sys.stdout.write(line)
                continue
            held.append(line)
            if STARTED in line:
                sys.stdout.write("".join(held))
                held = None
    finally:
        code = process.wait()
    text = "".join(held or [])
    if held is not None and "Version mismatch" in text:
        raise MaedetError(version_mismatch(text, plan.address), setting="address")
    if held is not None:
        lines = [line for line in text.splitlines() if line.strip()]
        raise MaedetError(f"the node did not join (ray start exited with code {code}): "
                          f"{lines[-1] if lines else 'no output'}", setting="address")
