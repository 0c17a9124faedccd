"""Image files: which files count as images, how a folder is listed, and how one is
decoded safely. `compare` and `calib` both read images through here, so a folder
means the same set of files, and a bad file the same one-line error, everywhere.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import MaedetError, first_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder`, recursively, sorted by their path relative to it."""
    root = Path(folder)
    if not root.is_dir():
        raise MaedetError(f"image folder not found: {root}")
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise MaedetError(f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) under {root}")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def open_image(path: str | os.PathLike, mode: str = "RGB"):
    """Decode one image into a PIL image of `mode` ('RGB' or 'L'). A file that is not an
    image, or that declares more pixels than PIL's decompression-bomb limit (about 89
    megapixels; checked from the header, before anything is decoded), is a MaedetError."""
    with _opened(path) as image:
        return image.convert(mode)


def check_readable(paths: Iterable[Path]) -> None:
    """Parse every image's header up front, so a bad file fails before minutes of work."""
    for path in paths:
        with _opened(path):
            pass


@contextmanager
def _opened(path: str | os.PathLike) -> Iterator:
    """The image with its header parsed and its declared size checked (PIL's bomb warning
    is an error here); any decoding error inside the block becomes one MaedetError naming
    the file."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MaedetError(f"image {path} is too large to decode safely: {first_line(exc)}") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise MaedetError(f"cannot read image {path}: {first_line(exc)}") from None
