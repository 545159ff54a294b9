"""`mode=browse`: draw what the model will be trained on, before a long run.

Takes `browse.num_samples` samples of `browse.split` ("train": the training loader, augmentation and all;
"val": the evaluation preprocessing) exactly as the experiment's data module yields them, and writes one
PNG per sample under `<run dir>/browse/`, with its target drawn in the task's terms:

    classification   the image and its class name (also MAE pretraining, which reads classification data)
    detection        boxes with their category names (DETR's normalised boxes back in pixels)
    instance         boxes, names and instance masks
    panoptic         every segment's mask in its category's colour, with the box and name of each
    segmentation     the image beside its label map in the data set's palette (ignored pixels black)
    super-resolution bicubic-upsampled LR input, HR target and reference side by side
    generative       the palette-quantised image the token sequence decodes to, and its label

plus `browse.json`, one record per picture (its targets in numbers). No weights are needed. Mixup and
CutMix, which the classification task applies to whole batches, are not in the pictures.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import ImageDraw
from torch.nn import functional as F
from torchvision.ops import box_convert
from torchvision.transforms.functional import to_pil_image

from vtrain.config import fill_num_classes
from vtrain.data.detection_transforms import IMAGENET_MEAN, IMAGENET_STD
from vtrain.io import atomic_write_text
from vtrain.modes.common import data_class_names
from vtrain.predictors import KINDS
from vtrain.predictors.pictures import category_colour, enlarged, named_boxes, overlay, repeated
from vtrain.scaling import apply_batch_plan
from vtrain.tasks.segmentation import colorize

log = logging.getLogger("vtrain")

# the predictors' task kinds, and MAE, whose samples are labelled images like classification's
SAMPLE_KINDS = KINDS | {"MaskedAutoencoderTask": "classification"}


def _kind(cfg: DictConfig) -> str:
    target = str(cfg.task.get("_target_", ""))
    kind = SAMPLE_KINDS.get(target.rsplit(".", 1)[-1])
    if kind is None:
        raise ValueError(f"mode=browse does not know how to draw the samples of {target}")
    return kind


class Drawer:
    """Pictures of one task's samples: `samples(batch)` splits a collated batch into per-sample items,
    `draw(item)` makes a uint8 [3, H, W] picture and a JSON-able record of its target."""

    def __init__(self, kind: str, cfg: DictConfig, datamodule: Any) -> None:
        self.kind = kind
        mean, std = cfg.data.get("mean") or IMAGENET_MEAN, cfg.data.get("std") or IMAGENET_STD
        self.mean = torch.tensor(list(mean)).view(3, 1, 1)
        self.std = torch.tensor(list(std)).view(3, 1, 1)
        self.names = data_class_names(datamodule) or getattr(
            getattr(datamodule, "train_set", None), "classes", None
        )
        self.datamodule = datamodule
        self.image_size = cfg.data.get("image_size")

    def name(self, label: int) -> str:
        if self.names and 0 <= label < len(self.names):
            return f"{self.names[label]}"
        return str(label)

    def pixels(self, image: torch.Tensor) -> torch.Tensor:
        """A normalised image [3, H, W] -> uint8."""
        return ((image.float().cpu() * self.std + self.mean).clamp(0, 1) * 255).round().to(torch.uint8)

    def samples(self, batch: Any) -> list[Any]:
        if self.kind in ("classification", "segmentation", "generative"):
            images, targets = batch
            return list(zip(images, targets, strict=True))
        if self.kind in ("detection", "panoptic"):
            images, mask, targets = batch
            return list(zip(images, mask, targets, strict=True))
        if self.kind == "instance":
            images, targets = batch
            return list(zip(images, targets, strict=True))
        keys = [k for k, v in batch.items() if isinstance(v, torch.Tensor)]
        return [{k: batch[k][i] for k in keys} for i in range(len(batch["hr"]))]

    def draw(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        return getattr(self, "_" + self.kind.replace("-", "_"))(item)

    def _classification(self, item: tuple) -> tuple[torch.Tensor, dict]:
        image, label = item
        label = int(label)
        picture = _caption(self.pixels(image), self.name(label))
        return picture, {"label": label, "name": self.name(label), "size": list(image.shape[1:])}

    def _boxes_in_pixels(self, target: dict, height: int, width: int) -> torch.Tensor:
        boxes = box_convert(target["boxes"].float(), "cxcywh", "xyxy")  # DETR's normalised cx, cy, w, h
        return boxes * torch.tensor([width, height, width, height])

    def _detection(self, item: tuple, with_masks: bool = False) -> tuple[torch.Tensor, dict]:
        image, mask, target = item
        height, width = int((~mask).any(1).sum()), int((~mask).any(0).sum())
        picture = self.pixels(image[:, :height, :width])
        boxes = self._boxes_in_pixels(target, height, width)
        record = {"size": [height, width], "boxes_xyxy": _rounded(boxes)}
        picture, scale = enlarged(picture, 384)
        labels = [int(c) for c in target["labels"]]
        if with_masks and len(labels):
            masks = repeated(target["masks"][:, :height, :width].bool().cpu(), scale)
            picture = overlay(picture, masks, _colours(self, labels))
        names = [self.name(c) for c in labels]
        if len(labels):
            colours = _colours(self, labels)
            picture = named_boxes(picture, boxes * scale, names, colours)
        return picture, record | {"labels": labels, "names": names}

    def _panoptic(self, item: tuple) -> tuple[torch.Tensor, dict]:
        return self._detection(item, with_masks=True)

    def _instance(self, item: tuple) -> tuple[torch.Tensor, dict]:
        image, target = item
        picture, scale = enlarged((image.float().cpu().clamp(0, 1) * 255).round().to(torch.uint8), 384)
        boxes = target["boxes"].float().cpu()
        labels = [int(c) for c in target["labels"]]
        names = [self.name(c) for c in labels]
        if len(labels):
            colours = _colours(self, labels)
            if "masks" in target:
                masks = repeated(target["masks"].bool().cpu(), scale)
                picture = overlay(picture, masks, colours)
            picture = named_boxes(picture, boxes * scale, names, colours)
        record = {"size": list(image.shape[1:]), "boxes_xyxy": _rounded(boxes)}
        return picture, record | {"labels": labels, "names": names}

    def _segmentation(self, item: tuple) -> tuple[torch.Tensor, dict]:
        image, labels = item
        palette = getattr(self.datamodule, "palette", None)
        palette = _grey_palette(labels) if palette is None else torch.as_tensor(palette, dtype=torch.uint8)
        label_map = (colorize(labels.cpu(), palette) * 255).round().to(torch.uint8)
        present = sorted(int(c) for c in labels.unique() if int(c) < len(palette))
        picture = torch.cat([self.pixels(image), label_map], dim=2)
        return picture, {"size": list(image.shape[1:]), "classes": [self.name(c) for c in present]}

    def _super_resolution(self, item: dict) -> tuple[torch.Tensor, dict]:
        def pixels(x: torch.Tensor) -> torch.Tensor:  # TTSR's [-1, 1]
            return ((x.float().cpu() + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)

        hr, ref = item["hr"], item["ref"]
        bicubic = F.interpolate(item["lr"][None].float(), size=hr.shape[1:], mode="bicubic")[0]
        panels = [pixels(bicubic), pixels(hr), pixels(ref)]
        height = max(p.shape[1] for p in panels)
        picture = torch.cat([F.pad(p, (0, 0, 0, height - p.shape[1])) for p in panels], dim=2)
        sizes = {key: list(item[key].shape[1:]) for key in ("lr", "hr", "ref")}
        return picture, {"panels": ["bicubic LR", "HR", "reference"], "sizes": sizes}

    def _generative(self, item: tuple) -> tuple[torch.Tensor, dict]:
        tokens, label = item
        palette = self.datamodule.palette
        size = int(self.image_size or round(len(tokens) ** 0.5))
        image = palette.to_images(tokens[None].cpu(), size)[0]
        label = int(label)
        picture = _caption(image.to(torch.uint8), self.name(label))
        record = {"label": label, "name": self.name(label), "tokens": len(tokens), "palette": len(palette)}
        return picture, record


def _colours(drawer: Drawer, labels: list[int]) -> list[tuple[int, int, int]]:
    """One colour per category: the data set's where it has them (COCO panoptic), else a fixed hue."""
    known = getattr(getattr(drawer.datamodule, "test_set", None), "colors", None)
    return [category_colour(label, known) for label in labels]


def _rounded(boxes: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 1) for v in box] for box in boxes.tolist()]


def _grey_palette(labels: torch.Tensor) -> torch.Tensor:
    count = int(labels[labels < 255].max()) + 1 if (labels < 255).any() else 1
    return (torch.arange(count) * 255 // max(count - 1, 1)).to(torch.uint8)[:, None].expand(count, 3)


def _caption(picture: torch.Tensor, text: str) -> torch.Tensor:
    """The picture with `text` over a dark band at its top."""
    image = to_pil_image(enlarged(picture, 128)[0])  # CIFAR-sized: enlarged so that the name is readable
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width, 12), fill=(0, 0, 0))
    draw.text((2, 0), text, fill=(255, 255, 255))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def browse(cfg: DictConfig) -> None:
    """Write `browse.num_samples` pictures of `browse.split` samples to `<run dir>/browse/`."""
    cfg = copy.deepcopy(cfg)
    settings = cfg.get("browse") or {}
    split, count = str(settings.get("split", "train")), int(settings.get("num_samples", 16))
    if split not in ("train", "val"):
        raise ValueError(f"browse.split must be train or val, got {split!r}")
    kind = _kind(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    apply_batch_plan(cfg, world_size=1)
    datamodule = instantiate(cfg.data)
    fill_num_classes(cfg, datamodule)
    datamodule.prepare_data()  # builds a tiny set on first use
    datamodule.setup("fit")
    loader = datamodule.train_dataloader() if split == "train" else datamodule.val_dataloader()
    drawer = Drawer(kind, cfg, datamodule)

    out_dir = Path(cfg.paths.output_dir) / "browse"
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for batch in loader:
        for item in drawer.samples(batch):
            if len(records) == count:
                break
            picture, record = drawer.draw(item)
            name = f"{split}_{len(records):03d}.png"
            to_pil_image(picture).save(out_dir / name)
            records.append({"picture": name, **record})
        if len(records) == count:
            break
    summary = {"experiment": cfg.get("name"), "task": kind, "split": split, "samples": records}
    atomic_write_text(out_dir / "browse.json", json.dumps(summary, indent=2))
    print(f"{len(records)} {split} samples of {cfg.get('name')} drawn in {out_dir}")
