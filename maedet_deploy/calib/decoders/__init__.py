"""Detections from a detector's raw outputs, the layout picked from the float model's outputs.

The decoder is picked once from the float model's outputs and reused for the
quantized model, so both are decoded identically. `auto` tries the layouts in the
order below; a forced name that the outputs contradict is an error.
"""

from .base import DECODERS, DecodeSettings, Decoder, Detections, multiclass_nms, nms, pick_decoder
from . import sets, levels, yolo  # noqa: F401,E402  (each registers its layouts, in this order)

__all__ = ["DECODERS", "DecodeSettings", "Decoder", "Detections", "multiclass_nms", "nms", "pick_decoder"]
