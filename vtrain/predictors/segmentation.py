"""Semantic segmentation (Cityscapes, FPN / FPT heads): label PNGs in train ids and in Cityscapes label ids
at the input's size, and the image blended with the Cityscapes colours."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.transforms.functional import pil_to_tensor

from vtrain.data.cityscapes import CITYSCAPES_CLASSES
from vtrain.predictors.base import Predictor, Size

LABEL_IDS = np.array([label_id for _, label_id, _ in CITYSCAPES_CLASSES], dtype=np.uint8)
PALETTE = np.array([colour for _, _, colour in CITYSCAPES_CLASSES], dtype=np.uint8)


class SegmentationPredictor(Predictor):
    """`task.predict_logits(images)` (whole image, or sliding windows where the task uses them) at the eval
    scale, upsampled bilinearly to the input's size, arg-maxed: `<stem>_trainids.png` (0 .. 18),
    `<stem>_labelids.png` (the ids Cityscapes' own evaluation reads) and `<stem>.png` (colours over the
    image). The record gives each class's share of the pixels."""

    batch_size = 1  # inputs of different sizes

    def __init__(self, transform: Callable, names: list[str]) -> None:
        super().__init__(transform)
        self.names = names

    def prepare(self, image: Image.Image, path: Path) -> dict:
        pixels = pil_to_tensor(image)
        return {"images": self.transform(pixels, torch.zeros(pixels.shape[1:], dtype=torch.int64))[0]}

    def outputs(self, task: Any, batch: dict, sizes: list[Size]) -> list[dict]:
        logits = task.predict_logits(batch["images"]).float()
        records = []
        for image_logits, (width, height) in zip(logits, sizes, strict=True):
            image_logits = F.interpolate(
                image_logits[None], (height, width), mode="bilinear", align_corners=False
            )
            train_ids = image_logits[0].argmax(0).cpu()
            counts = torch.bincount(train_ids.flatten(), minlength=len(self.names))
            shares = {
                self.names[c]: round(float(n) / train_ids.numel(), 6)
                for c, n in enumerate(counts.tolist())
                if n
            }
            records.append({"classes": shares, "_train_ids": train_ids.numpy().astype(np.uint8)})
        return records

    def save(self, out_dir: Path, stem: str, image: Image.Image, record: dict) -> dict:
        train_ids = record["_train_ids"]
        Image.fromarray(train_ids).save(out_dir / f"{stem}_trainids.png")
        Image.fromarray(LABEL_IDS[train_ids]).save(out_dir / f"{stem}_labelids.png")
        files = super().save(out_dir, stem, image, record)
        return files | {"train_ids_png": f"{stem}_trainids.png", "label_ids_png": f"{stem}_labelids.png"}

    def draw(self, image: Image.Image, record: dict) -> Image.Image:
        colours = Image.fromarray(PALETTE[record["_train_ids"]])
        return Image.blend(image.convert("RGB"), colours, alpha=0.5)
