"""FP16 and INT8 (explicit Q/DQ) models from your images, with an accuracy report.

Precision lives in the ONNX graph (TensorRT's strongly typed networks, ONNX
Runtime everywhere): INT8 as symmetric Q/DQ pairs with zero point 0 and
per-channel weights, FP16 as a float16 graph with float32 I/O. Everything here
runs and is checked on CPU with ONNX Runtime.

    from maedet_deploy.calib import open_data, PreprocessSpec, quantize_int8, accuracy_report
    calib, held_out = open_data("images/", "det.onnx", PreprocessSpec(resize="letterbox"), 256, holdout=32)
    result = quantize_int8("det.onnx", calib, "det.int8.onnx", method="entropy")
    report = accuracy_report("det.onnx", result.model, held_out, out="report.json")
"""

from .data import DataSource, FeedReader, ImageData, TensorData, list_images, open_data, split_indices
from .decoders import DECODERS, DecodeSettings, Detections, pick_decoder
from .fp16 import FP32_OPS, Fp16Result, convert_fp16
from .graph import default_exclusions, resolve_exclusions
from .int8 import (METHODS, PLACEMENTS, Calibration, Int8Result, Prepared, calibrate, entropy_amax, exclusions,
                   prepare, qdq_summary, quantize_int8, quantize_qdq)
from .partial import PartialResult, layer_sensitivity, partial_quantize, quantize_only
from .preprocess import ImageMeta, PreprocessSpec, load_spec, spec_from_mapping
from .report import Evaluator, accuracy_report
from .run import PRECISIONS, CalibrateSettings, run_calibration
from .trt_cache import calibration_cache_text, read_calibration_cache, write_calibration_cache

__all__ = [
    "DataSource", "FeedReader", "ImageData", "TensorData", "list_images", "open_data", "split_indices",
    "DECODERS", "DecodeSettings", "Detections", "pick_decoder",
    "FP32_OPS", "Fp16Result", "convert_fp16",
    "default_exclusions", "resolve_exclusions",
    "METHODS", "PLACEMENTS", "Calibration", "Int8Result", "Prepared", "calibrate", "entropy_amax", "exclusions",
    "prepare", "qdq_summary", "quantize_int8", "quantize_qdq",
    "PartialResult", "layer_sensitivity", "partial_quantize", "quantize_only",
    "ImageMeta", "PreprocessSpec", "load_spec", "spec_from_mapping",
    "Evaluator", "accuracy_report",
    "PRECISIONS", "CalibrateSettings", "run_calibration",
    "calibration_cache_text", "read_calibration_cache", "write_calibration_cache",
]
