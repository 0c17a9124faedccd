"""Calibration images for users who bring none."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..cachedir import cache_dir
from ..errors import MaedetError
from ..inputs import list_images, open_image


def sample_images() -> Path:
    """The photographs and scans that scikit-image ships (skimage/data) that decode, as an image
    folder: links to them in the user's cache, made once (skimage also ships a multi-page TIFF that
    PIL cannot open, which would stop a calibration)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise MaedetError("no images given and scikit-image (which ships sample photographs) is not installed; "
                          "give an image folder or pip install scikit-image", setting="images")
    source = Path(list(spec.submodule_search_locations)[0]) / "data"
    folder = cache_dir() / f"sample-images-skimage-{importlib.metadata.version('scikit-image')}"
    if not folder.is_dir():
        _link_readable(source, folder)
    return folder


def _link_readable(source: Path, folder: Path) -> None:
    """Links to the images of `source` that decode, made in a staging folder renamed into place."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".sample-images-", dir=folder.parent))
    except OSError as exc:
        raise MaedetError(f"cannot write the sample image set into {folder.parent}: {exc.strerror or exc}; "
                          "give an image folder", setting="images") from None
    try:
        for path in list_images(source):
            try:
                open_image(path)
            except MaedetError:
                continue
            os.symlink(path, staging / path.name)
        os.rename(staging, folder)
    except OSError:
        if not folder.is_dir():     # else another process made it first
            raise MaedetError(f"cannot write the sample image set into {folder}", setting="images") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
