"""Tiny stand-in data sets in the real on-disk formats, built from real images shipped inside the
scikit-learn and scikit-image wheels (no download), for demos, smoke training and tests.

Every builder is deterministic (the same bytes for the same seed and library versions) and takes well
under 10 s. ``build_tiny(name, root)`` builds a set only when it is missing, in a temporary folder next to
its target that is then renamed into place, so concurrent builds (DDP ranks, parallel tests) are safe.

    cifar10_tiny   <root>/cifar-10-batches-py/: CIFAR-10 python pickles, 5 x 600 train + 300 test images.
                   Classes "zero" .. "nine": an 8 x 8 scikit-learn digit scaled to 20-26 px, at a random
                   position on 32 x 32, light ink of a random colour on a dark ground, light noise.
                   Train and test use disjoint digit samples (the last 20 % of each digit class go to test).
    cifar100_tiny  <root>/cifar-100-python/: CIFAR-100 pickles, 500 train + 200 test images. Fine classes
                   "00" .. "99": two digits side by side; coarse classes "00-04" .. "95-99" (fine // 5).
    imagenet_tiny  <root>/{train,val}/<wnid>/*.JPEG and the same images in the Kaggle layout under
                   <root>/kaggle/. 10 classes, one real photo each (see IMAGENET_TINY_PHOTOS), 30 train +
                   10 val random crops per class at 80 x 80; labels are ImageNet-1k indices.
    coco_tiny      <root>/annotations/instances_{train,val}2017.json and <root>/{train,val}2017/*.jpg: COCO
                   detection, 48 train + 16 val images of 160 x 128, 128 x 160 or 144 x 128 px. Backgrounds
                   are crops of real photos (grass, gravel, brick, the Summer Palace); on them 1-4 objects of
                   24-64 px at known places, 2 px apart, so the boxes are exact. Categories (ids with gaps,
                   as COCO's): 1 cat (Chelsea's face), 3 astronaut, 7 digit (a scikit-learn digit on a
                   yellow card), 10 coffee cup. Every eighth image also has a row of small digit cards
                   annotated as one iscrowd = 1 region with an RLE mask; the last train image has no object.

Command line: ``python -m vtrain.data.tiny --root DIR [names...]`` builds each set into ``DIR/<name>``.
"""

import argparse
import csv
import io
import json
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vtrain.data.imagenet import IMAGENET_WNIDS

log = logging.getLogger(__name__)

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# Digit images for the CIFAR stand-ins ---------------------------------------------------------------


def _digit_pools() -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The 1797 scikit-learn digits ``[N, 8, 8]`` in [0, 1], and per digit class the indices of its train
    and test samples (test = the last 20 % of the class, so the two never share a sample)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, test = [], []
    for digit in range(10):
        indices = np.flatnonzero(digits.target == digit)
        n_test = len(indices) // 5
        train.append(indices[:-n_test])
        test.append(indices[-n_test:])
    return digits.images / 16.0, train, test


def _cycle(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws from pool that use every element before reusing any."""
    return np.resize(rng.permutation(pool), n)


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A light foreground and a dark background RGB colour (luma >= 150 and <= 90 of 255): random hues,
    but always light ink on a dark ground, so that a small model learns the set in a few CPU minutes."""
    luma = np.array([0.299, 0.587, 0.114])
    while True:
        foreground, background = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
        if luma @ foreground >= 150 and luma @ background <= 90:
            return foreground, background


def _scaled(digit: np.ndarray, size: int) -> np.ndarray:
    """An 8 x 8 digit in [0, 1] scaled to size x size with bicubic interpolation, in [0, 1]."""
    image = Image.fromarray(np.rint(digit * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0


def _paint(alpha: np.ndarray, rng: np.random.Generator, noise_std: float = 4.0) -> np.ndarray:
    """A 32 x 32 RGB uint8 image: ``alpha`` (a [32, 32] ink mask) in one colour on another, plus noise."""
    foreground, background = _contrasting_colours(rng)
    image = background + alpha[..., None] * (foreground - background)
    image += rng.normal(0.0, noise_std, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _one_digit(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = int(rng.integers(20, 27))
    y, x = rng.integers(0, 32 - size + 1, size=2)
    alpha = np.zeros((32, 32), np.float32)
    alpha[y : y + size, x : x + size] = _scaled(digit, size)
    return _paint(alpha, rng)


def _two_digits(tens: np.ndarray, units: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size, gap = int(rng.integers(12, 16)), int(rng.integers(0, 3))
    y = int(rng.integers(0, 32 - size + 1))
    x = int(rng.integers(0, 32 - (2 * size + gap) + 1))
    alpha = np.zeros((32, 32), np.float32)
    alpha[y : y + size, x : x + size] = _scaled(tens, size)
    alpha[y : y + size, x + size + gap : x + 2 * size + gap] = _scaled(units, size)
    return _paint(alpha, rng)


def _cifar_rows(images: list[np.ndarray]) -> np.ndarray:
    """HWC images -> CIFAR rows ``[N, 3072]`` uint8 (channel-major, as in the official batches)."""
    return np.stack(images).transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _write_pickle(path: Path, content: dict) -> None:
    # Bytes keys, like the official Python 2 batches read with pickle.load(encoding="bytes"). Protocol 4
    # rather than their 2: Python 3 writes protocol-2 bytes as latin-1 text, 1.5x larger.
    with path.open("wb") as f:
        pickle.dump(content, f, protocol=4)


def _cifar_batch(label: str, rows: np.ndarray, labels: dict[bytes, list[int]], names: list[str]) -> dict:
    return {
        b"batch_label": label.encode(),
        **labels,
        b"data": rows,
        b"filenames": [name.encode() for name in names],
    }


def build_cifar10_tiny(root: str | Path, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` (see the module docstring); returns that folder."""
    images, train_pools, test_pools = _digit_pools()
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per_batch, n_batches = 600, 5
    for split, pools, per_class in (("train", train_pools, 300), ("test", test_pools, 30)):
        picks = [(label, int(i)) for label in range(10) for i in _cycle(pools[label], per_class, rng)]
        picks = [picks[j] for j in rng.permutation(len(picks))]
        rows = _cifar_rows([_one_digit(images[i], rng) for _, i in picks])
        labels = [label for label, _ in picks]
        # The file name keeps the index of the scikit-learn digit, which shows train and test are disjoint.
        names = [f"{DIGIT_NAMES[label]}_digits{i:04d}_{n:05d}.png" for n, (label, i) in enumerate(picks)]
        if split == "test":
            batch = _cifar_batch("testing batch 1 of 1", rows, {b"labels": labels}, names)
            _write_pickle(folder / "test_batch", batch)
            continue
        for b in range(n_batches):
            part = slice(b * per_batch, (b + 1) * per_batch)
            batch = _cifar_batch(
                f"training batch {b + 1} of {n_batches}", rows[part], {b"labels": labels[part]}, names[part]
            )
            _write_pickle(folder / f"data_batch_{b + 1}", batch)
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [name.encode() for name in DIGIT_NAMES],
        b"num_vis": 3072,
    }
    _write_pickle(folder / "batches.meta", meta)
    return folder


def build_cifar100_tiny(root: str | Path, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python`` (see the module docstring); returns that folder."""
    images, train_pools, test_pools = _digit_pools()
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    fine_names = [f"{fine:02d}" for fine in range(100)]
    coarse_names = [f"{5 * c:02d}-{5 * c + 4:02d}" for c in range(20)]
    for split, pools, per_class in (("train", train_pools, 5), ("test", test_pools, 2)):
        picks = [
            (fine, int(rng.choice(pools[fine // 10])), int(rng.choice(pools[fine % 10])))
            for fine in range(100)
            for _ in range(per_class)
        ]
        picks = [picks[j] for j in rng.permutation(len(picks))]
        rows = _cifar_rows([_two_digits(images[i], images[j], rng) for _, i, j in picks])
        fine = [f for f, _, _ in picks]
        labels = {b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine]}
        names = [f"{fine_names[f]}_digits{i:04d}-{j:04d}_{n:05d}.png" for n, (f, i, j) in enumerate(picks)]
        batch_label = "training batch 1 of 1" if split == "train" else "testing batch 1 of 1"
        _write_pickle(folder / split, _cifar_batch(batch_label, rows, labels, names))
    meta = {
        b"fine_label_names": [name.encode() for name in fine_names],
        b"coarse_label_names": [name.encode() for name in coarse_names],
    }
    _write_pickle(folder / "meta", meta)
    return folder


# Photo crops for the ImageNet stand-in -------------------------------------------------------------

# (wnid, ImageNet-1k class name, source photo): each class is one real photo from a wheel.
IMAGENET_TINY_PHOTOS = (
    ("n02123045", "tabby, tabby cat", "skimage chelsea"),
    ("n02389026", "sorrel", "skimage horse"),  # a binary horse silhouette
    ("n03785016", "moped", "skimage motorcycle"),
    ("n03877845", "palace", "sklearn china.jpg"),  # the Summer Palace
    ("n04266014", "space shuttle", "skimage rocket"),
    ("n04326547", "stone wall", "skimage brick"),
    ("n04350905", "suit, suit of clothes", "skimage astronaut"),
    ("n04485082", "tripod", "skimage camera"),
    ("n07920052", "espresso", "skimage coffee"),
    ("n11939491", "daisy", "sklearn flower.jpg"),
)


def _photo(source: str) -> np.ndarray:
    """A photo from the scikit-learn / scikit-image wheels as ``[H, W, 3]`` uint8 RGB."""
    package, name = source.split()
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        image = load_sample_image(name)
    else:
        import skimage.data

        image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def _random_crops(photo: np.ndarray, n: int, size: int, rng: np.random.Generator) -> Iterator[Image.Image]:
    """n crops covering 25-100 % of the photo's area, aspect ratio 3/4-4/3, maybe flipped, resized to size."""
    height, width = photo.shape[:2]
    for _ in range(n):
        area = rng.uniform(0.25, 1.0) * height * width
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        h = min(height, round(np.sqrt(area / ratio)))
        w = min(width, round(np.sqrt(area * ratio)))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = Image.fromarray(photo[top : top + h, left : left + w])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield crop.resize((size, size), Image.BICUBIC)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def build_imagenet_tiny(root: str | Path, seed: int = 0) -> Path:
    """Write the folder layout under ``root`` and the Kaggle layout under ``root/kaggle``; returns root.

    30 train and 10 val images per class; train and val crops come from separate random streams.
    The Kaggle PredictionString holds the wnid and the whole image as its box (the photo has no boxes).
    """
    root = Path(root)
    kaggle, size, per_class = root / "kaggle", 80, (30, 10)
    kaggle_data = kaggle / "ILSVRC" / "Data" / "CLS-LOC"
    val_images = []
    for c, (wnid, _, source) in enumerate(IMAGENET_TINY_PHOTOS):
        photo = _photo(source)
        train_crops = _random_crops(photo, per_class[0], size, np.random.default_rng([seed, c, 0]))
        for i, crop in enumerate(train_crops):
            content = _jpeg(crop)
            _write(root / "train" / wnid / f"{wnid}_{i}.JPEG", content)
            _write(kaggle_data / "train" / wnid / f"{wnid}_{i}.JPEG", content)
        val_crops = _random_crops(photo, per_class[1], size, np.random.default_rng([seed, c, 1]))
        val_images += [(wnid, _jpeg(crop)) for crop in val_crops]

    # Validation ids are shuffled across classes, as in ILSVRC-2012, so a file name does not give the class.
    ids = np.random.default_rng([seed, len(IMAGENET_TINY_PHOTOS)]).permutation(len(val_images)) + 1
    solution = []
    named = sorted(zip((f"ILSVRC2012_val_{i:08d}" for i in ids), val_images, strict=True))
    for image_id, (wnid, content) in named:
        _write(root / "val" / wnid / f"{image_id}.JPEG", content)
        _write(kaggle_data / "val" / f"{image_id}.JPEG", content)
        solution.append((image_id, f"{wnid} 0 0 {size - 1} {size - 1}"))
    with (kaggle / "LOC_val_solution.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("ImageId", "PredictionString"))
        writer.writerows(solution)
    # All 1000 wnids, so the line number is the class index as in the real file; names only for ours.
    names = {wnid: name for wnid, name, _ in IMAGENET_TINY_PHOTOS}
    mapping = "".join(f"{wnid} {names[wnid]}\n" if wnid in names else f"{wnid}\n" for wnid in IMAGENET_WNIDS)
    (kaggle / "LOC_synset_mapping.txt").write_text(mapping)
    return root


# COCO-format detection stand-in --------------------------------------------------------------------

# (category id, name, supercategory, source photo, window (left, top, right, bottom) around the object in
# it). The ids have gaps, as COCO's do; "digit" is a scikit-learn digit in navy ink on a yellow card.
COCO_TINY_CATEGORIES = (
    (1, "cat", "animal", "skimage chelsea", (60, 10, 400, 290)),
    (3, "astronaut", "person", "skimage astronaut", (100, 0, 380, 330)),
    (7, "digit", "symbol", None, None),
    (10, "coffee cup", "kitchen", "skimage coffee", (160, 10, 430, 320)),
)
COCO_TINY_BACKGROUNDS = ("skimage grass", "skimage gravel", "skimage brick", "sklearn china.jpg")
COCO_TINY_SIZES = ((160, 128), (128, 160), (144, 128))  # (width, height)
_DIGIT = 7
COCO_TINY_INFO = {
    "description": "vtrain coco_tiny: scikit-image photo crops and scikit-learn digits on photo crops",
    "url": "",
    "version": "1.0",
    "year": 2020,
    "contributor": "vtrain",
    "date_created": "2020/01/01",
}
COCO_TINY_LICENSES = [
    {
        "url": "https://scikit-image.org/docs/stable/api/skimage.data.html",
        "id": 1,
        "name": "scikit-image sample data (public domain / CC0)",
    },
    {
        "url": "https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_sample_image.html",
        "id": 2,
        "name": "scikit-learn sample images (CC BY)",
    },
]


def _background(photo: np.ndarray, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A random crop of the photo, 1-2.5 times the image size, resized to it, in a random muted tint."""
    scale = rng.uniform(1.0, 2.5)
    w = min(photo.shape[1], round(width * scale))
    h = min(photo.shape[0], round(height * scale))
    top, left = int(rng.integers(0, photo.shape[0] - h + 1)), int(rng.integers(0, photo.shape[1] - w + 1))
    crop = Image.fromarray(photo[top : top + h, left : left + w]).resize((width, height), Image.BICUBIC)
    tinted = np.asarray(crop, dtype=np.float32) * rng.uniform(0.6, 1.0, size=3)
    return Image.fromarray(np.rint(tinted).astype(np.uint8))


def _photo_patch(
    photo: np.ndarray, window: tuple[int, int, int, int], width: int, height: int, rng: np.random.Generator
) -> Image.Image:
    """The object's window of the photo, each side moved by up to 8 %, maybe flipped, resized to the box."""
    left, top, right, bottom = window
    jitter = rng.uniform(-0.08, 0.08, size=4) * np.array([right - left, bottom - top] * 2)
    left, top, right, bottom = np.rint(np.array(window) + jitter).astype(int)
    left, top = max(left, 0), max(top, 0)
    crop = Image.fromarray(photo[top : min(bottom, photo.shape[0]), left : min(right, photo.shape[1])])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.resize((width, height), Image.BICUBIC)


def _digit_card(digit: np.ndarray, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """An 8 x 8 digit scaled to width x height: navy ink on a yellow card, colours varied slightly."""
    alpha = Image.fromarray(np.rint(digit * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    alpha = np.asarray(alpha, dtype=np.float32)[..., None] / 255.0
    card = np.array([245, 215, 40]) + rng.integers(-10, 11, size=3)
    ink = np.array([25, 30, 120]) + rng.integers(-10, 11, size=3)
    return Image.fromarray(np.rint(card + alpha * (ink - card)).astype(np.uint8))


def _free_spot(
    width: int, height: int, box_w: int, box_h: int, taken: list[list[int]], rng: np.random.Generator
) -> list[int] | None:
    """A random [x, y, w, h] of that size inside the image, 2 px clear of the taken boxes; None if 100
    tries find none."""
    for _ in range(100):
        x, y = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
        if all(
            x + box_w + 2 <= tx or tx + tw + 2 <= x or y + box_h + 2 <= ty or ty + th + 2 <= y
            for tx, ty, tw, th in taken
        ):
            return [x, y, box_w, box_h]
    return None


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a [H, W] bool mask: run lengths of the column-major pixels, 0s first."""
    flat = mask.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"counts": [0, *counts] if flat[0] else counts, "size": list(mask.shape)}


def _crowd(
    image: Image.Image, digits: np.ndarray, pool: np.ndarray, rng: np.random.Generator
) -> tuple[list[int], dict, int]:
    """Paste a row of 3-5 small digit cards (at most 74 x 17 px) somewhere in the empty image; returns the
    crowd annotation's bbox [x, y, w, h], uncompressed RLE and area (pixels of the cards)."""
    count, side = int(rng.integers(3, 6)), int(rng.integers(10, 15))
    dxs = np.cumsum([0] + [side + int(rng.integers(0, 2)) for _ in range(count - 1)])
    dys = rng.integers(0, 4, size=count)
    x0, y0, _, _ = _free_spot(image.width, image.height, int(dxs[-1]) + side, int(dys.max()) + side, [], rng)
    mask = np.zeros((image.height, image.width), bool)
    for dx, dy in zip(dxs, dys, strict=True):
        x, y = x0 + int(dx), y0 + int(dy)
        image.paste(_digit_card(digits[int(rng.choice(pool))], side, side, rng), (x, y))
        mask[y : y + side, x : x + side] = True
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return bbox, _uncompressed_rle(mask), int(mask.sum())


def _annotation(
    category_id: int, bbox: list[int], segmentation: list | dict, area: int, iscrowd: int
) -> dict:
    """An annotation with the official files' number types (floats for bbox and area), less its ids."""
    return {
        "segmentation": segmentation,
        "area": float(area),
        "iscrowd": iscrowd,
        "bbox": [float(v) for v in bbox],
        "category_id": category_id,
    }


def _coco_tiny_scene(
    photos: dict[str, np.ndarray],
    digits: np.ndarray,
    digit_pool: np.ndarray,
    n_objects: int,
    crowd: bool,
    rng: np.random.Generator,
) -> tuple[Image.Image, str, list[dict]]:
    """One image: a background crop, maybe a crowd of digits, then up to n_objects objects of 24-64 px
    pasted 2 px apart. Returns the image, its background's source and the annotations, less their ids."""
    width, height = COCO_TINY_SIZES[int(rng.integers(len(COCO_TINY_SIZES)))]
    background = COCO_TINY_BACKGROUNDS[int(rng.integers(len(COCO_TINY_BACKGROUNDS)))]
    image = _background(photos[background], width, height, rng)
    annotations = []
    if crowd:
        bbox, rle, area = _crowd(image, digits, digit_pool, rng)
        annotations.append(_annotation(_DIGIT, bbox, rle, area, iscrowd=1))
    for _ in range(n_objects):
        cat_id, _, _, source, window = COCO_TINY_CATEGORIES[int(rng.integers(len(COCO_TINY_CATEGORIES)))]
        side, ratio = int(rng.integers(24, 65)), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = (int(np.clip(round(side * f), 24, 64)) for f in (np.sqrt(ratio), 1 / np.sqrt(ratio)))
        spot = _free_spot(width, height, w, h, [a["bbox"] for a in annotations], rng)
        if spot is None:
            continue
        if source is None:
            patch = _digit_card(digits[int(rng.choice(digit_pool))], w, h, rng)
        else:
            patch = _photo_patch(photos[source], window, w, h, rng)
        x, y = spot[:2]
        image.paste(patch, (x, y))
        polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
        annotations.append(_annotation(cat_id, spot, [[float(v) for v in polygon]], w * h, iscrowd=0))
    return image, background, annotations


def build_coco_tiny(root: str | Path, seed: int = 0) -> Path:
    """Write ``root/annotations/instances_{train,val}2017.json`` and ``root/{train,val}2017/*.jpg`` (see the
    module docstring); returns root."""
    root = Path(root)
    digits, train_pools, val_pools = _digit_pools()
    photos = {source: _photo(source) for source in COCO_TINY_BACKGROUNDS}
    photos |= {source: _photo(source) for _, _, _, source, _ in COCO_TINY_CATEGORIES if source}
    splits = (("train", 48, train_pools), ("val", 16, val_pools))
    # COCO-like image ids: distinct, unordered, unique over both splits; so are the annotation ids.
    all_ids = np.random.default_rng([seed, len(splits)]).choice(np.arange(1, 600_000), 64, replace=False)
    annotation_id = 0
    for stream, (split, count, pools) in enumerate(splits):
        rng = np.random.default_rng([seed, stream])
        digit_pool = np.concatenate(pools)
        image_ids, all_ids = [int(i) for i in all_ids[:count]], all_ids[count:]
        images, annotations = [], []
        for i, image_id in enumerate(image_ids):
            # The last training image shows background only; every eighth image holds a crowd of digits.
            n_objects = 0 if (split == "train" and i == count - 1) else int(rng.integers(1, 5))
            image, background, objects = _coco_tiny_scene(
                photos, digits, digit_pool, n_objects, i % 8 == 5, rng
            )
            file_name = f"{image_id:012d}.jpg"
            _write(root / f"{split}2017" / file_name, _jpeg(image))
            images.append(
                {
                    "license": 2 if background.startswith("sklearn") else 1,
                    "file_name": file_name,
                    "coco_url": "",
                    "height": image.height,
                    "width": image.width,
                    "date_captured": "2020-01-01 00:00:00",
                    "flickr_url": "",
                    "id": image_id,
                }
            )
            for annotation in objects:
                annotation_id += 1
                annotations.append({**annotation, "image_id": image_id, "id": annotation_id})
        content = {
            "info": COCO_TINY_INFO,
            "licenses": COCO_TINY_LICENSES,
            "images": images,
            "annotations": annotations,
            "categories": [
                {"supercategory": supercategory, "id": cat_id, "name": name}
                for cat_id, name, supercategory, _, _ in COCO_TINY_CATEGORIES
            ],
        }
        _write(root / "annotations" / f"instances_{split}2017.json", json.dumps(content).encode())
    return root


# Registry and atomic build -------------------------------------------------------------------------


@dataclass(frozen=True)
class TinySet:
    """A tiny set: its builder ``build(staging_root, seed) -> built folder`` and the folder it occupies
    under a data set root ("" = the root itself)."""

    build: Callable[[Path, int], Path]
    folder: str


TINY_SETS: dict[str, TinySet] = {
    "cifar10_tiny": TinySet(build_cifar10_tiny, "cifar-10-batches-py"),
    "cifar100_tiny": TinySet(build_cifar100_tiny, "cifar-100-python"),
    "imagenet_tiny": TinySet(build_imagenet_tiny, ""),
    "coco_tiny": TinySet(build_coco_tiny, ""),
}


def _present(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def build_tiny(name: str, root: str | Path, seed: int = 0) -> Path:
    """Build tiny set ``name`` so that ``root`` is a data set root for its loader; returns the folder it
    occupies (``root/cifar-10-batches-py`` for cifar10_tiny, ``root`` itself for imagenet_tiny).

    Nothing is built when that folder already exists and is not empty. Otherwise the set is built in a
    temporary folder beside it and renamed into place: a rename onto a non-empty folder fails, so when two
    processes race, the first one's set stays and the other's is discarded.
    """
    if name not in TINY_SETS:
        raise ValueError(f"unknown tiny data set {name!r}; expected one of {sorted(TINY_SETS)}")
    spec = TINY_SETS[name]
    target = Path(root) / spec.folder
    if _present(target):
        log.debug("%s: %s already exists, not building", name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        built = spec.build(staging, seed)
        try:
            os.rename(built, target)
        except OSError:
            if not _present(target):
                raise
            log.info("%s: %s was built by another process meanwhile", name, target)
        else:
            log.info("%s: built %s", name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vtrain.data.tiny", description="Build the tiny stand-in data sets (if missing)."
    )
    parser.add_argument("--root", required=True, type=Path, help="each set is built into ROOT/<name>")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(sorted(TINY_SETS))} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(TINY_SETS))
    if unknown:
        parser.error(f"unknown tiny data sets {unknown}; expected any of {sorted(TINY_SETS)}")
    for name in args.names or sorted(TINY_SETS):
        build_tiny(name, args.root / name, seed=args.seed)
        print(f"{name}: {args.root / name}")


if __name__ == "__main__":
    main()
