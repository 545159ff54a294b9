"""Panoptic segmentation (DETR panoptic): the COCO panoptic PNG (segment id = R + 256 G + 256^2 B) of each
image at its own size, its `segments_info` with category names, and a colour overlay."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from vtrain.data.coco_names import COCO_PANOPTIC_COLOURS
from vtrain.predictors.base import Predictor, Size
from vtrain.predictors.detection import detr_input
from vtrain.predictors.pictures import category_colour, enlarged, overlay, repeated


def ids_to_rgb(ids: torch.Tensor) -> np.ndarray:
    """Segment ids [H, W] -> the COCO panoptic PNG's uint8 [H, W, 3] (id = R + 256 G + 256^2 B)."""
    ids = ids.cpu().numpy().astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2 % 256], axis=-1).astype(np.uint8)


class PanopticPredictor(Predictor):
    """`task(images, mask)` through `task.postprocess` (DETR's PostProcessPanoptic: segments scored above its
    threshold, at the input image's size); writes `<stem>_panoptic.png` and the overlay `<stem>.png`."""

    pad = True

    def __init__(self, transform: Callable, names: list[str]) -> None:
        super().__init__(transform)
        self.names = names

    def prepare(self, image: Image.Image, path: Path) -> dict:
        return {"images": detr_input(self.transform, image)}

    def collate(self, samples: list[dict]) -> dict:
        batch = super().collate(samples)
        batch["processed"] = torch.tensor([list(sample["images"].shape[-2:]) for sample in samples])
        return batch

    def outputs(self, task: Any, batch: dict, sizes: list[Size]) -> list[dict]:
        images = batch["images"]
        outputs = task(images, batch["mask"])
        outputs = {key: outputs[key].float() for key in ("pred_logits", "pred_boxes", "pred_masks")}
        originals = torch.tensor([[h, w] for w, h in sizes], device=images.device)
        processed = batch["processed"].to(images.device)
        results = task.postprocess(outputs, processed, originals, tuple(images.shape[-2:]))
        records = []
        for result in results:
            segments = [
                {
                    "id": int(s["id"]),
                    "category_id": int(s["category_id"]),
                    "name": self._name(int(s["category_id"])),
                    "isthing": bool(s["isthing"]),
                    "area": int(s["area"]),
                }
                for s in result["segments_info"]
            ]
            records.append({"segments_info": segments, "_segmentation": result["segmentation"].cpu()})
        return records

    def _name(self, category: int) -> str:
        return self.names[category] if category < len(self.names) else str(category)

    def save(self, out_dir: Path, stem: str, image: Image.Image, record: dict) -> dict:
        Image.fromarray(ids_to_rgb(record["_segmentation"])).save(out_dir / f"{stem}_panoptic.png")
        files = super().save(out_dir, stem, image, record)
        return files | {"panoptic_png": f"{stem}_panoptic.png"}

    def draw(self, image: Image.Image, record: dict) -> Image.Image:
        segments = record["segments_info"]
        shown, scale = enlarged(image, 384)
        if not segments:
            return shown
        ids = repeated(record["_segmentation"], scale)
        masks = ids[None] == torch.tensor([s["id"] for s in segments])[:, None, None]
        colours = [category_colour(s["category_id"], COCO_PANOPTIC_COLOURS) for s in segments]
        return to_pil_image(overlay(pil_to_tensor(shown), masks, colours, alpha=0.6))
