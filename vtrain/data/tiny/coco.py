"""Tiny COCO-format detection set: real photo crops and digit cards pasted at known places on crops of
real backgrounds, so that every box is exact."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vtrain.data.tiny.classification import _digit_pools, _jpeg, _photo, _write

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
