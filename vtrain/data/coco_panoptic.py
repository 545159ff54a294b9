"""COCO panoptic segmentation for DETR: the data set (one binary mask, box and category per segment) and
its LightningDataModule.

Layout (the official one)::

    <root>/annotations/panoptic_<split>2017.json    images, annotations (PNG name, segments_info), categories
    <root>/annotations/panoptic_<split>2017/*.png   segment ids, id = R + 256 G + 256^2 B (0: void)
    <root>/<split>2017/*.jpg

COCO has 133 categories, 80 things (ids 1 .. 90) and 53 stuff (ids 92 .. 200); labels are the category ids,
unchanged, so ``num_classes`` is at least 201 (DETR's panoptic models use 250). The box and mask AP of a
panoptic model are computed against ``<root>/annotations/instances_<split>2017.json`` when it exists.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from vtrain.data.coco import Target, check_json_image_sizes
from vtrain.data.detection import DetectionDataModule
from vtrain.data.images import ImageFileLoader, ImageSizeError, check_image_size, width_height
from vtrain.data.shards.datasets import ShardImageLoader
from vtrain.data.shards.format import SEGMENTATION_MEMBER, ShardSplit
from vtrain.metrics.panoptic import read_segmentation

PANOPTIC_LAYOUT = """expected the COCO panoptic layout:
    <root>/annotations/panoptic_<split>2017.json
    <root>/annotations/panoptic_<split>2017/*.png
    <root>/<split>2017/*.jpg
or build a tiny stand-in: python -m vtrain.data.tiny --root DIR coco_panoptic_tiny"""


class CocoPanoptic(Dataset):
    """COCO-panoptic-format split ``split`` under ``root`` (see ``PANOPTIC_LAYOUT``).

    Args:
        root: folder holding ``annotations/`` and ``<split>2017/``.
        split: "train", "val" or any other name the files use.
        transform: ``transform(image, target) -> (image, target)``, e.g. ``build_detr_transforms``: the
            masks are ``tv_tensors.Mask``, so every geometric step moves them (nearest) with the image.
        masks: put the segment masks in the targets (the mask head's second stage); False gives boxes only
            (the box model of the first stage; the official ``return_masks``, False without ``--masks``).
        skip_corrupt: an unreadable image makes the sample None instead of raising.
        format: "folders", or "shards": ``root`` is a shard directory of ``python -m vtrain.data.shards
            coco_panoptic``; images and segment PNGs come from its shards, annotations from its copies.

    As the official loader (facebookresearch/detr datasets/coco_panoptic.py:41-63 at 29901c5), every segment
    of the image is a target, crowd segments included (flagged by ``iscrowd``, which the losses do not
    read), and each box is the extent of its mask (util/box_ops.py:64-88), not the JSON's ``bbox``.

    Reading an image whose size differs from the JSON's ``width`` and ``height``, or from its segment PNG,
    raises ImageSizeError naming both.

    Segments that a transform leaves without pixels (cropped away inside a box that was kept, too thin for
    a downscale) are dropped from the transformed target (the official crop keeps them while their box
    has an area).

    A sample is ``(image, target)``, the target a dict with
        masks      ``tv_tensors.Mask`` [N, H, W] bool, one per segment (things and stuff); absent when
                   ``masks`` is False;
        boxes      ``tv_tensors.BoundingBoxes`` [N, 4] XYXY pixels: the first and the last column and row
                   of the segment's mask (``torchvision.ops.masks_to_boxes``, as the official code: one
                   pixel narrower and lower than the JSON's ``bbox``, which counts pixels);
        labels     [N] int64 category ids; ``area`` [N] float32 pixels; ``iscrowd`` [N] int64;
        image_id, orig_size, size  as in ``vtrain.data.coco.CocoDetection``.

    Attributes:
        annotation_file, segmentation_folder, image_folder: the paths read; ``ids`` image ids (sorted);
        categories: {id: name}; ``isthing`` {id: bool}; ``colors`` {id: (r, g, b)};
        num_classes: max category id + 1; ``category_names`` by label ("N/A" for unused ids).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        transform: Callable[[Image.Image, Target], tuple[Any, Target]] | None = None,
        masks: bool = True,
        skip_corrupt: bool = False,
        format: str = "folders",
    ) -> None:
        root = Path(root)
        self.shards = ShardSplit(root, ("coco_panoptic",), split) if format == "shards" else None
        self.annotation_file = root / "annotations" / f"panoptic_{split}2017.json"
        self.segmentation_folder = root / "annotations" / f"panoptic_{split}2017"
        self.image_folder = root / f"{split}2017"
        for path, what in (
            (self.annotation_file, "annotations"),
            (self.segmentation_folder, "segment PNG folder"),
            (self.image_folder, "image folder"),
        ):
            if not path.exists():
                raise FileNotFoundError(
                    f"COCO panoptic {split} {what} {path} does not exist; {PANOPTIC_LAYOUT}"
                )
        try:
            content = json.loads(self.annotation_file.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.annotation_file} is not valid JSON: {error}") from error
        for key in ("images", "annotations", "categories"):
            if not isinstance(content.get(key), list):
                raise ValueError(f"{self.annotation_file}: expected a list under the key {key!r}")
        try:
            self.images = {image["id"]: image for image in content["images"]}
            self.annotations = {a["image_id"]: a for a in content["annotations"]}
            self.categories = {
                c["id"]: c["name"] for c in sorted(content["categories"], key=lambda c: c["id"])
            }
            self.isthing = {c["id"]: bool(c["isthing"]) for c in content["categories"]}
        except KeyError as error:
            raise ValueError(
                f"{self.annotation_file}: images need 'id', annotations 'image_id', categories 'id', 'name' "
                f"and 'isthing'; missing {error}"
            ) from error
        check_json_image_sizes(self.annotation_file, content["images"])
        self.colors = {c["id"]: tuple(c.get("color", (128, 128, 128))) for c in content["categories"]}
        unknown = {s["category_id"] for a in content["annotations"] for s in a["segments_info"]} - set(
            self.categories
        )
        if unknown:
            raise ValueError(f"{self.annotation_file}: segments of undeclared categories {sorted(unknown)}")
        self.split, self.transform, self.masks = split, transform, masks
        self.ids = sorted(self.images)
        self.num_classes = max(self.categories) + 1
        self.category_names = [self.categories.get(label, "N/A") for label in range(self.num_classes)]
        self.loader = (
            ImageFileLoader(skip_corrupt)
            if self.shards is None
            else ShardImageLoader(self.shards, self.image_folder, skip_corrupt)
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, Target] | None:
        image_id = self.ids[index]
        info = self.images[image_id]
        path = self.image_folder / info["file_name"]
        image = self.loader(path)
        if image is None:
            return None
        source = f"{self.annotation_file} (image id {image_id})"
        check_image_size(path, image, info["width"], info["height"], source)
        width, height = width_height(image)
        target = self.target(image_id, height, width)
        if self.transform is None:
            return image, target
        image, target = self.transform(image, target)
        if not self.masks:
            return image, target
        # a crop can keep a segment's box but none of its pixels, a downscale can lose a thin segment
        keep = target["masks"].flatten(1).any(1)
        if not keep.all():
            per_segment = ("masks", "boxes", "labels", "area", "iscrowd")
            target = {**target, **{key: target[key][keep] for key in per_segment}}
        return image, target

    def segmentation(self, image_id: int) -> np.ndarray:
        """[H, W] int64 segment ids of image ``image_id`` (0: void)."""
        annotation = self.annotations.get(image_id)
        if annotation is None:
            raise KeyError(f"{self.annotation_file}: no annotation for image {image_id}")
        if self.shards is not None:
            index = self.shards.position(self.images[image_id]["file_name"])
            return read_segmentation(io.BytesIO(self.shards.member(index, SEGMENTATION_MEMBER)))
        return read_segmentation(self.segmentation_folder / annotation["file_name"])

    def target(self, image_id: int, height: int, width: int) -> Target:
        """The target dict of image ``image_id`` (see the class docstring) for an image of that size."""
        segments = self.annotations[image_id]["segments_info"] if image_id in self.annotations else []
        if segments:
            png = self.segmentation_folder / self.annotations[image_id]["file_name"]
            ids = torch.from_numpy(self.segmentation(image_id))
            if ids.shape != (height, width):
                raise ImageSizeError(
                    f"{png}: the segment PNG of image {image_id} is {ids.shape[1]} x {ids.shape[0]} pixels "
                    f"(width x height) but its image is {width} x {height}"
                )
            masks = ids[None] == torch.tensor([s["id"] for s in segments])[:, None, None]
            empty = [s["id"] for s, mask in zip(segments, masks, strict=True) if not mask.any()]
            if empty:
                raise ValueError(
                    f"{png}: segments {empty} of image {image_id} in {self.annotation_file} have no pixels "
                    "in the PNG (expected every segments_info id to occur in it)"
                )
        else:
            masks = torch.zeros(0, height, width, dtype=torch.bool)
        size = torch.tensor([height, width])
        target = {
            "masks": tv_tensors.Mask(masks),
            "boxes": tv_tensors.BoundingBoxes(
                masks_to_boxes(masks), format="XYXY", canvas_size=(height, width)
            ),
            "labels": torch.tensor([s["category_id"] for s in segments], dtype=torch.int64),
            "area": masks.flatten(1).sum(1).float(),
            "iscrowd": torch.tensor([s.get("iscrowd", 0) for s in segments], dtype=torch.int64),
            "image_id": image_id,
            "orig_size": size,
            "size": size.clone(),
        }
        if not self.masks:
            del target["masks"]
        return target


class PanopticDataModule(DetectionDataModule):
    """Train / val / test loaders for the COCO-panoptic-format set under ``root``: test reads ``val_split``,
    validation that split too or, with ``holdout``, a random part of the training images.

    Arguments as :class:`~vtrain.data.detection.DetectionDataModule` (DETR's augmentation moves the masks
    with the image), except that ``num_classes`` may exceed the largest category id + 1 (DETR's panoptic
    models have 250 classes for COCO's ids up to 200), and

        masks: targets with the segment masks (True: the mask head's training); False: boxes only, for the
            first stage's box model (a detection task, box AP against the instances file).

    Batches are ``(images, mask, targets)`` whose targets also hold ``masks`` [N, h, w] bool at the size of
    the transformed (unpadded) image. Every segment is a target, crowd ones included, with the box of its
    mask (see :class:`CocoPanoptic`). Box and mask AP read ``val_annotation_file`` /
    ``test_annotation_file`` (instances files) when they exist.
    """

    def __init__(self, *args: Any, masks: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.masks = masks

    def _panoptic_file(self, split: str) -> Path:
        return Path(self.root) / "annotations" / f"panoptic_{split}2017.json"

    @property
    def val_panoptic_file(self) -> Path:
        """The validation images' ``panoptic_<split>2017.json`` (for PQ, which scores the images it sees):
        the training split's with a hold-out, else the val split's."""
        return self._panoptic_file(self.train_split if self.holdout is not None else self.val_split)

    @property
    def test_panoptic_file(self) -> Path:
        """The val split's ``panoptic_<split>2017.json`` (for PQ of the test run)."""
        return self._panoptic_file(self.val_split)

    @property
    def val_dataset(self) -> CocoPanoptic:
        """A ``CocoPanoptic`` of this set (categories, ``isthing``, ``colors``; the same in every split)."""
        if self.test_set is None:
            raise RuntimeError("PanopticDataModule: call setup() first")
        return self.test_set

    def _load(self, split: str, train: bool) -> CocoPanoptic:
        transform = self.train_transform if train else self.eval_transform
        dataset = CocoPanoptic(
            self.root,
            split,
            transform=transform,
            masks=self.masks,
            skip_corrupt=self.skip_corrupt,
            format=self.format,
        )
        if self.num_classes is None:
            self.num_classes = dataset.num_classes
        if dataset.num_classes > self.num_classes:
            raise ValueError(
                f"{dataset.annotation_file}: num_classes is {self.num_classes} but the largest category id "
                f"is {dataset.num_classes - 1} (num_classes must be at least largest id + 1)"
            )
        return dataset
