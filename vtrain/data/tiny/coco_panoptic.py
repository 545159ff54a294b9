"""Tiny COCO-panoptic-format set from the coco_tiny generator: two stuff regions (crops of two real
background photos, split at a random row) with the coco_tiny things pasted on them at known places, so every
segment is exact. Also writes the things as an instances file, for box and mask AP."""

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from vtrain.data.tiny.classification import _digit_pools, _jpeg, _photo, _write
from vtrain.data.tiny.coco import (
    COCO_TINY_BACKGROUNDS,
    COCO_TINY_CATEGORIES,
    COCO_TINY_INFO,
    COCO_TINY_LICENSES,
    COCO_TINY_SIZES,
    _background,
    _digit_card,
    _free_spot,
    _photo_patch,
)
from vtrain.metrics.panoptic import id2rgb

# stuff: (category id, name, supercategory, background source), ids above the things', as COCO's are
COCO_PANOPTIC_TINY_STUFF = (
    (12, "grass", "plant", "skimage grass"),
    (13, "gravel", "ground", "skimage gravel"),
    (15, "wall-brick", "wall", "skimage brick"),
    (17, "building", "building", "sklearn china.jpg"),
)
_COLORS = {1: (220, 20, 60), 3: (0, 0, 142), 7: (250, 170, 30), 10: (119, 11, 32)}
_STUFF_COLORS = {12: (107, 142, 35), 13: (152, 251, 152), 15: (70, 70, 70), 17: (102, 102, 156)}
_DIGIT = 7


def _categories() -> list[dict]:
    things = [
        {"supercategory": sup, "color": list(_COLORS[cat]), "isthing": 1, "id": cat, "name": name}
        for cat, name, sup, _, _ in COCO_TINY_CATEGORIES
    ]
    stuff = [
        {"supercategory": sup, "color": list(_STUFF_COLORS[cat]), "isthing": 0, "id": cat, "name": name}
        for cat, name, sup, _ in COCO_PANOPTIC_TINY_STUFF
    ]
    return things + stuff


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _scene(
    photos: dict[str, np.ndarray], digits: np.ndarray, pool: np.ndarray, n_objects: int, crowd: bool, rng
) -> tuple[Image.Image, np.ndarray, list[dict]]:
    """One image, its [H, W] map of segment indices (1-based, 0 unused) and per segment ``category_id``
    and ``iscrowd``, in index order."""
    width, height = COCO_TINY_SIZES[int(rng.integers(len(COCO_TINY_SIZES)))]
    top_stuff, bottom_stuff = rng.choice(len(COCO_PANOPTIC_TINY_STUFF), 2, replace=False)
    split = int(rng.integers(round(height * 0.35), round(height * 0.65)))
    top = _background(photos[COCO_PANOPTIC_TINY_STUFF[top_stuff][3]], width, height, rng)
    bottom = _background(photos[COCO_PANOPTIC_TINY_STUFF[bottom_stuff][3]], width, height, rng)
    image = np.asarray(bottom).copy()
    image[:split] = np.asarray(top)[:split]
    image = Image.fromarray(image)
    index = np.ones((height, width), np.int64)
    index[split:] = 2
    segments = [
        {"category_id": COCO_PANOPTIC_TINY_STUFF[top_stuff][0], "iscrowd": 0},
        {"category_id": COCO_PANOPTIC_TINY_STUFF[bottom_stuff][0], "iscrowd": 0},
    ]
    taken = []
    if crowd:  # a row of 3-5 small digit cards, one crowd segment
        count, side = int(rng.integers(3, 6)), int(rng.integers(10, 15))
        dxs = np.cumsum([0] + [side + int(rng.integers(0, 2)) for _ in range(count - 1)])
        dys = rng.integers(0, 4, size=count)
        spot = _free_spot(width, height, int(dxs[-1]) + side, int(dys.max()) + side, taken, rng)
        segments.append({"category_id": _DIGIT, "iscrowd": 1})
        for dx, dy in zip(dxs, dys, strict=True):
            x, y = spot[0] + int(dx), spot[1] + int(dy)
            image.paste(_digit_card(digits[int(rng.choice(pool))], side, side, rng), (x, y))
            index[y : y + side, x : x + side] = len(segments)
        taken.append(spot)
    for _ in range(n_objects):
        cat_id, _, _, source, window = COCO_TINY_CATEGORIES[int(rng.integers(len(COCO_TINY_CATEGORIES)))]
        side, ratio = int(rng.integers(24, 65)), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = (int(np.clip(round(side * f), 24, 64)) for f in (np.sqrt(ratio), 1 / np.sqrt(ratio)))
        spot = _free_spot(width, height, w, h, taken, rng)
        if spot is None:
            continue
        if source is None:
            patch = _digit_card(digits[int(rng.choice(pool))], w, h, rng)
        else:
            patch = _photo_patch(photos[source], window, w, h, rng)
        x, y = spot[:2]
        image.paste(patch, (x, y))
        segments.append({"category_id": cat_id, "iscrowd": 0})
        index[y : y + h, x : x + w] = len(segments)
        taken.append(spot)
    return image, index, segments


def build_coco_panoptic_tiny(root: str | Path, seed: int = 0) -> Path:
    """Write ``root/annotations/panoptic_{train,val}2017.json`` with their PNG folders,
    ``root/annotations/instances_{train,val}2017.json`` (the things) and ``root/{train,val}2017/*.jpg``;
    returns root. 48 train + 16 val images; every eighth holds a crowd of digit cards."""
    root = Path(root)
    digits, train_pools, val_pools = _digit_pools()
    photos = {source: _photo(source) for source in COCO_TINY_BACKGROUNDS}
    photos |= {source: _photo(source) for _, _, _, source, _ in COCO_TINY_CATEGORIES if source}
    splits = (("train", 48, train_pools), ("val", 16, val_pools))
    seg_rng = np.random.default_rng([seed, 7])
    all_ids = seg_rng.choice(np.arange(1, 600_000), 64, replace=False)
    categories = _categories()
    annotation_id = 0
    for stream, (split, count, pools) in enumerate(splits):
        rng = np.random.default_rng([seed, 10 + stream])
        pool = np.concatenate(pools)
        image_ids, all_ids = [int(i) for i in all_ids[:count]], all_ids[count:]
        images, panoptic, instances = [], [], []
        for i, image_id in enumerate(image_ids):
            image, index, segments = _scene(photos, digits, pool, int(rng.integers(1, 5)), i % 8 == 5, rng)
            file_name = f"{image_id:012d}"
            _write(root / f"{split}2017" / f"{file_name}.jpg", _jpeg(image))
            # COCO-like segment ids: large, distinct within the image
            segment_ids = seg_rng.choice(256**3 - 1, len(segments), replace=False) + 1
            ids = np.zeros_like(index)
            segments_info = []
            for k, (segment, segment_id) in enumerate(zip(segments, segment_ids, strict=True)):
                mask = index == k + 1
                if not mask.any():
                    continue
                ids[mask] = segment_id
                bbox = _bbox(mask)
                segments_info.append(
                    {"id": int(segment_id), **segment, "bbox": bbox, "area": int(mask.sum())}
                )
                if segment["category_id"] in _COLORS:
                    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                    annotation_id += 1
                    instances.append(
                        {
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                            "area": float(mask.sum()),
                            "iscrowd": segment["iscrowd"],
                            "bbox": [float(v) for v in bbox],
                            "category_id": segment["category_id"],
                            "image_id": image_id,
                            "id": annotation_id,
                        }
                    )
            _write(root / "annotations" / f"panoptic_{split}2017" / f"{file_name}.png", _png(id2rgb(ids)))
            images.append(
                {
                    "license": 1,
                    "file_name": f"{file_name}.jpg",
                    "height": image.height,
                    "width": image.width,
                    "id": image_id,
                }
            )
            panoptic.append(
                {"image_id": image_id, "file_name": f"{file_name}.png", "segments_info": segments_info}
            )
        common = {"info": COCO_TINY_INFO, "licenses": COCO_TINY_LICENSES, "images": images}
        content = {**common, "annotations": panoptic, "categories": categories}
        _write(root / "annotations" / f"panoptic_{split}2017.json", json.dumps(content).encode())
        things = [{k: c[k] for k in ("supercategory", "id", "name")} for c in categories if c["isthing"]]
        content = {**common, "annotations": instances, "categories": things}
        _write(root / "annotations" / f"instances_{split}2017.json", json.dumps(content).encode())
    return root


def _png(color: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(color).save(buffer, format="PNG")
    return buffer.getvalue()
