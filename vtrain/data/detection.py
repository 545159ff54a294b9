"""LightningDataModule for COCO-format object detection with DETR's augmentation.

Batches are ``(images [B, 3, H, W] float32 normalised and zero-padded, mask [B, H, W] bool True on padding,
targets)``, ``targets`` a list of B dicts: ``boxes`` [N, 4] normalised cx, cy, w, h, ``labels`` [N] int64
category ids, ``image_id``, ``orig_size`` and ``size`` (h, w), ``area``, ``iscrowd`` (see
``vtrain.data.coco.CocoDetection`` and ``vtrain.data.detection_transforms``).
"""

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader

from vtrain.data.coco import CocoDetection, collate_detection
from vtrain.data.detection_transforms import (
    DETR_CROP_MAX,
    DETR_CROP_MIN,
    DETR_EVAL_SIZE,
    DETR_MAX_SIZE,
    DETR_PRE_CROP_SCALES,
    DETR_SCALES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_detr_transforms,
)
from vtrain.data.gpu_decode import DeviceDecodeMixin, EncodedBatch
from vtrain.data.loading import LoaderMixin, check_format, corrupt_images_skipped, training_set
from vtrain.data.splits import SplitsMixin, require_samples, with_attributes
from vtrain.data.tiny import build_tiny

log = logging.getLogger(__name__)


class DetectionDataModule(DeviceDecodeMixin, LoaderMixin, SplitsMixin, L.LightningDataModule):
    """Train / val / test loaders for the COCO-format set under ``root``: test reads ``val_split``,
    validation that split too or, with ``holdout``, a random part of the training images (see
    vtrain.data.splits).

    Args:
        root: folder holding ``annotations/instances_<split>2017.json`` and ``<split>2017/``.
        train_split, val_split: split names; ``val_split`` is the evaluation split that test reads (and,
            without a hold-out, validation); "train" checks that a model fits its training data.
        num_classes: expected max category id + 1 (91 for COCO); a mismatch with the data raises. None
            takes it from the annotation file (``self.num_classes`` after ``setup``).
        scales, max_size, pre_crop_scales, crop_min, crop_max, eval_size, hflip: DETR's augmentation, see
            ``vtrain.data.detection_transforms.build_detr_transforms``; the defaults are the paper's.
        mean, std: input normalisation (the backbone's; ImageNet statistics for DETR's ResNets).
        batch_size: per device; ``eval_batch_size`` defaults to it.
        size_divisibility: pad each batch to a multiple of this (1: to the largest image only, as DETR).
        skip_corrupt: drop unreadable images from their batch instead of failing; ``corrupt_count()``.
        tiny: name of a ``vtrain.data.tiny`` set that ``prepare_data`` builds into ``root`` when missing.
        train_subset: keep only the first N training images (debugging; after the hold-out).
        holdout: validate on a part of the training images instead, left out of training: a fraction in
            (0, 1) or a count, drawn at random by image; None: no hold-out.
        holdout_seed: the seed that picks the held-out images.
        decode: "cpu" (PIL in the loader workers); "tensor": torchvision decodes in the workers and DETR's
            pipeline resizes uint8 tensors, the same draws (``vtrain.data.tensor_decode``); "gpu": JPEGs
            decoded on the GPU in batches and DETR's pipeline run there, with the same per-sample draws
            (``vtrain.data.gpu_decode``).
        format: "folders" (the layout above) or "shards": ``root`` is a shard directory that
            ``python -m vtrain.data.shards coco`` wrote (``coco_panoptic`` for the panoptic module; see
            vtrain.data.shards and docs/data.md).

    Every split gets DETR's targets, crowd regions left out (the validation loss is the training loss);
    COCO mAP is computed against ``val_annotation_file`` / ``test_annotation_file``, where the crowd regions
    are (COCOeval scores only the images it was given, so a hold-out is scored against the training file).
    After ``setup``: ``train_set``, ``val_set`` and ``test_set``; ``val_source`` says where validation reads.
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str = "val",
        num_classes: int | None = None,
        scales: Sequence[int] = DETR_SCALES,
        max_size: int = DETR_MAX_SIZE,
        pre_crop_scales: Sequence[int] = DETR_PRE_CROP_SCALES,
        crop_min: int = DETR_CROP_MIN,
        crop_max: int = DETR_CROP_MAX,
        eval_size: int = DETR_EVAL_SIZE,
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        size_divisibility: int = 1,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        skip_corrupt: bool = False,
        tiny: str | None = None,
        train_subset: int | None = None,
        holdout: float | int | None = None,
        holdout_seed: int = 0,
        decode: str = "cpu",
        format: str = "folders",
    ) -> None:
        super().__init__()
        self.format = check_format(format, tiny, type(self).__name__)
        self.root, self.train_split, self.val_split = root, train_split, val_split
        self._init_splits(holdout, holdout_seed)
        self.num_classes, self.tiny, self.train_subset = num_classes, tiny, train_subset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.skip_corrupt = num_workers, skip_corrupt
        # Pinning needs a GPU; without one torch warns on every loader.
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.collate = functools.partial(collate_detection, size_divisibility=size_divisibility)
        common = dict(
            max_size=max_size, scales=tuple(scales), eval_size=eval_size, mean=tuple(mean), std=tuple(std)
        )
        crops = dict(pre_crop_scales=tuple(pre_crop_scales), crop_min=crop_min, crop_max=crop_max)
        self.train_transform = build_detr_transforms(train=True, hflip=hflip, **common, **crops)
        self.eval_transform = build_detr_transforms(train=False, **common)
        self.size_divisibility = size_divisibility
        if decode in ("gpu", "tensor") and type(self) is not DetectionDataModule:
            raise ValueError(
                f"{type(self).__name__}: data.decode={decode} runs DETR's box pipeline on tensor images "
                "(DetectionDataModule); the mask targets here are made for PIL images: use data.decode=cpu"
            )
        self._init_decode(decode)

    def _annotation_file(self, split: str) -> Path:
        return Path(self.root) / "annotations" / f"instances_{split}2017.json"

    @property
    def val_annotation_file(self) -> Path:
        """The annotation file of the validation images, for COCO evaluation (pycocotools COCOeval): the
        training split's with a hold-out, else the val split's."""
        return self._annotation_file(self.train_split if self.holdout is not None else self.val_split)

    @property
    def test_annotation_file(self) -> Path:
        """The val split's annotation file, for COCO evaluation of the test run."""
        return self._annotation_file(self.val_split)

    @property
    def category_names(self) -> list[str]:
        """Category names by label ("N/A" for ids the file does not use); needs ``setup``."""
        if self.test_set is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for category_names")
        return self.test_set.category_names

    def prepare_data(self) -> None:
        if self.tiny is not None:
            build_tiny(self.tiny, self.root)

    def _load(self, split: str, train: bool) -> CocoDetection:
        """``split`` with the train or the eval transforms, its label space checked."""
        transform = self.train_transform if train else self.eval_transform
        dataset = CocoDetection(
            self.root, split, transform=transform, skip_corrupt=self.skip_corrupt, format=self.format
        )
        dataset = self._encoded(dataset)
        if self.num_classes is None:
            self.num_classes = dataset.num_classes
        if dataset.num_classes != self.num_classes:
            raise ValueError(
                f"{dataset.annotation_file}: num_classes is {self.num_classes} but the largest category id "
                f"is {dataset.num_classes - 1} (num_classes = largest id + 1 = {dataset.num_classes})"
            )
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Loads the val split for every stage and the train split for "fit", and for "validate" with a
        hold-out (read once, served with the train and the eval transforms)."""
        self._check_decode_device()
        if self.test_set is None:
            test_set = self._load(self.val_split, train=False)
            self.test_set = require_samples(test_set, f"{test_set.annotation_file} ({self.val_split} split)")
            if self.holdout is None:
                self.val_set = self.test_set
        if not self._needs_train_split(stage):
            return
        train = self._load(self.train_split, train=True)
        if train.categories != self.test_set.categories:
            raise ValueError(
                f"{train.annotation_file} and {self.test_set.annotation_file} declare different "
                f"categories: {train.categories} and {self.test_set.categories}"
            )
        eval_view = with_attributes(train, transform=self.eval_transform)
        train = self._hold_out(train, eval_view, f"{train.annotation_file} ({self.train_split} split)")
        what = f"COCO {self.train_split} under {self.root}"
        self.train_set = training_set(train, self.train_subset, self.batch_size, what)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, train=False)

    def decode_batch(
        self, batch: EncodedBatch, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
        """A ``decode: gpu`` batch decoded and augmented on ``device``: (images, mask, targets) as the CPU
        path gives them."""
        return collate_detection(self._augment_on_device(batch, device), self.size_divisibility)

    def corrupt_count(self) -> int:
        """Images skipped as corrupt so far, over all splits and worker processes."""
        return corrupt_images_skipped(self.train_set, self.val_set, self.test_set)

    def teardown(self, stage: str) -> None:
        if self.skip_corrupt:
            count = self.corrupt_count()
            (log.warning if count else log.info)(
                "COCO under %s: %d corrupt images skipped so far", self.root, count
            )
        if self.decode == "gpu":
            log.info(
                "COCO under %s: %d images decoded on the CPU (not JPEGs nvJPEG takes)",
                self.root,
                self.decoded_on_cpu(),
            )
