"""Which nodes of a farm measure: the devices of one kind whose fingerprint is the fleet's.

A device joins with a Ray custom resource `maedet:<device>:<fingerprint id>` of
capacity 1 (`maedet-deploy worker`): a task needing one unit of it runs on such
a node, one at a time, so measurements never contend on a device, and Ray
reschedules it on another node with the same resource when its node dies. The
fingerprint in the name keeps a node that differs (another GPU, TensorRT
version, power mode, core count) out of the fleet's tasks. The driver does not
trust the name alone: it probes every node for its real fingerprint first.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from ... import __version__
from ...backends.fingerprint import ID_FIELDS, fingerprint_id
from ...errors import MaedetError, first_line
from ..target import PROTOCOL

RESOURCE_PREFIX = "maedet:"
PROBE_TIMEOUT_S = 120.0
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_device_name(device: str) -> str:
    if not _DEVICE_NAME.match(device):
        raise MaedetError(f"a device name is letters, digits, '.', '_' and '-' (up to 63), got {device!r}",
                          setting="device")
    return device


def device_resource(device: str, fingerprint: str) -> str:
    """The Ray resource a device of this kind and fingerprint advertises (capacity 1)."""
    return f"{RESOURCE_PREFIX}{check_device_name(device)}:{fingerprint}"


@dataclass(frozen=True)
class FarmNode:
    node_id: str
    address: str
    device: str
    declared: str                  # fingerprint id in the node's resource name
    probe: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        """How reports name a node: host, address and the start of Ray's node id."""
        return f"{self.probe.get('host', '?')}@{self.address}/{self.node_id[:8]}"

    @property
    def fingerprint_id(self) -> str:
        return fingerprint_id(self.probe["fingerprint"])


@dataclass
class Fleet:
    device: str
    fingerprint: dict[str, Any]
    nodes: list[FarmNode]
    refused: list[str]             # one line per node left out, naming it and why

    @property
    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint)

    @property
    def resource(self) -> str:
        return device_resource(self.device, self.fingerprint_id)


def device_nodes(ray: ModuleType) -> list[FarmNode]:
    """Every live node that advertises a device, from Ray's node table."""
    found = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for name in node.get("Resources", {}):
            if name.startswith(RESOURCE_PREFIX) and name.count(":") == 2:
                _, device, declared = name.split(":")
                found.append(FarmNode(node["NodeID"], node.get("NodeManagerAddress", "?"), device, declared))
    return found


def choose_device(nodes: list[FarmNode], device: str | None, address: str) -> str:
    kinds = sorted({node.device for node in nodes})
    if not kinds:
        raise MaedetError(f"no device has joined the farm at {address}: run `maedet-deploy worker` on each device",
                          setting="farm")
    if device is None:
        if len(kinds) > 1:
            raise MaedetError(f"the farm at {address} holds several kinds of device ({', '.join(kinds)}): "
                              "name the one to measure on", setting="device")
        return kinds[0]
    if device not in kinds:
        raise MaedetError(f"no {device!r} device in the farm at {address} (it has {', '.join(kinds)})",
                          setting="device")
    return device


def probe_nodes(ray: ModuleType, nodes: list[FarmNode]) -> tuple[list[FarmNode], list[str]]:
    """Each node's real fingerprint and software, asked of the node itself; a node that cannot
    answer (it died since Ray listed it, or cannot import maedet-deploy) is refused in one line."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .task import probe_task

    remote = ray.remote(probe_task)
    refs = [remote.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        node.node_id, soft=False)).remote() for node in nodes]
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    probed, refused = [], []
    for node, ref in zip(nodes, refs):
        try:
            probed.append(replace(node, probe=ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))))
        except Exception as exc:  # any failure of one node's probe leaves that node out, named
            ray.cancel(ref, force=True)
            refused.append(f"refused node {node.address}/{node.node_id[:8]}: it did not answer the probe "
                           f"({first_line(exc)}); it needs maedet-deploy {__version__} where its Ray runs")
    return probed, refused


def _differences(theirs: dict[str, Any], ours: dict[str, Any]) -> str:
    return ", ".join(f"{key} {theirs.get(key)!r} vs {ours.get(key)!r}" for key in ID_FIELDS
                     if theirs.get(key) != ours.get(key))


def _refusal(node: FarmNode, fleet_id: str, fleet_fp: dict[str, Any]) -> str | None:
    """Why `node` cannot measure for the fleet, in one line; None when it can."""
    probe = node.probe
    if probe.get("maedet_deploy") != __version__ or probe.get("protocol") != PROTOCOL:
        return (f"refused node {node.label}: it runs maedet-deploy {probe.get('maedet_deploy')} "
                f"({probe.get('protocol')}), this driver {__version__} ({PROTOCOL})")
    if node.fingerprint_id != fleet_id:
        return (f"refused node {node.label}: its fingerprint {node.fingerprint_id} differs from the fleet's "
                f"{fleet_id} ({_differences(probe['fingerprint'], fleet_fp)})")
    if node.declared != node.fingerprint_id:
        return (f"refused node {node.label}: it joined as fingerprint {node.declared} but is now "
                f"{node.fingerprint_id}; restart its worker")
    return None


def form_fleet(probed: list[FarmNode], device: str, address: str, refused: list[str]) -> Fleet:
    """The fleet is the fingerprint most probed nodes of `device` share; every other node is refused
    (`refused` already names the nodes that did not answer the probe)."""
    if not probed:
        raise MaedetError(f"no {device} node of the farm at {address} can measure: {refused[0]}", setting="device")
    counts = Counter(node.fingerprint_id for node in probed).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        raise MaedetError(f"the {device} nodes of the farm at {address} split evenly between fingerprints "
                          f"{counts[0][0]} and {counts[1][0]}: join them as two device names", setting="device")
    fleet_id = counts[0][0]
    fleet_fp = next(node.probe["fingerprint"] for node in probed if node.fingerprint_id == fleet_id)
    reasons = [_refusal(node, fleet_id, fleet_fp) for node in probed]
    for node, reason in zip(probed, reasons):
        if reason and node.declared == fleet_id:   # it would still be handed the fleet's tasks
            raise MaedetError(f"{reason}; it advertises the fleet's resource, so stop or restart its worker",
                              setting="device")
    kept = [node for node, reason in zip(probed, reasons) if reason is None]
    refused = refused + [reason for reason in reasons if reason]
    if not kept:
        raise MaedetError(f"no {device} node of the farm at {address} can measure: {refused[0]}", setting="device")
    return Fleet(device, fleet_fp, kept, refused)
