"""Loading trained weights safely: tensors only (`weights_only=True`), strict by
default, and every mismatch reported as one line the user can act on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import MaedetError

_WRAPPERS = ("state_dict", "model")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from {'state_dict': ...} or
    {'model': ...} and from DataParallel's 'module.' prefix."""
    path = Path(path)
    if not path.is_file():
        raise MaedetError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights-only errors have many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MaedetError(f"cannot read checkpoint {path}: {first}") from None
    for key in _WRAPPERS:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise MaedetError(f"checkpoint {path} holds no state_dict (a mapping of names to tensors)")
    if data and all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return dict(data)


def _names(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True, prefix: str = "") -> None:
    """Load `path` into `model`. `prefix` (e.g. 'backbone.') is stripped when the
    checkpoint is a larger model's, so a detector checkpoint can seed a backbone."""
    state = read_state_dict(path)
    if prefix and not set(state) & set(model.state_dict()):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing key(s): {_names(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_names(wrong)}")
    if problems:
        raise MaedetError(f"checkpoint {path} does not match the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=strict)
