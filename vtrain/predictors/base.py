"""What every predictor of `mode=predict` provides (one per task, in this package).

A predictor turns each input file into a sample (`prepare`), a batch of samples into one record per
image (`outputs`: JSON-able values; keys starting with `_` hold tensors for `save` and are not written to
predictions.json), each record into files under the predictions folder (`save`: the picture
`<stem>.png` and any per-image files), and all records into the task's summary files (`write`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vtrain.data.coco import pad_images

Size = tuple[int, int]  # (width, height) in pixels


class Predictor:
    """Defaults: images [B, 3, H, W] stacked (`pad`: zero-padded to the largest, with `mask` [B, H, W]
    True on padding), the eval transform applied to the PIL image, no summary files."""

    pad = False
    # images per forward pass when the task needs another than predict.batch_size (TTSR: 1, sizes differ)
    batch_size: int | None = None

    def __init__(self, transform: Callable | None = None) -> None:
        self.transform = transform

    def prepare(self, image: Image.Image, path: Path) -> dict[str, torch.Tensor]:
        return {"images": self.transform(image)}

    def collate(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in samples[0]:
            values = [sample[key] for sample in samples]
            if key == "images" and self.pad:
                batch["images"], batch["mask"] = pad_images(values)
            else:
                batch[key] = torch.stack(values)
        return batch

    def outputs(self, task: Any, batch: dict[str, Any], sizes: list[Size]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def save(self, out_dir: Path, stem: str, image: Image.Image, record: dict[str, Any]) -> dict[str, Any]:
        """Write `<stem>.png` (and any per-image files); the record's entries that name them."""
        self.draw(image, record).save(out_dir / f"{stem}.png")
        return {"picture": f"{stem}.png"}

    def draw(self, image: Image.Image, record: dict[str, Any]) -> Image.Image:
        raise NotImplementedError

    def write(self, out_dir: Path, records: list[dict[str, Any]]) -> None:
        """Summary files besides predictions.json (none by default)."""

    def finish(self, task: Any, out_dir: Path) -> dict[str, Any]:
        """Work done once after every image (iGPT's unconditional samples); entries for predictions.json."""
        return {}
