"""COCO object detection (instances annotations) for DETR: the data set, and the batching of differently
sized images into one zero-padded tensor with a padding mask (DETR's NestedTensor).

Labels are the category ids of the annotation file, unchanged: COCO's ids run 1 .. 90 with gaps, so a model
has ``num_classes = max id + 1 = 91`` outputs (plus DETR's "no object"). Any COCO-format set works the same
way; its ``num_classes`` and ``category_names`` come from its annotation file.

    dataset = CocoDetection(root, "val", transform=build_detr_transforms(train=False))
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_detection)
    images, mask, targets = next(iter(loader))  # [B, 3, H, W], [B, H, W] True on padding, list of dicts
"""

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors

from vtrain.data.counts import BOXES_DROPPED_DEGENERATE, BOXES_DROPPED_OFF_IMAGE, ScanCounts, log_left_out
from vtrain.data.images import CorruptImageError, ImageFileLoader, check_image_size, width_height
from vtrain.data.shards.datasets import ShardImageLoader
from vtrain.data.shards.format import ShardSplit

COCO_LAYOUT = """expected the COCO layout:
    <root>/annotations/instances_<split>2017.json
    <root>/<split>2017/*.jpg
or build a tiny stand-in: python -m vtrain.data.tiny --root DIR coco_tiny (then root=DIR/coco_tiny)"""

Target = dict[str, Any]


# What the loader reads from each entry of the three lists of an instances file.
_REQUIRED_FIELDS = {
    "images": ("id", "file_name"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def _is_xywh(bbox: Any) -> bool:
    return (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
    )


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_json_image_sizes(path: Path, images: list[dict]) -> None:
    """Raise ValueError naming ``path`` unless every entry of its ``images`` has a positive integer
    ``width`` and ``height``, which each image file is checked against when it is read."""
    for image in images:
        if not (_is_size(image.get("width")) and _is_size(image.get("height"))):
            raise ValueError(
                f"{path}: image {image['id']!r} needs a positive integer 'width' and 'height' (the size of "
                f"its file, which is checked against them), found {image.get('width')!r} and "
                f"{image.get('height')!r}"
            )


def load_coco(annotation_file: str | Path) -> COCO:
    """A pycocotools index of a COCO instances file, after checking what the loader relies on.

    Raises ValueError naming the file for invalid JSON, a missing or empty top-level list, an entry without
    the fields the loader reads, an annotation whose bbox is not [x, y, w, h] or whose image / category
    id is not declared in the file, or an image without a positive integer width and height.
    """
    path = Path(annotation_file)
    try:
        with path.open() as f:
            content = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, found {type(content).__name__}")
    for key, fields in _REQUIRED_FIELDS.items():
        entries = content.get(key)
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a list under the key {key!r}, found {entries!r:.80}")
        for entry in entries:
            if not isinstance(entry, dict) or any(field not in entry for field in fields):
                raise ValueError(
                    f"{path}: every entry of {key!r} needs the keys {fields}, found {entry!r:.120}"
                )
    if not content["categories"]:
        raise ValueError(f"{path}: the 'categories' list is empty")
    image_ids = {image["id"] for image in content["images"]}
    category_ids = {category["id"] for category in content["categories"]}
    for annotation in content["annotations"]:
        problem = None
        if not _is_xywh(annotation["bbox"]):
            problem = f"bbox must be [x, y, w, h], found {annotation['bbox']!r}"
        elif annotation["image_id"] not in image_ids:
            problem = f"image_id {annotation['image_id']!r} is not in 'images'"
        elif annotation["category_id"] not in category_ids:
            problem = (
                f"category_id {annotation['category_id']!r} is not in 'categories' {sorted(category_ids)}"
            )
        if problem:
            raise ValueError(f"{path}: annotation {annotation['id']!r}: {problem}")
    check_json_image_sizes(path, content["images"])
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """COCO-format detection split ``split`` under ``root`` (see ``COCO_LAYOUT``).

    Args:
        root: folder holding ``annotations/`` and ``<split>2017/``.
        split: "train", "val" or any other name the files use.
        transform: called as ``transform(image, target)`` and returning both, e.g.
            ``vtrain.data.detection_transforms.build_detr_transforms``.
        train: DETR's targets: crowd annotations (iscrowd = 1) left out, as DETR does for training and for
            its validation loss. False keeps them, flagged by ``iscrowd``, for metrics that ignore them.
        skip_corrupt: an unreadable image makes the sample None (``collate_detection`` drops it,
            ``self.loader.skipped`` counts it) instead of raising an error that names the file.
        format: "folders", or "shards": ``root`` is a shard directory of ``python -m vtrain.data.shards
            coco``, whose images are read from its shards (annotations from its copy of the files).

    A sample is ``(image, target)``: the RGB PIL image (before ``transform``) and a dict with
        boxes      ``tv_tensors.BoundingBoxes`` [N, 4] float32, XYXY in pixels of the image, clipped to it;
                   annotations whose box has no area after clipping are left out, counted in
                   ``scan_counts`` as degenerate (width or height <= 0) or off the image, and logged.
        labels     [N] int64 category ids.
        area       [N] float32, the annotation's ``area`` (of its segmentation) in original pixels.
        iscrowd    [N] int64.
        image_id   int, the COCO image id.
        orig_size  [2] int64 (h, w) of the image file; ``size`` the same until a transform changes it.
    Images without annotations are kept, with N = 0. Reading an image whose size differs from the file's
    ``width`` and ``height`` raises ImageSizeError naming both (its boxes and masks would be misplaced).

    Attributes:
        coco: the pycocotools index, ``ids`` the image ids in sample order (sorted),
        categories: {category id: name}; ``category_names`` the names by label ("N/A" for unused ids);
        num_classes: max category id + 1; ``annotation_file`` and ``image_folder`` the paths read;
        scan_counts: the annotations left out of the targets (see ``vtrain.data.counts``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[Image.Image, Target], tuple[Any, Target]] | None = None,
        train: bool = True,
        skip_corrupt: bool = False,
        format: str = "folders",
    ) -> None:
        root = Path(root)
        shards = ShardSplit(root, ("coco",), split) if format == "shards" else None
        self.annotation_file = root / "annotations" / f"instances_{split}2017.json"
        self.image_folder = root / f"{split}2017"
        if not self.annotation_file.is_file():
            raise FileNotFoundError(
                f"COCO {split} annotations {self.annotation_file} do not exist; {COCO_LAYOUT}"
            )
        if not self.image_folder.is_dir():
            raise FileNotFoundError(
                f"COCO {split} images: {self.image_folder} is not a directory; {COCO_LAYOUT}"
            )
        self.split, self.transform, self.train = split, transform, train
        self.coco = load_coco(self.annotation_file)
        self.ids: list[int] = sorted(self.coco.imgs)
        self.categories: dict[int, str] = {
            cat_id: cat["name"] for cat_id, cat in sorted(self.coco.cats.items())
        }
        self.num_classes = max(self.categories) + 1
        self.category_names = [self.categories.get(label, "N/A") for label in range(self.num_classes)]
        self.loader = (
            ImageFileLoader(skip_corrupt)
            if shards is None
            else ShardImageLoader(shards, self.image_folder, skip_corrupt)
        )
        self.scan_counts = self._count_dropped_boxes()

    def _count_dropped_boxes(self) -> ScanCounts:
        """The annotations that ``target`` leaves out, found once from the file's image sizes (which every
        image read is checked against), and logged."""
        annotations = [a for image_id in self.ids for a in self.annotations(image_id)]
        xywh = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        images = [self.coco.imgs[a["image_id"]] for a in annotations]
        heights = torch.tensor([image["height"] for image in images])
        widths = torch.tensor([image["width"] for image in images])
        _, keep = clip_boxes(xywh, heights, widths)
        degenerate = (xywh[:, 2] <= 0) | (xywh[:, 3] <= 0)
        source = str(self.annotation_file)
        counts = {}
        for key, dropped, reason in (
            (BOXES_DROPPED_DEGENERATE, ~keep & degenerate, "annotations whose box has no width or height"),
            (BOXES_DROPPED_OFF_IMAGE, ~keep & ~degenerate, "annotations whose box lies outside its image"),
        ):
            ids = [f"annotation {annotations[i]['id']}" for i in dropped.nonzero().flatten().tolist()]
            counts[key] = log_left_out(source, key, ids, reason)
        return ScanCounts(source, counts)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, Target] | None:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_folder / info["file_name"]
        image = self.loader(path)
        if image is None:
            return None
        source = f"{self.annotation_file} (image id {image_id})"
        check_image_size(path, image, info["width"], info["height"], source)
        width, height = width_height(image)
        target = self.target(image_id, height, width)
        if self.transform is not None:
            return self.transform(image, target)
        return image, target

    def annotations(self, image_id: int) -> list[dict]:
        """The annotations of image ``image_id`` that targets are made of (crowds left out for ``train``)."""
        annotations = self.coco.imgToAnns[image_id]
        if self.train:
            annotations = [a for a in annotations if not a.get("iscrowd", 0)]
        return annotations

    def target(self, image_id: int, height: int, width: int) -> Target:
        """The target dict of image ``image_id`` (see the class docstring) for an image of that size."""
        annotations = self.annotations(image_id)
        xywh = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes, keep = clip_boxes(xywh, height, width)
        size = torch.tensor([height, width])
        return {
            "boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)[keep],
            "area": torch.tensor([_area(a) for a in annotations], dtype=torch.float32)[keep],
            "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in annotations], dtype=torch.int64)[keep],
            "image_id": image_id,
            "orig_size": size,
            "size": size.clone(),
        }


def clip_boxes(
    xywh: torch.Tensor, height: int | torch.Tensor, width: int | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """COCO boxes ``xywh`` [N, 4] (x, y, w, h pixels) -> (XYXY [N, 4] clipped to [0, width] x [0, height],
    keep [N] bool: the boxes with an area left). ``height`` and ``width``: the image's, or one per box [N]."""
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    width, height = torch.as_tensor(width, dtype=boxes.dtype), torch.as_tensor(height, dtype=boxes.dtype)
    boxes = torch.minimum(boxes.clamp(min=0), torch.stack([width, height, width, height], dim=-1))
    return boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _area(annotation: dict) -> float:
    """The annotation's area; the box's when a hand-made file leaves it out."""
    return annotation.get("area", annotation["bbox"][2] * annotation["bbox"][3])


def pad_images(
    images: Sequence[torch.Tensor], size_divisibility: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad [C, h_i, w_i] images at the bottom and right into one batch.

    Args:
        images: tensors of one dtype, device and channel count.
        size_divisibility: round the padded height and width up to a multiple of this (1: no rounding).

    Returns:
        images [B, C, H, W] with H, W the largest h_i, w_i (rounded up), and the mask [B, H, W] bool,
        True on padding, False on image pixels.
    """
    if not images:
        raise ValueError("pad_images: no images given")
    if size_divisibility < 1:
        raise ValueError(f"pad_images: size_divisibility must be >= 1, found {size_divisibility}")
    channels = images[0].shape[0]
    if any(image.ndim != 3 or image.shape[0] != channels for image in images):
        raise ValueError(
            f"pad_images: expected [C, H, W] images with one C, found {[tuple(i.shape) for i in images]}"
        )
    height, width = (max(image.shape[dim] for image in images) for dim in (1, 2))
    height, width = (-(-side // size_divisibility) * size_divisibility for side in (height, width))
    batch = images[0].new_zeros(len(images), channels, height, width)
    mask = torch.ones(len(images), height, width, dtype=torch.bool, device=images[0].device)
    for image, padded, image_mask in zip(images, batch, mask, strict=True):
        padded[:, : image.shape[1], : image.shape[2]].copy_(image)
        image_mask[: image.shape[1], : image.shape[2]] = False
    return batch, mask


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, Target] | None], size_divisibility: int = 1
) -> tuple[torch.Tensor, torch.Tensor, list[Target]]:
    """DataLoader collate for transformed detection samples -> ``(images [B, 3, H, W], mask [B, H, W],
    targets)``, see ``pad_images``; targets stay a list of dicts. Samples that are None (skipped corrupt
    images) are dropped, so a batch can be smaller than the loader's batch size."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        raise CorruptImageError(
            f"all {len(batch)} samples of a batch were unreadable images (skipped as corrupt); "
            "the data set is probably broken, see the warnings above for the file names"
        )
    images, mask = pad_images([image for image, _ in kept], size_divisibility)
    return images, mask, [target for _, target in kept]
