"""Which INT8 graph each backend runs fastest: where Q/DQ goes and the activation type.

- `tensorrt`: what TensorRT's explicit quantization needs and fuses best: symmetric
  int8 activations (zero point 0) and per-channel int8 weights, Q/DQ on the inputs
  of compute layers (Conv, ConvTranspose, Gemm, MatMul) and of residual Adds (two
  activations; an Add with a constant, like the `x + 3` of a decomposed hard-swish,
  is not), layer outputs left unquantized so TensorRT fuses the pointwise tail into
  the layer, float biases (TensorRT folds them in).
- `onnxruntime`: what ONNX Runtime's CPU provider turns into integer kernels. Its
  QDQ fusions (DQ -> Conv -> Q into QLinearConv, and QLinearAdd/Mul/Sigmoid/Concat/
  Softmax...) take uint8 activations on x86: with int8 activations the `is_int8_allowed`
  check of its selector fails outside ARM, every Conv stays float between a DQ and a Q,
  and the model runs slower than float (measured 0.5x on YOLO11n). So: uint8
  activations, asymmetric ranges (a tensor after ReLU spends all 256 levels on [0, t]),
  per-channel int8 weights (U8S8, the VNNI dot product's operand types), int32 biases,
  Q/DQ on every op it fuses, removable ReLU/Clip absorbed into the ranges; convs that
  read the image itself (<= 4 input channels) stay float, where the int8 kernel's
  im2col path is slower than the float one (1.9 vs 1.1 ms on YOLO11n's stem) and
  the input loses no precision. A layer kept float reads the dequantized copy of its
  input: reading the producer's float output instead would give that output a second
  reader besides its QuantizeLinear, and ONNX Runtime then leaves the producer float.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import MaedetError


@dataclass(frozen=True)
class QdqPlacement:
    name: str
    ops: str               # "compute": compute-layer and residual-Add inputs; "all": every op the backend fuses
    activations: str       # "int8" or "uint8"
    symmetric: bool        # activation zero points 0
    quantize_bias: bool    # int32 bias Q/DQ
    float_stem_channels: int  # convs with at most this many input channels stay float (0: none)
    float_reads_float: bool  # a layer kept float reads its producer's float output (else the dequantized copy)

    def to_dict(self) -> dict:
        return asdict(self)


PLACEMENTS = {
    "tensorrt": QdqPlacement("tensorrt", "compute", "int8", True, False, 0, True),
    "onnxruntime": QdqPlacement("onnxruntime", "all", "uint8", False, True, 4, False),
}


def qdq_placement(backend: str) -> QdqPlacement:
    """The fastest INT8 graph `backend` accepts (a placement name is accepted too)."""
    if backend not in PLACEMENTS:
        raise MaedetError(f"must be one of {', '.join(PLACEMENTS)}, got {backend!r}", setting="placement")
    return PLACEMENTS[backend]


X86_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # the int8 dot-product instructions ONNX Runtime uses


def cpu_flags() -> list[str]:
    """The x86 vector flags that decide INT8 speed on this CPU (empty elsewhere)."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return []
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    present = set(line.partition(":")[2].split())
    return [flag for flag in ("avx2", "avx512f", *X86_INT8_FLAGS) if flag in present]


def speed_verdict(speedup: float, placement: QdqPlacement, flags: list[str]) -> str:
    """One plain sentence on whether INT8 pays on this CPU, and why not when it does not."""
    if speedup >= 1:
        return f"INT8 runs {speedup:.2f}x as fast as float32 here"
    if placement.activations == "int8":
        why = ("its int8 activations are TensorRT's format: ONNX Runtime fuses Q/DQ into integer kernels "
               "only with uint8 activations on x86, so every layer runs in float between Q/DQ pairs")
    elif not set(flags) & set(X86_INT8_FLAGS):
        why = "this CPU has no int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX)"
    else:
        why = ("the integer convolutions do not win back what the model's element-wise layers cost in uint8 "
               "(ONNX Runtime has no fused int8 SiLU or hard-swish) and what small or depthwise convolutions gain")
    return f"INT8 is slower than float32 here ({1 / speedup:.2f}x the time): {why}"
