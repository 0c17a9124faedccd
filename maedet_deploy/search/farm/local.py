"""A farm on one machine: a head and device nodes started as users start them (`ray start --head`,
`maedet-deploy worker`), for trying the farm without devices, and for its tests and benchmark.

Each node is its own process group on its own loopback address (127.0.0.x), so
the nodes look like separate hosts, no traffic leaves the machine, and killing
a group takes that node's raylet and workers down at once, as when a device
loses power. Nodes start one at a time: two starting at once on one host race
for the same socket names.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HEAD_IP = "127.0.0.2"
STARTUP_S = 60.0
# A dead node is noticed after 5 missed checks a second apart (Ray's default: 3 s apart).
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}
OBJECT_STORE_MB = 80


def free_port(host: str = HEAD_IP) -> int:
    probe = socket.socket()
    probe.bind((host, 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


class LocalFarm:
    """`with LocalFarm(logs) as farm:` a head on HEAD_IP, this process connected to it as the driver;
    `farm.add_worker(ip, device, cores)` joins a device node; leaving the block stops them all."""

    def __init__(self, logs: Path) -> None:
        self.port = free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.logs = Path(logs)
        self.groups: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> "LocalFarm":
        import ray

        try:
            self._spawn(HEAD_IP, [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--port",
                                  str(self.port), "--node-ip-address", HEAD_IP, "--num-cpus", "0",
                                  "--object-store-memory", str(OBJECT_STORE_MB * 2**20), "--disable-usage-stats",
                                  "--block", "--system-config", json.dumps(HEALTH_CHECKS)])
            self._wait(lambda: _reachable(HEAD_IP, self.port), HEAD_IP)
            ray.init(address=self.address, logging_level="WARNING", log_to_driver=False)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _spawn(self, name: str, command: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "w") as log:
            self.groups[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait(self, ready, name: str) -> None:
        deadline = time.monotonic() + STARTUP_S
        while not ready():
            if self.groups[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n" + (self.logs / f"{name}.log").read_text()[-2000:])
            time.sleep(0.2)

    def add_worker(self, ip: str, device: str, cores: str | None = None) -> None:
        """`maedet-deploy worker` on `ip` (pinned to `cores` with taskset); returns once it has joined."""
        import ray

        command = [sys.executable, "-m", "maedet_deploy.cli.main", "worker", "--address", self.address, "--device",
                   device, "--node-ip-address", ip, "--object-store-mb", str(OBJECT_STORE_MB)]
        self._spawn(ip, (["taskset", "-c", cores] if cores else []) + command)
        self._wait(lambda: any(n["Alive"] and n["NodeManagerAddress"] == ip for n in ray.nodes()), ip)

    def kill(self, name: str) -> None:
        process = self.groups.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def close(self) -> None:
        import ray

        ray.shutdown()
        for name in list(self.groups):
            self.kill(name)


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False
