"""Tiny Cityscapes-layout semantic segmentation set: street-like scenes composited from regions of real
photos (scikit-image / scikit-learn wheels), each region painted with a known Cityscapes label id, so the
label maps are exact.

    <root>/leftImg8bit/{train,val}/<city>/<city>_000000_<frame>_leftImg8bit.png   RGB, 128 x 256
    <root>/gtFine/{train,val}/<city>/<city>_000000_<frame>_gtFine_labelIds.png    uint8 label ids

Layout of a scene (top to bottom): sky, a skyline of building and vegetation blocks, sidewalk strips
left and right of the road, the road, and the ego-vehicle bonnet at the bottom (label id 1, which maps to
"ignore" 255); on the ground 1-3 people and 0-2 motorcycles (rectangular photo crops). 40 train images
(cities aachen, bremen) and 12 val images (frankfurt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vtrain.data.tiny.classification import _photo

HEIGHT, WIDTH = 128, 256
# Cityscapes label id -> (source photo, window (left, top, right, bottom) of it to take textures from).
TEXTURES = {
    23: ("sklearn china.jpg", (0, 0, 640, 90)),  # sky
    11: ("skimage brick", (0, 0, 512, 512)),  # building
    21: ("skimage grass", (0, 0, 512, 512)),  # vegetation
    8: ("sklearn flower.jpg", (0, 300, 640, 427)),  # sidewalk
    7: ("skimage gravel", (0, 0, 512, 512)),  # road
    24: ("skimage astronaut", (100, 0, 380, 330)),  # person
    32: ("skimage motorcycle", (20, 40, 700, 500)),  # motorcycle
}
EGO_VEHICLE = 1
SPLITS = {"train": (("aachen", 20), ("bremen", 20)), "val": (("frankfurt", 12),)}


def _texture(
    photos: dict[str, np.ndarray], label_id: int, width: int, height: int, rng: np.random.Generator
) -> np.ndarray:
    """A random crop of the label's photo window resized to width x height, slightly tinted, [h, w, 3]."""
    source, (left, top, right, bottom) = TEXTURES[label_id]
    window = photos[source][top:bottom, left:right]
    h = int(rng.integers(max(8, window.shape[0] // 3), window.shape[0] + 1))
    w = int(rng.integers(max(8, window.shape[1] // 3), window.shape[1] + 1))
    y, x = int(rng.integers(0, window.shape[0] - h + 1)), int(rng.integers(0, window.shape[1] - w + 1))
    crop = Image.fromarray(window[y : y + h, x : x + w]).resize((width, height), Image.BILINEAR)
    return np.clip(np.asarray(crop, np.float32) * rng.uniform(0.85, 1.15, size=3), 0, 255)


def _scene(photos: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One RGB image [H, W, 3] uint8 and its label ids [H, W] uint8."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)

    def paint(label_id: int, top: int, bottom: int, left: int, right: int) -> None:
        if bottom > top and right > left:
            image[top:bottom, left:right] = _texture(photos, label_id, right - left, bottom - top, rng)
            labels[top:bottom, left:right] = label_id

    sky = int(rng.integers(18, 36))
    horizon = int(rng.integers(58, 72))
    paint(23, 0, horizon, 0, WIDTH)
    x = 0
    while x < WIDTH:  # the skyline: blocks of building or vegetation of random width and height
        width = int(rng.integers(24, 72))
        paint(
            int(rng.choice([11, 21])), int(rng.integers(sky, horizon - 10)), horizon, x, min(WIDTH, x + width)
        )
        x += width
    bonnet = HEIGHT - int(rng.integers(8, 14))
    paint(8, horizon, bonnet, 0, WIDTH)
    left, right = int(rng.integers(30, 80)), int(rng.integers(WIDTH - 80, WIDTH - 30))
    paint(7, horizon, bonnet, left, right)
    image[bonnet:] = rng.uniform(10, 30)
    labels[bonnet:] = EGO_VEHICLE
    for label_id, count in ((24, int(rng.integers(1, 4))), (32, int(rng.integers(0, 3)))):
        for _ in range(count):
            height = int(rng.integers(22, 44))
            width = height // 2 if label_id == 24 else int(height * rng.uniform(1.0, 1.4))
            feet = int(rng.integers(horizon + height // 2, bonnet))
            x = int(rng.integers(0, WIDTH - width))
            paint(label_id, max(0, feet - height), feet, x, x + width)
    return np.rint(image).astype(np.uint8), labels


def build_cityscapes_tiny(root: str | Path, seed: int = 0) -> Path:
    """Write the tiny set under ``root`` (see the module docstring); returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    photos = {source: _photo(source) for source, _ in TEXTURES.values()}
    for split, cities in SPLITS.items():
        for city, count in cities:
            for frame in range(count):
                image, labels = _scene(photos, rng)
                stem = f"{city}_000000_{frame:06d}"
                image_dir = root / "leftImg8bit" / split / city
                label_dir = root / "gtFine" / split / city
                image_dir.mkdir(parents=True, exist_ok=True)
                label_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(image_dir / f"{stem}_leftImg8bit.png")
                Image.fromarray(labels, mode="L").save(label_dir / f"{stem}_gtFine_labelIds.png")
    return root
