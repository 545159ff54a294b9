"""COCO instance segmentation for torchvision's Mask R-CNN: the detection targets of
``vtrain.data.coco.CocoDetection`` plus per-object binary masks decoded from the annotations' polygons or
RLE (pycocotools ``annToMask``; an annotation without ``segmentation`` gets its box as mask).

Samples are ``(image [3, H, W] float32 in [0, 1], target)`` at the file's resolution (the detector resizes
and normalises itself), ``target``: ``boxes`` [N, 4] xyxy pixels, ``labels`` [N] category ids, ``masks``
[N, H, W] uint8, ``image_id``, ``orig_size``, ``area``, ``iscrowd``. Batches are ``(list of images, list of
targets)``. Training flips horizontally (p 0.5), as the Mask R-CNN recipe does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from vtrain.data.coco import CocoDetection, Target, clip_boxes
from vtrain.data.detection import DetectionDataModule


def annotation_mask(coco, annotation: dict, height: int, width: int) -> np.ndarray:
    """The annotation's binary mask [H, W] uint8: its segmentation (polygons or RLE), else its box."""
    if annotation.get("segmentation"):
        return coco.annToMask(annotation).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    x, y, w, h = annotation["bbox"]
    mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = 1
    return mask


class CocoInstanceSegmentation(CocoDetection):
    """``CocoDetection`` whose targets also carry ``masks`` (see the module docstring)."""

    def target(self, image_id: int, height: int, width: int) -> Target:
        target = super().target(image_id, height, width)
        annotations = self.annotations(image_id)
        # the same boxes CocoDetection keeps: non-empty after clipping to the image
        xywh = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        keep = clip_boxes(xywh, height, width)[1].tolist()
        masks = [
            annotation_mask(self.coco, a, height, width) for a, k in zip(annotations, keep, strict=True) if k
        ]
        stacked = np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)
        target["masks"] = tv_tensors.Mask(torch.from_numpy(stacked))
        return target


def instance_transforms(train: bool, hflip: bool = True) -> v2.Compose:
    """``(PIL image, target) -> (image [3, H, W] float32 in [0, 1], target)`` with boxes as plain [N, 4]
    xyxy tensors; training adds a horizontal flip of image, boxes and masks."""
    steps = [v2.RandomHorizontalFlip(p=0.5)] if train and hflip else []
    return v2.Compose([*steps, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])


def collate_instances(batch: Sequence[tuple[torch.Tensor, dict[str, Any]] | None]):
    """-> (list of images, list of targets), unreadable (None) samples dropped."""
    kept = [sample for sample in batch if sample is not None]
    return [image for image, _ in kept], [target for _, target in kept]


class InstanceSegmentationDataModule(DetectionDataModule):
    """COCO-format instance segmentation loaders for torchvision's detectors: images at their own size in
    lists, targets with masks. Arguments as ``DetectionDataModule`` (its DETR resize arguments are not
    used here: the detector resizes) plus ``hflip``."""

    def __init__(self, root: str, hflip: bool = True, **kwargs) -> None:
        super().__init__(root, hflip=hflip, **kwargs)
        self.train_transform = instance_transforms(train=True, hflip=hflip)
        self.eval_transform = instance_transforms(train=False)
        self.collate = collate_instances

    def _load(self, split: str, train: bool) -> CocoInstanceSegmentation:
        transform = self.train_transform if train else self.eval_transform
        dataset = CocoInstanceSegmentation(
            self.root, split, transform=transform, skip_corrupt=self.skip_corrupt, format=self.format
        )
        if self.num_classes is None:
            self.num_classes = dataset.num_classes
        if dataset.num_classes != self.num_classes:
            raise ValueError(
                f"{dataset.annotation_file}: num_classes is {self.num_classes} but the largest category id "
                f"is {dataset.num_classes - 1} (num_classes = largest id + 1 = {dataset.num_classes})"
            )
        return dataset
