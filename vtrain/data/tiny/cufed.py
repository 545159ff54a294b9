"""Tiny CUFED-layout set for reference-based super-resolution: HR crops of real photos, each with a
reference taken from another crop and transformation of the same photo.

Training pairs come from seven photos, the CUFED5-style test set from three others (held out), so the
test numbers measure what a model learnt rather than what it memorised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vtrain.data.tiny.classification import _photo

CUFED_TINY_TRAIN_PHOTOS = (
    "skimage astronaut",
    "skimage chelsea",
    "skimage coffee",
    "skimage rocket",
    "sklearn china.jpg",
    "skimage brick",
    "skimage grass",
)
CUFED_TINY_TEST_PHOTOS = ("sklearn flower.jpg", "skimage camera", "skimage gravel")
TRAIN_SIZE = 96  # HR and reference side of the training pairs (CUFED: 160)
TEST_SIZE = (120, 88)  # (width, height) of the HR test images, multiples of 4 (CUFED5: about 500 x 332)
TRAIN_PER_PHOTO, TEST_PER_PHOTO = 12, 2
# Reference levels 1..4: (largest shift as a fraction of the crop, scale range, rotate / flip allowed);
# level 5 comes from another photo.
LEVELS = (
    (0.15, (0.9, 1.1), False),
    (0.35, (0.8, 1.25), False),
    (0.5, (0.7, 1.4), True),
    (None, (0.7, 1.4), True),
)


def _box(photo: np.ndarray, w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random window (left, top, right, bottom) of w x h pixels, clipped to the photo's size."""
    w, h = min(w, photo.shape[1]), min(h, photo.shape[0])
    left, top = int(rng.integers(0, photo.shape[1] - w + 1)), int(rng.integers(0, photo.shape[0] - h + 1))
    return left, top, left + w, top + h


def _crop(photo: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> Image.Image:
    left, top, right, bottom = box
    return Image.fromarray(photo[top:bottom, left:right]).resize(size, Image.BICUBIC)


def _reference(
    photo: np.ndarray,
    box: tuple[int, int, int, int],
    size: tuple[int, int],
    shift: float | None,
    scales: tuple[float, float],
    transform: bool,
    rng: np.random.Generator,
) -> Image.Image:
    """A crop of the photo near ``box`` (moved by up to ``shift`` of its size; None: anywhere), rescaled
    by a factor in ``scales``, maybe flipped or rotated, with a small brightness change."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    scale = rng.uniform(*scales)
    rw, rh = min(photo.shape[1], round(w * scale)), min(photo.shape[0], round(h * scale))
    if shift is None:
        ref_box = _box(photo, rw, rh, rng)
    else:
        cx = (left + right) / 2 + rng.uniform(-shift, shift) * w
        cy = (top + bottom) / 2 + rng.uniform(-shift, shift) * h
        x0 = int(np.clip(round(cx - rw / 2), 0, photo.shape[1] - rw))
        y0 = int(np.clip(round(cy - rh / 2), 0, photo.shape[0] - rh))
        ref_box = (x0, y0, x0 + rw, y0 + rh)
    ref = _crop(photo, ref_box, size)
    if transform:
        ref = ref.transpose(
            (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_180, Image.Transpose.FLIP_TOP_BOTTOM)[
                int(rng.integers(3))
            ]
        )
    gain = rng.uniform(0.9, 1.1)
    return Image.fromarray(np.clip(np.asarray(ref, dtype=np.float32) * gain, 0, 255).round().astype(np.uint8))


def _hr_box(photo: np.ndarray, w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """An HR window 1-2 times the output size, so that the HR image keeps fine detail."""
    zoom = rng.uniform(1.0, 2.0)
    return _box(photo, round(w * zoom), round(h * zoom), rng)


def build_cufed_tiny(root: str | Path, seed: int = 0) -> Path:
    """Write ``train/input``, ``train/ref`` (84 pairs of 96 x 96) and ``test/CUFED5`` (6 HR images of
    120 x 88, ``NNN_0.png``, with references ``NNN_1..5.png`` of decreasing similarity) under ``root``."""
    root = Path(root)
    (root / "train" / "input").mkdir(parents=True)
    (root / "train" / "ref").mkdir(parents=True)
    (root / "test" / "CUFED5").mkdir(parents=True)
    size = (TRAIN_SIZE, TRAIN_SIZE)
    index = 0
    for p, source in enumerate(CUFED_TINY_TRAIN_PHOTOS):
        photo = _photo(source)
        rng = np.random.default_rng([seed, p, 0])
        for _ in range(TRAIN_PER_PHOTO):
            box = _hr_box(photo, *size, rng)
            _crop(photo, box, size).save(root / "train" / "input" / f"{index:03d}.png")
            level = LEVELS[int(rng.integers(3))]
            _reference(photo, box, size, *level, rng).save(root / "train" / "ref" / f"{index:03d}.png")
            index += 1

    photos = [_photo(source) for source in CUFED_TINY_TEST_PHOTOS]
    index = 0
    for p, photo in enumerate(photos):
        rng = np.random.default_rng([seed, p, 1])
        for _ in range(TEST_PER_PHOTO):
            box = _hr_box(photo, *TEST_SIZE, rng)
            folder = root / "test" / "CUFED5"
            _crop(photo, box, TEST_SIZE).save(folder / f"{index:03d}_0.png")
            for level, spec in enumerate(LEVELS, 1):
                _reference(photo, box, TEST_SIZE, *spec, rng).save(folder / f"{index:03d}_{level}.png")
            other = photos[(p + 1) % len(photos)]
            ref = _crop(other, _hr_box(other, *TEST_SIZE, rng), TEST_SIZE)
            ref.save(folder / f"{index:03d}_5.png")
            index += 1
    return root
