"""The PyTorch eager baseline: our detector built from a structure, timed beside the deployed model."""

from __future__ import annotations

from typing import Sequence

from ..backends.base import TensorSpec
from ..backends.torch import TorchRunner
from ..errors import MaedetError


def eager_detector(structure: str, inputs: Sequence[TensorSpec], num_classes: int = 80,
                   threads: int | None = None) -> TorchRunner:
    """`create_detector(structure)` behind the deployed model's own input declaration, so the
    same feed goes to both. Its outputs are the raw boxes and scores: no NMS in eager mode."""
    from ..models import create_detector

    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise MaedetError("needs a model with one NCHW image input", "torch_baseline")
    height, width = (d if isinstance(d, int) and d > 0 else 640 for d in inputs[0].shape[2:])
    module = create_detector(structure, num_classes=num_classes, image_size=(height, width))
    return TorchRunner(module, inputs, ("boxes", "scores"), threads=threads)
