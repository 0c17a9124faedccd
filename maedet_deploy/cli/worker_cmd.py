"""`maedet-deploy worker`: join this device to a latency-measuring farm (Ray)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import console


def worker(
    address: Annotated[str, typer.Option(help="The farm's Ray head, HOST:6379 (started with `ray start --head`).")],
    device: Annotated[str, typer.Option(help="Device kind this node measures as, e.g. orin-nx or a100; searches "
                                             "pick their devices by it.")],
    backend: Annotated[str, typer.Option(help="Backend checked before joining: onnxruntime, or tensorrt (needs "
                                              "TensorRT and a CUDA GPU).")] = "onnxruntime",
    node_ip_address: Annotated[Optional[str], typer.Option(help="This node's address as the head reaches it "
                                                                "(default: Ray's guess).")] = None,
    object_store_mb: Annotated[int, typer.Option(help="Ray object store size; measurement results are small.")] = 128,
    dry_run: Annotated[bool, typer.Option(help="Check and print the `ray start` command without running it.")] = False,
) -> None:
    """Check this device can measure, fingerprint it and start a Ray node that offers it to the farm.

    The node advertises the Ray resource maedet:<device>:<fingerprint> with capacity 1, so it runs one measurement at a time and takes no other Ray work. Searches that measure on the farm send their measurements to the devices of one kind whose fingerprint (CPU, cores, GPU, driver, TensorRT/ONNX Runtime versions) is the fleet's; a node that differs is refused by name. Runs in the foreground: Ctrl-C (or stopping the service) takes the device out of the farm. Every node needs the same Ray and Python as the head: pip install 'maedet-deploy\\[farm]' pins Ray.

    Example: maedet-deploy worker --address 10.0.0.5:6379 --device orin-nx --backend tensorrt
    """
    from ..search.farm.worker import plan_worker, run_node

    plan = plan_worker(address, device, backend, node_ip_address, object_store_mb)
    console.print(f"joining the farm at {plan.address} as {plan.device} ({plan.backend}; resource "
                  f"{plan.resource})", highlight=False, markup=False, emoji=False)
    if dry_run:
        console.print(" ".join(plan.command), highlight=False, markup=False, emoji=False, soft_wrap=True)
        return
    run_node(plan)
