"""Instance segmentation (Mask R-CNN with or without FPT): boxes as in detection plus each instance's mask
as COCO RLE; the picture overlays the masks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from vtrain.predictors.base import Predictor, Size
from vtrain.predictors.detection import detection_records, write_coco_results
from vtrain.predictors.pictures import category_colour, enlarged, named_boxes, overlay, repeated

# a pixel is the instance's where its mask probability is at least this (torchvision's and COCO evaluation's)
MASK_THRESHOLD = 0.5


def rle(mask: torch.Tensor) -> dict[str, Any]:
    """A boolean mask [H, W] -> COCO RLE {"size": [H, W], "counts": str}."""
    encoded = mask_utils.encode(np.asfortranarray(mask.cpu().numpy().astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


class InstancePredictor(Predictor):
    """`task(images: list of [3, H, W] in [0, 1]) -> per image boxes, labels, scores, masks [N, 1, H, W]`
    (the detector resizes itself and answers in the input's pixels); detections scored at least
    `score_threshold` are kept, each with `segmentation` (RLE of its mask at 0.5) and `area`."""

    def __init__(self, transform: Callable, names: list[str], score_threshold: float) -> None:
        super().__init__(transform)
        self.names, self.score_threshold = names, score_threshold

    def prepare(self, image: Image.Image, path: Path) -> dict:
        return {"images": self.transform(image, {})[0]}

    def collate(self, samples: list[dict]) -> dict:
        return {"images": [sample["images"] for sample in samples]}  # the detector batches them itself

    def outputs(self, task: Any, batch: dict, sizes: list[Size]) -> list[dict]:
        records = []
        for output, size in zip(task(batch["images"]), sizes, strict=True):
            detections = detection_records(output, size, self.names, self.score_threshold)
            masks = output.get("masks")
            for detection in detections:
                if masks is not None:
                    binary = masks[detection["_index"], 0] >= MASK_THRESHOLD
                    detection["segmentation"], detection["area"] = rle(binary), int(binary.sum())
                    detection["_mask"] = binary.cpu()
            records.append({"detections": detections})
        return records

    def draw(self, image: Image.Image, record: dict) -> Image.Image:
        detections = record["detections"]
        shown, scale = enlarged(image, 384)
        picture = pil_to_tensor(shown)
        if not detections:
            return shown
        colours = [category_colour(d["category_id"]) for d in detections]
        if "_mask" in detections[0]:
            masks = repeated(torch.stack([d["_mask"] for d in detections]), scale)
            picture = overlay(picture, masks, colours)
        boxes = torch.tensor([d["box"] for d in detections]) * scale
        labels = [f"{d['name']} {d['score']:.2f}" for d in detections]
        return to_pil_image(named_boxes(picture, boxes, labels, colours))

    def write(self, out_dir: Path, records: list[dict]) -> None:
        write_coco_results(
            out_dir, records, lambda d: {"segmentation": d["segmentation"]} if "area" in d else {}
        )
