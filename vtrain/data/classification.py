"""LightningDataModule for image classification on CIFAR-10 / CIFAR-100 / ImageNet-1k.

Batches are ``(images [B, 3, image_size, image_size] float32 normalised, labels [B] int64)``.
"""

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from vtrain.data.cifar import CIFAR
from vtrain.data.gpu_decode import DeviceDecodeMixin, EncodedBatch
from vtrain.data.imagenet import ImageNet
from vtrain.data.images import collate_skip_corrupt
from vtrain.data.loading import LoaderMixin, check_format, corrupt_images_skipped, training_set
from vtrain.data.shards.datasets import ShardClassification
from vtrain.data.splits import SplitsMixin, require_samples, with_attributes
from vtrain.data.tiny import build_tiny
from vtrain.data.transforms import build_classification_transforms

log = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100", "imagenet")


def classification_images(
    dataset: str,
    root: str,
    split: str,
    format: str = "folders",
    transform: Callable[[Any], Any] | None = None,
    skip_corrupt: bool = False,
) -> Dataset:
    """The image set ``split`` ("train" / "val") of ``dataset`` ("cifar10", "cifar100", "imagenet") under
    ``root``, from folders (CIFAR: the pickles; CIFAR's "val" is its test batch) or from shards."""
    if format == "shards":
        shard_split = split if dataset == "imagenet" or split == "train" else "test"
        return ShardClassification(root, dataset, shard_split, transform=transform, skip_corrupt=skip_corrupt)
    if dataset == "imagenet":
        return ImageNet(root, split, transform=transform, skip_corrupt=skip_corrupt)
    return CIFAR(root, "train" if split == "train" else "test", variant=dataset, transform=transform)


class ClassificationDataModule(DeviceDecodeMixin, LoaderMixin, SplitsMixin, L.LightningDataModule):
    """Train / val / test loaders for ``dataset``: test reads the official evaluation split (CIFAR: the
    test batch; ImageNet: val), validation that split too or, with ``holdout``, a class-stratified part of
    the training split (see vtrain.data.splits).

    Args:
        dataset: "cifar10", "cifar100" or "imagenet" (folder or Kaggle layout, see vtrain.data.imagenet).
        root: data set root: the folder holding ``cifar-10-batches-py`` / ``cifar-100-python``, or the
            ImageNet root.
        num_classes: expected size of the label space (1000 for ImageNet, also for subsets such as
            imagenet_tiny); a mismatch with the data raises.
        image_size, recipe, mean, std, crop_pct, randaugment_magnitude, hflip, random_erasing,
            timm_train, crop_scale: see ``vtrain.data.transforms.build_classification_transforms``.
        repeated_aug: DeiT's repeated augmentation: each training image this many times per epoch, the
            copies on different ranks (``vtrain.data.sampler.RepeatedAugmentationSampler``); 1: off.
        batch_size: per device; ``eval_batch_size`` defaults to it.
        skip_corrupt: ImageNet: drop unreadable images from their batch instead of failing; the count is
            ``corrupt_count()`` and is logged at teardown.
        tiny: name of a ``vtrain.data.tiny`` set that ``prepare_data`` builds into ``root`` when missing.
        val_split: without a hold-out, what validation reads, with eval transforms: "val" (the official
            evaluation split, which test reads) or "train" (the whole training split, to check that a model
            fits its training data); test reads "val" either way.
        train_subset: keep only the first N training samples (debugging; after the hold-out).
        holdout: validate on a part of the training split instead, left out of training: a fraction in
            (0, 1) or a count, the same share of every class (within one sample); None: no hold-out.
        holdout_seed: the seed that picks the held-out samples.
        decode: ImageNet only. "cpu" (PIL in the loader workers); "tensor": torchvision decodes in the
            workers and the pipeline resamples uint8 tensors, the same draws, 1.1-1.2x the images per
            second of a worker on DeiT's pipeline (``vtrain.data.tensor_decode``); "gpu": JPEGs decoded
            on the GPU in batches and the pipeline run there, with the same per-sample draws
            (``vtrain.data.gpu_decode``; not recipe "timm", whose RandAugment works on PIL images).
        format: "folders" (the layouts above) or "shards": ``root`` is a shard directory that
            ``python -m vtrain.data.shards`` wrote from such a layout (same samples, labels and order;
            see vtrain.data.shards and docs/data.md).

    After ``setup``: ``train_set``, ``val_set`` and ``test_set``; ``val_source`` says where validation reads.
    """

    def __init__(
        self,
        dataset: str,
        root: str,
        num_classes: int,
        image_size: int,
        recipe: str,
        mean: Sequence[float],
        std: Sequence[float],
        crop_pct: float = 0.875,
        randaugment_magnitude: int | None = None,
        hflip: bool = True,
        random_erasing: float = 0.0,
        timm_train: dict | None = None,
        crop_scale: Sequence[float] | None = None,
        repeated_aug: int = 1,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        skip_corrupt: bool = False,
        tiny: str | None = None,
        val_split: str = "val",
        train_subset: int | None = None,
        holdout: float | int | None = None,
        holdout_seed: int = 0,
        decode: str = "cpu",
        format: str = "folders",
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, found {dataset!r}")
        self.format = check_format(format, tiny, "ClassificationDataModule")
        if val_split not in ("val", "train"):
            raise ValueError(f"val_split must be 'val' or 'train', found {val_split!r}")
        if val_split == "train" and holdout is not None:
            raise ValueError(
                f"ClassificationDataModule: val_split='train' validates on the whole training split, "
                f"holdout={holdout!r} on a part kept out of it; set one of them"
            )
        self.dataset, self.root, self.num_classes, self.tiny = dataset, root, num_classes, tiny
        self.val_split, self._val_is_test = val_split, val_split == "val"
        self._init_splits(holdout, holdout_seed)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.collate = collate_skip_corrupt if skip_corrupt else None
        self.num_workers, self.skip_corrupt, self.train_subset = num_workers, skip_corrupt, train_subset
        if repeated_aug < 1:
            raise ValueError(
                f"ClassificationDataModule: repeated_aug must be at least 1 (1: off), found {repeated_aug}"
            )
        self.repeated_aug = repeated_aug
        # Pinning needs a GPU; without one torch warns on every loader.
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        transform_args = dict(
            image_size=image_size,
            recipe=recipe,
            mean=tuple(mean),
            std=tuple(std),
            crop_pct=crop_pct,
            randaugment_magnitude=randaugment_magnitude,
            hflip=hflip,
            random_erasing=random_erasing,
            timm_train=timm_train,
            crop_scale=crop_scale,
        )
        if decode in ("tensor", "gpu") and dataset != "imagenet":
            raise ValueError(
                f"ClassificationDataModule: data.decode={decode} decodes image files; {dataset} has its "
                "images as arrays in memory: use data.decode=cpu"
            )
        if decode == "gpu" and recipe == "timm":
            raise ValueError(
                "ClassificationDataModule: data.decode=gpu runs a transforms.v2 pipeline on the GPU; recipe "
                "'timm' is timm's PIL pipeline: use data.decode=tensor or data.decode=cpu"
            )
        self.train_transform = build_classification_transforms(
            train=True, tensor_images=decode == "tensor", **transform_args
        )
        self.eval_transform = build_classification_transforms(train=False, **transform_args)
        self._init_decode(decode)

    def prepare_data(self) -> None:
        if self.tiny is not None:
            build_tiny(self.tiny, self.root)

    def _load(self, split: str, train: bool) -> Dataset:
        """``split`` ("train" / "val") with the train or the eval transforms, its classes checked."""
        transform = self.train_transform if train else self.eval_transform
        dataset = classification_images(
            self.dataset, self.root, split, self.format, transform=transform, skip_corrupt=self.skip_corrupt
        )
        if self.dataset == "imagenet":
            dataset = self._encoded(dataset)
        if len(dataset.classes) != self.num_classes:
            raise ValueError(
                f"{self.dataset} under {self.root}: num_classes is {self.num_classes} "
                f"but the data set has {len(dataset.classes)} classes"
            )
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Loads the official evaluation split for every stage and the train split for "fit", and for
        "validate" when validation reads it (scanning ImageNet's training folders takes a while, so other
        validate / test runs skip it). The training split is scanned once and read with both pipelines."""
        what = f"{self.dataset} under {self.root}"
        self._check_decode_device()
        if self.test_set is None:
            self.test_set = require_samples(self._load("val", train=False), f"{what}, evaluation split")
            if self.holdout is None and self._val_is_test:
                self.val_set = self.test_set
        if not self._needs_train_split(stage):
            return
        train = self._load("train", train=True)
        eval_view = with_attributes(train, transform=self.eval_transform)
        if not self._val_is_test:
            self.val_set = eval_view
        train = self._hold_out(train, eval_view, f"{what}, training split", labels=train.targets)
        self.train_set = training_set(train, self.train_subset, self.batch_size, what)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, train=False)

    def decode_batch(
        self, batch: EncodedBatch, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A ``decode: gpu`` batch decoded and augmented on ``device``: (images, labels) as the CPU path."""
        images = torch.stack(self._augment_on_device(batch, device))
        return images, torch.tensor(batch.targets, dtype=torch.int64, device=images.device)

    def corrupt_count(self) -> int:
        """Images skipped as corrupt so far, over all splits and worker processes."""
        return corrupt_images_skipped(self.train_set, self.val_set, self.test_set)

    def teardown(self, stage: str) -> None:
        if self.skip_corrupt:
            count = self.corrupt_count()
            (log.warning if count else log.info)("%s: %d corrupt images skipped so far", self.dataset, count)
        if self.decode == "gpu":
            log.info(
                "%s: %d images decoded on the CPU (not JPEGs nvJPEG takes)",
                self.dataset,
                self.decoded_on_cpu(),
            )
