"""Calibration images for users who bring none."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import MaedetError


def sample_images() -> Path:
    """The photographs and scans that scikit-image ships (skimage/data), as an image folder."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise MaedetError("no images given and scikit-image (which ships sample photographs) is not installed; "
                          "give an image folder or pip install scikit-image", setting="images")
    return Path(list(spec.submodule_search_locations)[0]) / "data"
