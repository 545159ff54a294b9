"""A one-image COCO-panoptic-format set written on the fly, small enough to read by eye: a stuff region,
a thing and a crowd segment of irregular shape, so that a box taken from a mask differs from the JSON's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vtrain.metrics.panoptic import id2rgb

HEIGHT, WIDTH = 12, 16
IMAGE_ID = 7
# segment id: (category id, iscrowd)
SEGMENTS = {1000: (92, 0), 2000: (1, 0), 3000: (1, 1)}
# the crowd segment: an L whose first / last columns are 9 / 14 and rows 2 / 8
CROWD_BOX = [9.0, 2.0, 14.0, 8.0]


def segment_ids() -> np.ndarray:
    """[HEIGHT, WIDTH] segment ids: stuff everywhere, a 3 x 4 thing, an L-shaped crowd region."""
    ids = np.full((HEIGHT, WIDTH), 1000, dtype=np.int64)
    ids[1:4, 1:5] = 2000
    ids[2:9, 9:11] = 3000  # the L's upright
    ids[7:9, 11:15] = 3000  # and its foot
    return ids


def write_panoptic_sample(root: Path, split: str = "val") -> Path:
    """Write the set under ``root`` (``annotations/panoptic_<split>2017.json``, its PNG, the JPEG) and
    return ``root``. The JSON's ``bbox`` and ``area`` are what panopticapi writes (pixel counts)."""
    ids = segment_ids()
    (root / "annotations" / f"panoptic_{split}2017").mkdir(parents=True, exist_ok=True)
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    Image.fromarray(id2rgb(ids)).save(root / "annotations" / f"panoptic_{split}2017" / "sample.png")
    pixels = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / f"{split}2017" / "sample.jpg")
    segments = []
    for segment_id, (category, crowd) in SEGMENTS.items():
        rows, cols = np.nonzero(ids == segment_id)
        x, y = int(cols.min()), int(rows.min())
        bbox = [x, y, int(cols.max()) - x + 1, int(rows.max()) - y + 1]
        segments.append(
            {"id": segment_id, "category_id": category, "iscrowd": crowd, "bbox": bbox, "area": len(rows)}
        )
    content = {
        "images": [{"id": IMAGE_ID, "file_name": "sample.jpg", "height": HEIGHT, "width": WIDTH}],
        "annotations": [{"image_id": IMAGE_ID, "file_name": "sample.png", "segments_info": segments}],
        "categories": [
            {"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
            {"id": 92, "name": "banner", "isthing": 0, "supercategory": "textile"},
        ],
    }
    (root / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(content))
    return root
