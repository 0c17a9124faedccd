"""Samples stored as numpy files: `.npy` (one array, samples first) or `.npz` (one array per
input name). Read without unpickling (object arrays are refused: loading them would
run code from the file), and every way a file can be broken is one clear error."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import MaedetError, first_line

TENSOR_SUFFIXES = (".npy", ".npz")


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray] | np.ndarray:
    """The array of an .npy file, or the name -> array mapping of an .npz file."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays: dict[str, np.ndarray] | np.ndarray = loaded
        else:
            with loaded:
                arrays = {key: loaded[key] for key in loaded.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise MaedetError(f"{path} holds object arrays (pickled Python objects), which are never loaded; "
                              "save plain numeric arrays") from None
        raise MaedetError(f"cannot read tensors from {path}: {first_line(exc)}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise MaedetError(f"cannot read tensors from {path}: {first_line(exc)}") from None
    for name, array in (arrays.items() if isinstance(arrays, dict) else [("array", arrays)]):
        if array.dtype.kind not in "biuf":
            raise MaedetError(f"{path}: {name} is {array.dtype}; give numeric arrays")
        if array.ndim == 0 or len(array) == 0:
            raise MaedetError(f"{path}: {name} holds no samples (shape {list(array.shape)})")
    if isinstance(arrays, dict) and not arrays:
        raise MaedetError(f"{path} holds no arrays")
    return arrays
