"""Latency measured on remote target devices and device farms, with Ray (the optional `[farm]` extra).

A search runs on a workstation; its measurements run on the devices it targets.
Each device joins a Ray cluster with `maedet-deploy worker`, advertising itself
as a custom resource of capacity 1 named by its kind and fingerprint (`fleet`);
the driver connects (`connect`), probes every node, keeps the fleet that shares
one fingerprint, and sends windows of requests as Ray tasks that need that
resource (`executor`); each task exports and times its window on the node
(`task`). Nothing here is imported unless a farm is asked for: the in-process
default needs no Ray.
"""

from .connect import FARM_EXTRA, import_ray
from .executor import DEFAULT_TIMEOUT_S, WINDOW, FarmExecutor, open_farm
from .fleet import check_device_name, device_resource

__all__ = ["DEFAULT_TIMEOUT_S", "FARM_EXTRA", "FarmExecutor", "WINDOW", "check_device_name", "device_resource",
           "import_ray", "open_farm"]
