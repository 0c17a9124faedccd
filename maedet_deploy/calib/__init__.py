"""FP16 and INT8 (explicit Q/DQ) models from your images, with an accuracy report.

Precision lives in the ONNX graph: INT8 as Q/DQ pairs placed for the backend that
will run the model (`qdq_placement`: TensorRT's symmetric int8 on compute-layer
inputs, or ONNX Runtime CPU's uint8 on every op it fuses), FP16 as a float16 graph
with float32 I/O. Everything here runs and is checked on CPU with ONNX Runtime.

    from maedet_deploy.calib import CalibrationSettings, run_calibration
    result = run_calibration(CalibrationSettings(model=Path("det.onnx"), images=Path("images/"),
                                                 out=Path("det.int8.onnx"), holdout=16, backend="onnxruntime"))
    print(result.map50, result.int8_mac_share, result.quantized_layers, result.float_layers)
"""

from .decoders import DECODERS, DecodeSettings, Detections, pick_decoder
from .job import run_calibration
from .placement import PLACEMENTS, QdqPlacement, qdq_placement
from .ranges import CALIBRATION_METHODS
from .samples import sample_images
from .settings import (DEFAULT_BACKEND, DEFAULT_FLOAT_MACS, DEFAULT_METHOD, OUTPUT_PRECISIONS, CalibrationResult,
                       CalibrationSettings)

__all__ = ["CALIBRATION_METHODS", "DECODERS", "DEFAULT_BACKEND", "DEFAULT_FLOAT_MACS", "DEFAULT_METHOD",
           "OUTPUT_PRECISIONS", "PLACEMENTS", "CalibrationResult", "CalibrationSettings", "DecodeSettings",
           "Detections", "QdqPlacement", "pick_decoder", "qdq_placement", "run_calibration", "sample_images"]
