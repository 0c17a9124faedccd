"""The architecture description and its arithmetic (the bottom layer: no torch)."""

from .blocks import (BLOCK_TYPES, K1DWK1, K1KXK1, KXKX, STEM, SUPER_TYPES, Block, Structure,
                     StructureError)
from .cost import Cost, ImageSize, Stage, as_hw, compute_cost, stage_ends
from .io import (load_structure, parse_structure, save_structure, structure_from_data,
                 structure_to_json, structure_to_reference_text)

__all__ = [
    "BLOCK_TYPES", "K1DWK1", "K1KXK1", "KXKX", "STEM", "SUPER_TYPES", "Block", "Structure",
    "StructureError", "Cost", "ImageSize", "Stage", "as_hw", "compute_cost", "stage_ends", "load_structure",
    "parse_structure", "save_structure", "structure_from_data", "structure_to_json",
    "structure_to_reference_text",
]
