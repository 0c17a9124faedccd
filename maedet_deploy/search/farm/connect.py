"""Reaching a farm: Ray imported lazily, the address checked before anything runs, and Ray's own
version check turned into one line that says what to install where.

Ray needs the same Ray release and, by default, the same Python (to the patch
release) on the driver and on every node. Ray's error is a multi-line report;
a user needs to know which side to change.
"""

from __future__ import annotations

import logging
import re
import socket
from types import ModuleType

from ...errors import MaedetError, first_line

FARM_EXTRA = "pip install 'maedet-deploy[farm]'"
REACH_TIMEOUT_S = 5.0
_VERSIONS = re.compile(r"started with:\s*Ray: (\S+)\s*Python: (\S+).*?started with:\s*Ray: (\S+)\s*Python: (\S+)",
                       re.S)


def import_ray(setting: str | None = "farm") -> ModuleType:
    """The ray module, or one line saying how to get it."""
    try:
        import ray
    except ImportError:
        raise MaedetError(f"the device farm needs Ray, which is not installed here: {FARM_EXTRA}",
                          setting=setting) from None
    return ray


def split_address(address: str, setting: str = "farm") -> tuple[str, int]:
    """HOST:PORT of a Ray head (GCS) or `ray://HOST:PORT` of a Ray Client server."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise MaedetError(f"a farm address looks like HOST:6379 (or ray://HOST:10001), got {address!r}",
                          setting=setting)
    return host.strip("[]"), int(port)


def check_reachable(address: str, setting: str = "farm", timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Fail in seconds on a wrong or closed address; Ray itself retries for a minute first."""
    host, port = split_address(address, setting)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise MaedetError(f"cannot reach the farm at {address}: {exc.strerror or first_line(exc)} (is a Ray head "
                          "running there? start one with `ray start --head --port 6379`)", setting=setting) from None


def version_mismatch(text: str, address: str) -> str:
    """Ray's 'Version mismatch' report as one line naming what to install where."""
    found = _VERSIONS.search(text)
    if not found:
        return f"the farm at {address} runs another Ray or Python version than this process: {first_line(text)}"
    farm_ray, farm_python, here_ray, here_python = found.groups()
    if farm_ray == here_ray and farm_python.split(".")[:2] == here_python.split(".")[:2]:
        hint = ("only the Python patch release differs: use Python " + farm_python + " here, or set "
                "RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor on every node and here")
    else:
        hint = (f"run this on Python {'.'.join(farm_python.split('.')[:2])} with ray=={farm_ray}, or rebuild the "
                f"farm with ray=={here_ray} on Python {here_python} ({FARM_EXTRA} on every node pins one Ray)")
    return (f"the farm at {address} runs Ray {farm_ray} on Python {farm_python}, this process Ray {here_ray} on "
            f"Python {here_python}: every node and the driver need the same; {hint}")


def connect(address: str) -> tuple[ModuleType, bool]:
    """Ray connected to the farm at `address`; True when this call connected (so closing it is ours)."""
    ray = import_ray()
    check_reachable(address)
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if split_address(current) != split_address(address):
            raise MaedetError(f"this process is already connected to the farm at {current}, not {address}",
                              setting="farm")
        return ray, False
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=True)
    except RuntimeError as exc:
        if "Version mismatch" in str(exc):
            raise MaedetError(version_mismatch(str(exc), address), setting="farm") from None
        raise MaedetError(f"cannot join the farm at {address}: {first_line(exc)}", setting="farm") from None
    except (ConnectionError, TimeoutError, ValueError) as exc:
        raise MaedetError(f"cannot join the farm at {address}: {first_line(exc)}", setting="farm") from None
    return ray, True
