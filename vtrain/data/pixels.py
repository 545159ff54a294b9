"""iGPT's input: images downsampled (32x32, 48x48, 64x64, or smaller for CPU runs), every pixel replaced by
the index of its nearest palette colour, read in raster order.

Batches are ``(tokens [B, image_size ** 2] int64 in [0, k), labels [B] int64)``. The palette is fitted on
the training pixels the first time (``vtrain.data.palette.fit_palette``), saved next to the data as a
``.npy`` and reused; ``palette_path`` points at another one, such as the official ``kmeans_centers.npy``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import InterpolationMode, v2

from vtrain.data.cifar import CIFAR
from vtrain.data.imagenet import ImageNet
from vtrain.data.images import collate_skip_corrupt
from vtrain.data.loading import LoaderMixin, training_set
from vtrain.data.palette import Palette, fit_palette, to_unit_range
from vtrain.data.splits import SplitsMixin, require_samples
from vtrain.data.tiny import build_tiny

log = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100", "imagenet")


def build_pixel_transform(image_size: int, dataset: str, train: bool, hflip: bool = False) -> v2.Compose:
    """uint8 image (PIL or tensor) -> uint8 ``[3, image_size, image_size]``.

    CIFAR: an antialiased resize of the whole 32x32 image. ImageNet: resize of the short side, then a
    random (train) or central (eval) square crop. ``hflip`` adds random mirroring to the train pipeline.
    """
    resize = v2.Resize(image_size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    steps: list[Any] = [v2.ToImage()]
    if dataset == "imagenet":
        steps += [resize, v2.RandomCrop(image_size) if train else v2.CenterCrop(image_size)]
    else:
        steps += [
            v2.Resize((image_size, image_size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        ]
    if train and hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


class PixelSequences(Dataset):
    """(tokens [image_size ** 2] int64, label) from a data set of (image, label).

    Args:
        images: the image data set (``CIFAR``, ``ImageNet``); a None sample (corrupt image) stays None.
        transform: image -> uint8 ``[3, S, S]`` (:func:`build_pixel_transform`).
        palette: the colours tokens index.
    """

    def __init__(self, images: Dataset, transform: v2.Compose, palette: Palette) -> None:
        self.images, self.transform, self.palette = images, transform, palette
        self.classes = getattr(images, "classes", None)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        sample = self.images[index]
        if sample is None:
            return None
        image, label = sample
        return self.palette.quantize_images(self.transform(image).as_subclass(torch.Tensor)), label


class PixelDataModule(LoaderMixin, SplitsMixin, L.LightningDataModule):
    """Palette-index sequences of CIFAR-10 / CIFAR-100 / ImageNet images: test reads the official evaluation
    split (CIFAR: the test batch; ImageNet: val), validation that split too or, with ``holdout``, a
    class-stratified part of the training split (see vtrain.data.splits).

    Args:
        dataset: "cifar10", "cifar100" or "imagenet".
        root: data set root (see ``vtrain.data.cifar`` / ``vtrain.data.imagenet``).
        num_classes: size of the label space (checked against the data).
        image_size: side S of the downsampled images; sequences have S * S tokens.
        palette_size: k colours (the paper's 512).
        palette_path: a ``.npy`` of centres [k, 3] in [-1, 1] to use; None: ``<root>/igpt_palette_<dataset>_
            k<k>_<S>px_seed<seed>.npy``, fitted on the training pixels when missing.
        palette_images: training images whose pixels the palette is fitted on (a seeded random subset).
        palette_seed: seed of that subset and of the k-means.
        palette_steps: mini-batch k-means updates.
        hflip: random horizontal flips of training images.
        batch_size: per device; ``eval_batch_size`` defaults to it.
        probe_train_size: training images (the first ones, unaugmented; none of the held-out ones) a linear
            probe is fitted on.
        skip_corrupt: ImageNet: drop unreadable images instead of failing.
        tiny: a ``vtrain.data.tiny`` set that ``prepare_data`` builds into ``root`` when missing.
        train_subset: keep only the first N training images (debugging; after the hold-out).
        holdout: validate on a part of the training split instead, left out of training and of the probe's
            training images: a fraction in (0, 1) or a count, the same share of every class (within one
            image); None: no hold-out. The palette is fitted on training images, held-out ones included.
        holdout_seed: the seed that picks the held-out images.

    After ``setup``: ``train_set``, ``val_set``, ``test_set`` and ``probe_train_set``; ``val_source`` says
    where validation reads.
    """

    def __init__(
        self,
        dataset: str,
        root: str,
        num_classes: int,
        image_size: int = 32,
        palette_size: int = 512,
        palette_path: str | None = None,
        palette_images: int = 5000,
        palette_seed: int = 0,
        palette_steps: int = 200,
        hflip: bool = False,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        probe_train_size: int = 10000,
        skip_corrupt: bool = False,
        tiny: str | None = None,
        train_subset: int | None = None,
        holdout: float | int | None = None,
        holdout_seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"PixelDataModule: dataset must be one of {DATASETS}, found {dataset!r}")
        self._init_splits(holdout, holdout_seed)
        self.dataset, self.root, self.num_classes, self.image_size = dataset, root, num_classes, image_size
        self.palette_size, self.palette_images = palette_size, palette_images
        self.palette_seed, self.palette_steps = palette_seed, palette_steps
        name = f"igpt_palette_{dataset}_k{palette_size}_{image_size}px_seed{palette_seed}.npy"
        self.palette_path = Path(palette_path) if palette_path else Path(root) / name
        self.hflip, self.tiny, self.train_subset = hflip, tiny, train_subset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.collate = collate_skip_corrupt if skip_corrupt else None
        self.num_workers, self.skip_corrupt = num_workers, skip_corrupt
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.probe_train_size = probe_train_size
        self.palette: Palette | None = None
        self.probe_train_set: Dataset | None = None

    def _images(self, split: str) -> Dataset:
        """The image data set of ``split`` ("train" / "val") without transform, its classes checked."""
        if self.dataset == "imagenet":
            images = ImageNet(self.root, split, skip_corrupt=self.skip_corrupt)
        else:
            images = CIFAR(self.root, "train" if split == "train" else "test", variant=self.dataset)
        if len(images.classes) != self.num_classes:
            raise ValueError(
                f"{self.dataset} under {self.root}: num_classes is {self.num_classes} "
                f"but the data set has {len(images.classes)} classes"
            )
        return images

    def _fit_palette(self) -> Palette:
        """Fit k colours on the pixels of ``palette_images`` downsampled training images and save them."""
        images = self._images("train")
        transform = build_pixel_transform(self.image_size, self.dataset, train=False)
        generator = torch.Generator().manual_seed(self.palette_seed)
        picks = torch.randperm(len(images), generator=generator)[: self.palette_images].tolist()
        samples = [images[i] for i in picks]
        pixels = torch.stack([transform(s[0]).as_subclass(torch.Tensor) for s in samples if s is not None])
        pixels = to_unit_range(pixels).permute(0, 2, 3, 1).reshape(-1, 3)
        log.info(
            "fitting a %d-colour palette on %d pixels of %d images",
            self.palette_size,
            len(pixels),
            len(picks),
        )
        palette = Palette(fit_palette(pixels, self.palette_size, self.palette_steps, seed=self.palette_seed))
        palette.save(self.palette_path)
        log.info("saved the palette to %s", self.palette_path)
        return palette

    def prepare_data(self) -> None:
        if self.tiny is not None:
            build_tiny(self.tiny, self.root)
        if not self.palette_path.is_file():
            self._fit_palette()

    def setup(self, stage: str | None = None) -> None:
        """Loads (or fits) the palette, the val split, the probe's training images and, for "fit" (and
        "validate" with a hold-out), the train split."""
        if self.palette is None:
            self.palette = (
                Palette.load(self.palette_path) if self.palette_path.is_file() else self._fit_palette()
            )
            if len(self.palette) != self.palette_size:
                found = len(self.palette)
                raise ValueError(
                    f"{self.palette_path}: {found} colours, but palette_size is {self.palette_size}"
                )
        eval_transform = build_pixel_transform(self.image_size, self.dataset, train=False)
        what = f"{self.dataset} under {self.root}"
        if self.test_set is None:
            test_set = PixelSequences(self._images("val"), eval_transform, self.palette)
            self.test_set = require_samples(test_set, f"{what}, evaluation split")
            if self.holdout is None:
                self.val_set = self.test_set
        need_train = self._needs_train_split(stage)
        need_probe = stage in (None, "fit", "validate", "test") and self.probe_train_set is None
        if not (need_train or need_probe):
            return
        images = self._images("train")  # scanned once per stage at most (ImageNet: a walk of its folders)
        train_transform = build_pixel_transform(self.image_size, self.dataset, True, self.hflip)
        eval_view = PixelSequences(images, eval_transform, self.palette)
        train = self._hold_out(
            PixelSequences(images, train_transform, self.palette),
            eval_view,
            f"{what}, training split",
            labels=images.targets,
        )
        if need_probe:
            kept = train.indices if isinstance(train, Subset) else range(len(images))
            self.probe_train_set = Subset(eval_view, list(kept[: self.probe_train_size]))
        if need_train:
            self.train_set = training_set(train, self.train_subset, self.batch_size, what)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, train=False)

    def probe_train_dataloader(self) -> DataLoader:
        """The first ``probe_train_size`` training images, unaugmented, in order (a probe's training set)."""
        return self._loader(self.probe_train_set, self.eval_batch_size, train=False)
