"""PyTorch -> ONNX: end-to-end detectors with standard NMS, and fast exports for latency search."""

from .nms import OUTPUT_NAMES, EndToEnd, postprocess
from .onnx import SCOPES, ExportReport, export_onnx, export_structure_onnx

__all__ = ["OUTPUT_NAMES", "EndToEnd", "postprocess", "SCOPES", "ExportReport", "export_onnx",
           "export_structure_onnx"]
