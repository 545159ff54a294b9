"""Cityscapes semantic segmentation (the 19 evaluation classes) and its LightningDataModule.

Layout (the official ``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``, unzipped side by side):

    <root>/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Label ids (0..33) become the 19 train ids of ``cityscapesscripts`` (road 0 .. bicycle 18); every other id
is 255, ignored by the loss and the metrics. Batches are ``(images [B, 3, H, W] float32 normalised,
labels [B, H, W] int64)``.

    train  random scale of the image by a factor in ``scale_range`` (bilinear; labels nearest), pad to the
           crop (image 0, label 255), random crop of ``crop_size``, horizontal flip (p 0.5);
    eval   the whole image, resized by ``eval_scale`` (1.0 keeps it; the metric compares with labels
           resized the same way, nearest).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as L
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from vtrain.data.counts import FILES_SKIPPED_EXTENSION, ScanCounts, log_left_out
from vtrain.data.detection_transforms import IMAGENET_MEAN, IMAGENET_STD
from vtrain.data.images import ImageSizeError, open_rgb
from vtrain.data.loading import LoaderMixin, check_format, training_set
from vtrain.data.shards.format import LABEL_MEMBER, ShardSplit
from vtrain.data.splits import SplitsMixin, require_samples, with_attributes
from vtrain.data.tiny import build_tiny

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
# (name, label id, colour) of the 19 train ids, in train-id order (cityscapesscripts' labels.py).
CITYSCAPES_CLASSES = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)
CITYSCAPES_NAMES = tuple(name for name, _, _ in CITYSCAPES_CLASSES)
CITYSCAPES_PALETTE = tuple(colour for _, _, colour in CITYSCAPES_CLASSES)

LAYOUT = """expected the Cityscapes layout:
    <root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png
    <root>/gtFine/<split>/<city>/*_gtFine_labelIds.png
or build a tiny stand-in: python -m vtrain.data.tiny --root DIR cityscapes_tiny
(then root=DIR/cityscapes_tiny)"""


def label_id_to_train_id() -> np.ndarray:
    """Lookup table [256] uint8: Cityscapes label id -> train id, 255 for the ids not evaluated."""
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for train_id, (_, label_id, _) in enumerate(CITYSCAPES_CLASSES):
        table[label_id] = train_id
    return table


class CityscapesSegmentation(Dataset):
    """Split ``split`` of the Cityscapes layout under ``root``: samples ``(image, labels)`` after
    ``transform(image [3, H, W] uint8, labels [H, W] int64 train ids)``, sorted by file name.

    Raises FileNotFoundError naming the folder and the layout when the split is missing or empty, and when an
    image has no label file; reading a label file whose size differs from its image raises ImageSizeError
    naming both. Other files in the city folders are left out, counted in ``scan_counts`` and logged.

    ``format="shards"``: ``root`` is a shard directory of ``python -m vtrain.data.shards cityscapes``, which
    holds the same images and label files, in this order.
    """

    def __init__(
        self, root: str | Path, split: str = "train", transform=None, format: str = "folders"
    ) -> None:
        root = Path(root)
        self.shards = None
        if format == "shards":
            self.shards = ShardSplit(root, ("cityscapes",), split)
            self.images = [self.shards.directory / file for file in self.shards.files]
            self.labels = [
                path.with_name(path.name.replace(IMAGE_SUFFIX, LABEL_SUFFIX)) for path in self.images
            ]
            index = self.shards.index
            self.scan_counts = ScanCounts(index["source"], index["scan_counts"])
            self.transform, self.table = transform, torch.from_numpy(label_id_to_train_id()).long()
            return
        image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        self.images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        others = sorted(p for p in image_dir.glob("*/*") if p.is_file() and not p.name.endswith(IMAGE_SUFFIX))
        reason = f"files that are not *{IMAGE_SUFFIX} images"
        skipped = log_left_out(str(image_dir), FILES_SKIPPED_EXTENSION, others, reason)
        self.scan_counts = ScanCounts(str(image_dir), {FILES_SKIPPED_EXTENSION: skipped})
        if not self.images:
            raise FileNotFoundError(f"Cityscapes {split}: no *_leftImg8bit.png under {image_dir}; {LAYOUT}")
        self.labels = [
            label_dir / path.parent.name / path.name.replace(IMAGE_SUFFIX, LABEL_SUFFIX)
            for path in self.images
        ]
        missing = [str(path) for path in self.labels if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"Cityscapes {split}: {len(missing)} label files missing, e.g. {missing[0]}; {LAYOUT}"
            )
        self.transform, self.table = transform, torch.from_numpy(label_id_to_train_id()).long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.images[index], self.labels[index]
        if self.shards is None:
            image, label_file = open_rgb(image_path), label_path
        else:  # the same bytes, from the shards
            image = open_rgb(io.BytesIO(self.shards.image_bytes(index)), image_path)
            label_file = io.BytesIO(self.shards.member(index, LABEL_MEMBER))
        with Image.open(label_file) as label_image:
            label_ids = np.asarray(label_image)
        if label_ids.shape[:2] != (image.height, image.width):
            raise ImageSizeError(
                f"{label_path}: the label image is {label_ids.shape[1]} x {label_ids.shape[0]} pixels "
                f"(width x height) but its image {image_path} is {image.width} x {image.height}"
            )
        image = torch.from_numpy(np.asarray(image).copy())
        if label_ids.ndim != 2:
            raise ValueError(f"{label_path}: expected a single-channel label id image")
        labels = self.table[torch.from_numpy(label_ids.astype(np.int64))]
        image = image.permute(2, 0, 1)
        if self.transform is not None:
            return self.transform(image, labels)
        return image, labels


class SegmentationTransform:
    """The train (augmenting) or eval pipeline of the module docstring: ``(image [3, H, W] uint8, labels
    [H, W] int64) -> (image float32 normalised, labels)``. Random draws use torch's generator, so the
    seeded loaders of vtrain.data.sampler make them reproducible."""

    def __init__(
        self,
        train: bool,
        crop_size: Sequence[int] = (512, 1024),
        scale_range: Sequence[float] = (0.5, 2.0),
        eval_scale: float = 1.0,
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.train, self.crop_size = train, tuple(crop_size)
        self.scale_range, self.eval_scale, self.hflip = tuple(scale_range), eval_scale, hflip
        self.mean, self.std = list(mean), list(std)

    @staticmethod
    def _resize(image: torch.Tensor, labels: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        size = [max(1, round(side * scale)) for side in image.shape[-2:]]
        image = TF.resize(image, size, antialias=True)
        labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return image, labels

    def __call__(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train:
            low, high = self.scale_range
            image, labels = self._resize(image, labels, low + (high - low) * float(torch.rand(())))
            crop_h, crop_w = self.crop_size
            pad_h, pad_w = max(0, crop_h - image.shape[1]), max(0, crop_w - image.shape[2])
            if pad_h or pad_w:
                image = F.pad(image, (0, pad_w, 0, pad_h), value=0)
                labels = F.pad(labels, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
            top = int(torch.randint(image.shape[1] - crop_h + 1, ()))
            left = int(torch.randint(image.shape[2] - crop_w + 1, ()))
            image = image[:, top : top + crop_h, left : left + crop_w]
            labels = labels[top : top + crop_h, left : left + crop_w]
            if self.hflip and torch.rand(()) < 0.5:
                image, labels = image.flip(-1), labels.flip(-1)
        elif self.eval_scale != 1.0:
            image, labels = self._resize(image, labels, self.eval_scale)
        image = TF.normalize(image.float() / 255, self.mean, self.std)
        return image, labels.contiguous()


class SegmentationDataModule(LoaderMixin, SplitsMixin, L.LightningDataModule):
    """Train / val / test loaders of a Cityscapes-layout set: test reads ``val_split``, validation that split
    too or, with ``holdout``, a random part of the training images (see vtrain.data.splits).

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        train_split, val_split: split names; ``val_split`` is the evaluation split that test reads.
        num_classes: 19 (the train ids); ``class_names`` and ``palette`` follow them.
        crop_size, scale_range, eval_scale, hflip: see ``SegmentationTransform``.
        mean, std: input normalisation (ImageNet statistics for the ResNets).
        batch_size: per device; ``eval_batch_size`` defaults to it (eval images must share a size to batch).
        tiny: name of a ``vtrain.data.tiny`` set that ``prepare_data`` builds into ``root`` when missing.
        train_subset: keep only the first N training images (debugging; after the hold-out).
        holdout: validate on a part of the training images instead, left out of training: a fraction in
            (0, 1) or a count, drawn at random by image; None: no hold-out.
        holdout_seed: the seed that picks the held-out images.
        format: "folders" (the layout above) or "shards": ``root`` is a shard directory that
            ``python -m vtrain.data.shards cityscapes`` wrote (docs/data.md).

    After ``setup``: ``train_set``, ``val_set`` and ``test_set``; ``val_source`` says where validation reads.
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str = "val",
        num_classes: int = 19,
        crop_size: Sequence[int] = (512, 1024),
        scale_range: Sequence[float] = (0.5, 2.0),
        eval_scale: float = 1.0,
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        tiny: str | None = None,
        train_subset: int | None = None,
        holdout: float | int | None = None,
        holdout_seed: int = 0,
        format: str = "folders",
    ) -> None:
        super().__init__()
        self.format = check_format(format, tiny, "SegmentationDataModule")
        if num_classes != len(CITYSCAPES_CLASSES):
            raise ValueError(
                f"SegmentationDataModule: Cityscapes has 19 train ids, found num_classes={num_classes}"
            )
        self.root, self.train_split, self.val_split = root, train_split, val_split
        self.num_classes, self.tiny, self.train_subset = num_classes, tiny, train_subset
        self._init_splits(holdout, holdout_seed)
        self.class_names, self.palette = CITYSCAPES_NAMES, CITYSCAPES_PALETTE
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        common = dict(crop_size=crop_size, scale_range=scale_range, eval_scale=eval_scale, mean=mean, std=std)
        self.train_transform = SegmentationTransform(train=True, hflip=hflip, **common)
        self.eval_transform = SegmentationTransform(train=False, **common)

    def prepare_data(self) -> None:
        if self.tiny is not None:
            build_tiny(self.tiny, self.root)

    def setup(self, stage: str | None = None) -> None:
        """Loads the val split for every stage and the train split for "fit", and for "validate" with a
        hold-out (scanned once, served with the train and the eval transforms)."""
        if self.test_set is None:
            test_set = CityscapesSegmentation(self.root, self.val_split, self.eval_transform, self.format)
            self.test_set = require_samples(test_set, f"Cityscapes {self.val_split} under {self.root}")
            if self.holdout is None:
                self.val_set = self.test_set
        if not self._needs_train_split(stage):
            return
        train = CityscapesSegmentation(self.root, self.train_split, self.train_transform, self.format)
        what = f"Cityscapes {self.train_split} under {self.root}"
        train = self._hold_out(train, with_attributes(train, transform=self.eval_transform), what)
        self.train_set = training_set(train, self.train_subset, self.batch_size, what)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, train=False)
