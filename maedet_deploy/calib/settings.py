"""What one calibration job is asked to do, and what it gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MaedetError
from ..inputs import PreprocessSpec
from .decoders import DecodeSettings
from .placement import PLACEMENTS
from .ranges import CALIBRATION_METHODS

OUTPUT_PRECISIONS = ("int8", "fp16")
DEFAULT_METHOD = "mse"
DEFAULT_BACKEND = "onnxruntime"
DEFAULT_FLOAT_MACS = 0.10


@dataclass
class CalibrationSettings:
    """Settings of `run_calibration`; the CLI's flags have the same names."""

    model: Path
    images: Path  # an image folder or an .npy/.npz file
    out: Path
    precision: str = "int8"
    backend: str = DEFAULT_BACKEND  # the runtime the INT8 model is for: decides the Q/DQ placement
    placement: str | None = None  # override the backend's placement: tensorrt or onnxruntime
    method: str = DEFAULT_METHOD
    percentile: float = 99.99
    num_images: int | None = 256
    seed: int = 0
    holdout: int = 0
    spec: PreprocessSpec = field(default_factory=PreprocessSpec)
    exclude: tuple[str, ...] = ()
    default_exclusions: bool = True
    per_channel: bool = True
    preprocess_model: bool = True
    target_agreement: float | None = None
    float_macs: float = DEFAULT_FLOAT_MACS  # without a target: most float share of conv MACs, sensitive layers first
    sensitivity_images: int = 2
    report: Path | None = None
    annotations: Path | None = None
    calibration_cache: Path | None = None
    trt_version: str = "8.6.1"
    decoder: str = "auto"
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    truth_threshold: float = 0.3
    latency_seconds: float = 0.0  # > 0: time float and converted models with the bench loop

    @property
    def placement_name(self) -> str:
        return self.placement or self.backend

    def check(self) -> None:
        """Every setting, before any work: wrong values name the setting."""
        choices = {"precision": OUTPUT_PRECISIONS, "method": CALIBRATION_METHODS, "placement": tuple(PLACEMENTS),
                   "backend": tuple(PLACEMENTS)}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise MaedetError(f"must be one of {', '.join(allowed)}, got {value!r}", setting=name)
        if self.target_agreement is not None:
            if not 0 < self.target_agreement <= 1:
                raise MaedetError(f"must be in (0, 1], got {self.target_agreement}", setting="target_agreement")
            if self.precision != "int8":
                raise MaedetError("applies to INT8 only", setting="target_agreement")
        if (self.target_agreement is not None or self.annotations is not None) and self.holdout < 1:
            raise MaedetError("needs held-out images to judge by: give some", setting="holdout")
        if self.calibration_cache is not None and self.precision != "int8":
            raise MaedetError("applies to INT8 only", setting="calibration_cache")
        if not 0 <= self.float_macs < 1:
            raise MaedetError(f"must be in [0, 1), got {self.float_macs}", setting="float_macs")
        if self.sensitivity_images < 1:
            raise MaedetError("must be at least 1", setting="sensitivity_images")
        self._check_paths()

    def _check_paths(self) -> None:
        """No output may overwrite the input model or another output."""
        written = {"out": self.out, "report": self.report, "calibration_cache": self.calibration_cache}
        seen = {Path(self.model).resolve(): "model"}
        for name, path in written.items():
            if path is None:
                continue
            resolved = Path(path).resolve()
            if resolved in seen:
                raise MaedetError(f"{path} is also the {seen[resolved].replace('_', ' ')}: give another file",
                                  setting=name)
            seen[resolved] = name


@dataclass
class CalibrationResult:
    """What a calibration job produced. `report` is the JSON report's content; the typed
    fields are the figures a pipeline or a caller reads."""

    output: Path
    precision: str
    method: str | None            # INT8 calibration method (None for FP16)
    placement: str | None         # INT8 Q/DQ placement (tensorrt, onnxruntime)
    calibration_images: list[str]
    held_out_images: list[str]
    quantized_layers: int | None  # INT8: compute layers running in INT8 / kept float
    float_layers: int | None
    int8_mac_share: float | None  # INT8: fraction of compute-layer MACs in INT8 layers
    agreement_metric: str | None  # "map50" (detectors) or "cosine"; None without held-out images
    agreement: float | None
    map50: float | None
    map50_95: float | None
    latency: dict[str, Any] | None
    report: dict[str, Any]
