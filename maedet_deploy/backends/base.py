"""One small interface for every inference backend (Polygraphy's runner idea).

A `Runner` holds a loaded model, declares its inputs and outputs, and runs a
feed dict of numpy arrays. `bench` and `compare` accept any runner, so a new
backend only implements this. Every runner carries a `settings` dict (threads,
precision, ...) that reports record, and is a context manager: `with runner:`
releases the model on every path, as Polygraphy's runners do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from ..atomic import atomic_path, write_text
from ..digest import sha256_file
from ..errors import MaedetError

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


def check_distinct_output(model: str | os.PathLike, out: str | os.PathLike) -> None:
    """A build must not overwrite its own input (nor its input's record)."""
    source, target = Path(model), Path(out)
    if target.resolve() in (source.resolve(), metadata_path(source).resolve()) or \
            (target.exists() and source.exists() and os.path.samefile(source, target)):
        raise MaedetError("must differ from the input model", "out")


def save_with_metadata(out: str | os.PathLike, write: Callable[[Path], None], metadata: Mapping[str, Any]) -> dict:
    """Write a model or engine (`write(tmp_path)`) and its `<out>.json` record so that no reader
    ever pairs the new file with the old record: once the new file is complete, the old record
    goes, then the file takes its place, then the record, holding the file's sha256, is written.
    A failed write leaves the old pair untouched. Returns the record."""
    sidecar = metadata_path(out)
    with atomic_path(out) as tmp:
        write(tmp)
        digest = sha256_file(tmp)
        try:
            sidecar.unlink(missing_ok=True)
        except OSError as exc:
            raise MaedetError(f"cannot replace {sidecar}: {exc.strerror or exc}") from None
    record = {**metadata, "sha256": digest}
    write_text(sidecar, json.dumps(record, indent=2) + "\n")
    return record


def read_metadata(model: str | os.PathLike) -> dict | None:
    """The `<model>.json` record when it describes this very file (its sha256 matches); None when
    there is none or it describes another file (a model replaced after it was built)."""
    sidecar = metadata_path(model)
    if not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MaedetError(f"cannot read {sidecar}: {exc}") from None
    if not isinstance(record, dict) or record.get("sha256") != sha256_file(model):
        return None
    return record
