"""PyTorch eager runner: any nn.Module behind the Runner interface, for the eager baseline.

Inputs are declared by the caller (a module has no input signature); they are
passed positionally in that order. Outputs (a tensor, or a tuple/list of them)
are named by `output_names`, else output0, output1, ...
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import MaedetError
from .base import RunnerLifecycle, TensorSpec
from .fingerprint import usable_cores


class TorchRunner(RunnerLifecycle):
    backend = "torch"

    def __init__(self, module, inputs: Sequence[TensorSpec], output_names: Sequence[str] | None = None,
                 threads: int | None = None, device: str = "cpu") -> None:
        """`threads=None`: one per usable physical core, like the ONNX Runtime runner.
        torch's thread count is process-wide, so this sets it for the whole process."""
        import torch

        self._torch = torch
        self.threads = usable_cores() if threads is None else threads
        torch.set_num_threads(self.threads)
        self.module = module.eval().to(device)
        self.device = device
        self._inputs = list(inputs)
        self._output_names = list(output_names) if output_names else None
        self._outputs: list[TensorSpec] | None = None
        self.settings = {"device": device, "threads": self.threads, "module": type(module).__name__}

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        """Known after the first `infer`; asked before, runs once on zeros (static inputs only)."""
        if self._outputs is None:
            if any(spec.is_dynamic for spec in self._inputs):
                raise MaedetError("the outputs of a module with dynamic inputs are known after its first infer")
            self.infer({spec.name: np.zeros(spec.shape, spec.dtype) for spec in self._inputs})
        return self._outputs

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(feed[spec.name])).to(self.device) for spec in self._inputs]
        with torch.inference_mode():
            result = self.module(*args)
        tensors = list(result) if isinstance(result, (tuple, list)) else [result]
        names = self._output_names or [f"output{i}" for i in range(len(tensors))]
        arrays = {name: tensor.detach().cpu().numpy() for name, tensor in zip(names, tensors)}
        if self._outputs is None:
            self._outputs = [TensorSpec(name, array.shape, array.dtype) for name, array in arrays.items()]
        return arrays

    def close(self) -> None:
        self.module = None
