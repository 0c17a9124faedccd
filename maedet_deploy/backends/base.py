"""One small interface for every inference backend (Polygraphy's runner idea).

A `Runner` holds a loaded model, declares its inputs and outputs, and runs a
feed dict of numpy arrays. `bench` and `compare` accept any runner, so a new
backend only implements this. Every runner carries a `settings` dict (threads,
precision, ...) that reports record, and is a context manager: `with runner:`
releases the model on every path, as Polygraphy's runners do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, runtime_checkable

import numpy as np

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: dynamic dims are a name (str) or None."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) or d < 0 for d in self.shape)


@runtime_checkable
class Runner(Protocol):
    backend: str
    settings: dict

    @property
    def inputs(self) -> list[TensorSpec]: ...

    @property
    def outputs(self) -> list[TensorSpec]: ...

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns host arrays keyed by output name."""
        ...

    def close(self) -> None:
        """Release the model; safe to call twice."""
        ...

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc_info) -> None: ...


class RunnerLifecycle:
    """`with runner:` closes the runner however the block ends; runners inherit this."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def metadata_path(model: str | os.PathLike) -> Path:
    """Where `build` records how a model or engine was built: `<file>.json` beside it."""
    return Path(f"{model}.json")
