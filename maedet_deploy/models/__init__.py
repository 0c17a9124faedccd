"""PyTorch modules built from a structure: backbone, detector, and the forward entropy."""

from .backbone import DEFAULT_OUT_INDICES, Backbone, create_backbone, seeded
from .blocks import ConvBN, ResidualUnit, build_block, calibrate_batchnorm, fold_batchnorm
from .checkpoint import load_weights, read_state_dict
from .detector import PAN, Detector, Head, create_detector
from .entropy import forward_stage_entropies

__all__ = [
    "DEFAULT_OUT_INDICES", "Backbone", "create_backbone", "seeded", "ConvBN", "ResidualUnit",
    "build_block", "calibrate_batchnorm", "fold_batchnorm", "load_weights", "read_state_dict", "PAN",
    "Detector", "Head", "create_detector", "forward_stage_entropies",
]
