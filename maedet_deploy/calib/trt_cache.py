"""TensorRT INT8 calibration cache, for TensorRT 8.x users building engines from
the float ONNX with implicit quantization (deprecated since TensorRT 10.1,
removed in 11, where the Q/DQ ONNX is the way).

The text format TensorRT reads and writes: a header line
`TRT-<version>-EntropyCalibration2` (version as TensorRT spells it: 8.6.1 is
8601), then one `tensor_name: <scale>` line per tensor, where the scale
(amax / 127) is written as the hex of its float32 big-endian bits.
Untested against a real TensorRT here (none on this machine).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable

import onnx

from ..atomic import write_text
from ..errors import MaedetError
from .ranges import Ranges

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")


def trt_version_number(version: str | int) -> int:
    """'8.6.1' -> 8601, '8.5.2' -> 8502 (TensorRT's NV_TENSORRT_VERSION); ints pass through."""
    if isinstance(version, int):
        return version
    text = str(version).strip()
    if text.isdigit():
        return int(text)
    try:
        major, minor, patch = (int(p) for p in (text.split(".") + ["0", "0"])[:3])
    except ValueError:
        raise MaedetError(f"TensorRT version must look like 8.6.1 or 8601, got {version!r}") from None
    return major * 1000 + minor * 100 + patch


def scale_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def model_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Activation tensor names TensorRT's ONNX parser will create (graph inputs and node outputs)."""
    initializers = {init.name for init in model.graph.initializer}
    names = {i.name for i in model.graph.input if i.name not in initializers}
    names.update(out for node in model.graph.node for out in node.output if out)
    return names


def calibration_cache_text(calibration: Ranges, tensors: Iterable[str] | None = None,
                           version: str | int = "8.6.1", algorithm: str = "EntropyCalibration2") -> str:
    """The cache text for `tensors` (default: every calibrated tensor); tensors whose
    range is zero are left out (TensorRT then keeps them in higher precision)."""
    if algorithm not in ALGORITHMS:
        raise MaedetError(f"unknown TensorRT calibrator {algorithm!r} (choose from {', '.join(ALGORITHMS)})")
    wanted = set(calibration.amax) if tensors is None else set(tensors) & set(calibration.amax)
    lines = [f"TRT-{trt_version_number(version)}-{algorithm}"]
    for name in sorted(wanted):
        if calibration.amax[name] > 0:
            lines.append(f"{name}: {scale_hex(calibration.scale(name))}")
    return "\n".join(lines) + "\n"


def write_calibration_cache(calibration: Ranges, path: str | os.PathLike, model: onnx.ModelProto | None = None,
                            version: str | int = "8.6.1", algorithm: str = "EntropyCalibration2") -> int:
    """Write the cache atomically, restricted to the tensors of `model` (the float ONNX the
    engine is built from) when given; returns the number of tensors written."""
    text = calibration_cache_text(calibration, model_tensor_names(model) if model is not None else None,
                                  version, algorithm)
    write_text(Path(path), text)
    return text.count("\n") - 1


def read_calibration_cache(path: str | os.PathLike) -> tuple[str, dict[str, float]]:
    """(header, tensor -> scale) from a cache file; the inverse of `write_calibration_cache`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise MaedetError(f"{path} is not a TensorRT calibration cache")
    scales = {}
    for line in lines[1:]:
        name, _, value = line.rpartition(": ")
        scales[name] = struct.unpack(">f", bytes.fromhex(value))[0]
    return lines[0], scales
