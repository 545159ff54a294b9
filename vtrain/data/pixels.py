"""iGPT's input: images downsampled (32x32, 48x48, 64x64, or smaller for CPU runs), every pixel replaced by
the index of its nearest palette colour, read in raster order.

Batches are ``(tokens [B, image_size ** 2] int64 in [0, k), labels [B] int64)``. A token means something
only to weights trained with the same palette, so the palette comes from one of three places:

* ``palette_path``: a file (``.npy`` such as the official ``kmeans_centers.npy``, or a Hugging Face
  ``preprocessor_config.json``);
* with ``pretrained`` weights and no ``palette_path``: the palette shipped next to them
  (``vtrain.data.palette.shipped_palette``); weights that ship none are an error, never a new palette;
* otherwise (pretraining from scratch): fitted on the training pixels the first time
  (``vtrain.data.palette.fit_palette``), saved next to the data as a ``.npy`` and reused.

A palette given alongside weights that ship their own must be that one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import InterpolationMode, v2

from vtrain.data.classification import classification_images
from vtrain.data.images import collate_skip_corrupt
from vtrain.data.loading import LoaderMixin, check_format, training_set
from vtrain.data.palette import Palette, fit_palette, shipped_palette, to_unit_range
from vtrain.data.splits import SplitsMixin, holdout_split, require_samples
from vtrain.data.tiny import build_tiny

log = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100", "imagenet")
CIFAR_SIZE = 32


def build_pixel_transform(
    image_size: int,
    dataset: str,
    train: bool,
    hflip: bool = False,
    pad: int = 0,
    short_side_range: tuple[int, int] | None = None,
    crop_size: int | None = None,
) -> v2.Compose:
    """uint8 image (PIL or tensor) -> uint8 ``[3, image_size, image_size]``.

    CIFAR: ``pad`` > 0 (train only) reflection-pads each side by that many pixels and takes a random 32 x 32
    crop (the fine-tuning augmentation of Wide ResNets), then an antialiased resize of the
    whole image. ImageNet with ``crop_size``: train resizes the short side to a random length in
    ``short_side_range`` (inclusive) and takes a random ``crop_size`` square, eval resizes the short side to
    ``crop_size`` and takes the central square, then both downsample it to ``image_size`` (iGPT section
    3.1); without ``crop_size``: the short side resized to ``image_size``, then a random (train) or central
    (eval) square. ``hflip`` adds random mirroring to the train pipeline, after the crop.
    """
    resize = v2.Resize(image_size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    downsample = v2.Resize((image_size, image_size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    steps: list[Any] = [v2.ToImage()]
    if dataset == "imagenet" and crop_size is not None:
        if train:
            low, high = short_side_range or (crop_size, crop_size)
            steps += [
                v2.RandomShortestSize(list(range(low, high + 1)), antialias=True),
                v2.RandomCrop(crop_size),
            ]
        else:
            steps += [
                v2.Resize(crop_size, interpolation=InterpolationMode.BILINEAR, antialias=True),
                v2.CenterCrop(crop_size),
            ]
    elif dataset == "imagenet":
        steps += [resize, v2.RandomCrop(image_size) if train else v2.CenterCrop(image_size)]
    elif train and pad > 0:
        steps.append(v2.RandomCrop(CIFAR_SIZE, padding=pad, padding_mode="reflect"))
    if train and hflip:
        steps.append(v2.RandomHorizontalFlip())
    if dataset != "imagenet" or crop_size is not None:
        steps.append(downsample)
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
        palette_path: the palette to use, which must exist: a ``.npy`` of centres [k, 3] in [-1, 1] or a
            Hugging Face ``preprocessor_config.json``; None: the one shipped with ``pretrained``, or (no
            weights) ``<root>/igpt_palette_<dataset>_k<k>_<S>px_seed<seed>.npy``, fitted on the training
            pixels when missing.
        pretrained: the weights file the model loads (``${model.pretrained}``; None or "scratch": none). Its
            palette is read from its folder; without one, ``palette_path`` is required.
        palette_images: training images whose pixels the palette is fitted on (a seeded random subset).
        palette_seed: seed of that subset and of the k-means.
        palette_steps: mini-batch k-means updates.
        hflip: random horizontal flips of training images.
        pad: CIFAR: reflection padding before a random 32 x 32 crop of training images (0: none).
        short_side_range: ImageNet: [min, max] of the training images' random short side (with
            ``crop_size``).
        crop_size: ImageNet: the square cropped before downsampling (random in training, central in
            evaluation, after resizing the short side to it); None: resize the short side to image_size.
        batch_size: per device; ``eval_batch_size`` defaults to it.
        probe_train_size: training images (unaugmented; none of the held-out ones) a linear probe is fitted
            on: all of them when there are no more, else a seeded sample with every class's share.
        probe_seed: the seed of that sample.
        skip_corrupt: ImageNet: drop unreadable images instead of failing.
        tiny: a ``vtrain.data.tiny`` set that ``prepare_data`` builds into ``root`` when missing.
        train_subset: keep only the first N training images (debugging; after the hold-out).
        holdout: validate on a part of the training split instead, left out of training and of the probe's
            training images: a fraction in (0, 1) or a count, the same share of every class (within one
            image); None: no hold-out. The palette is fitted on training images, held-out ones included.
        holdout_seed: the seed that picks the held-out images.
        format: "folders" or "shards" (``root`` a shard directory of ``python -m vtrain.data.shards``).

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
        pretrained: str | None = None,
        palette_images: int = 5000,
        palette_seed: int = 0,
        palette_steps: int = 200,
        hflip: bool = False,
        pad: int = 0,
        short_side_range: tuple[int, int] | None = None,
        crop_size: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        probe_train_size: int = 10000,
        probe_seed: int = 0,
        skip_corrupt: bool = False,
        tiny: str | None = None,
        train_subset: int | None = None,
        holdout: float | int | None = None,
        holdout_seed: int = 0,
        format: str = "folders",
    ) -> None:
        super().__init__()
        self.format = check_format(format, tiny, "PixelDataModule")
        if dataset not in DATASETS:
            raise ValueError(f"PixelDataModule: dataset must be one of {DATASETS}, found {dataset!r}")
        self._init_splits(holdout, holdout_seed)
        self.dataset, self.root, self.num_classes, self.image_size = dataset, root, num_classes, image_size
        self.palette_size, self.palette_images = palette_size, palette_images
        self.palette_seed, self.palette_steps = palette_seed, palette_steps
        self.pretrained = None if pretrained in (None, "scratch") else Path(pretrained)
        self.palette_path, self.may_fit_palette = self._palette_source(palette_path)
        if dataset == "imagenet" and pad:
            raise ValueError(f"PixelDataModule: pad is for CIFAR; ImageNet takes crop_size, found pad={pad}")
        if dataset != "imagenet" and (crop_size is not None or short_side_range is not None):
            raise ValueError(
                f"PixelDataModule: crop_size / short_side_range are for ImageNet, found them for {dataset}"
            )
        self.hflip, self.pad, self.crop_size = hflip, pad, crop_size
        self.short_side_range = tuple(short_side_range) if short_side_range is not None else None
        self.tiny, self.train_subset = tiny, train_subset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.collate = collate_skip_corrupt if skip_corrupt else None
        self.num_workers, self.skip_corrupt = num_workers, skip_corrupt
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.probe_train_size, self.probe_seed = probe_train_size, probe_seed
        self.palette: Palette | None = None
        self.probe_train_set: Dataset | None = None

    def _palette_source(self, palette_path: str | None) -> tuple[Path, bool]:
        """(the palette file, whether it is fitted when missing); refuses a palette that is not the one
        shipped with ``pretrained`` and a fitted palette for weights."""
        shipped = shipped_palette(self.pretrained) if self.pretrained is not None else None
        if palette_path:
            path = Path(palette_path)
            if shipped is not None and path.resolve() != shipped.resolve():
                given, theirs = Palette.load(path), Palette.load(shipped)
                if len(given) != len(theirs) or not torch.allclose(given.centers, theirs.centers, atol=1e-6):
                    raise ValueError(
                        f"data.palette_path={path} is not the palette of the weights model.pretrained="
                        f"{self.pretrained}: they ship {shipped} ({len(theirs)} colours), whose token ids "
                        "they were trained on; leave data.palette_path null or pass "
                        f"data.palette_path={shipped}"
                    )
            return path, False
        if shipped is not None:
            log.info("palette: %s, shipped with the weights %s", shipped, self.pretrained)
            return shipped, False
        if self.pretrained is not None:
            raise ValueError(
                f"model.pretrained={self.pretrained} has no palette next to it (no preprocessor_config.json "
                "with 'clusters' nor kmeans_centers.npy in its folder), and a palette fitted here would give "
                "token ids that mean nothing to those weights: pass data.palette_path= the palette they were "
                "trained with (the preprocessor_config.json of openai/imagegpt-*, the official "
                "kmeans_centers.npy, or the igpt_palette_*.npy of the vtrain pretraining run)"
            )
        size, seed = self.image_size, self.palette_seed
        name = f"igpt_palette_{self.dataset}_k{self.palette_size}_{size}px_seed{seed}.npy"
        return Path(self.root) / name, True

    def _images(self, split: str) -> Dataset:
        """The image data set of ``split`` ("train" / "val") without transform, its classes checked."""
        images = classification_images(
            self.dataset, self.root, split, self.format, skip_corrupt=self.skip_corrupt
        )
        if len(images.classes) != self.num_classes:
            raise ValueError(
                f"{self.dataset} under {self.root}: num_classes is {self.num_classes} "
                f"but the data set has {len(images.classes)} classes"
            )
        return images

    def _fit_palette(self) -> Palette:
        """Fit k colours on the pixels of ``palette_images`` downsampled training images and save them."""
        images = self._images("train")
        transform = self._transform(train=False)
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
        if self.may_fit_palette and not self.palette_path.is_file():
            self._fit_palette()

    def setup(self, stage: str | None = None) -> None:
        """Loads (or fits) the palette, the val split, the probe's training images and, for "fit" (and
        "validate" with a hold-out), the train split."""
        if self.palette is None:
            fit = self.may_fit_palette and not self.palette_path.is_file()
            self.palette = self._fit_palette() if fit else Palette.load(self.palette_path)
            if len(self.palette) != self.palette_size:
                found = len(self.palette)
                raise ValueError(
                    f"{self.palette_path}: {found} colours, but palette_size is {self.palette_size}"
                )
        eval_transform = self._transform(train=False)
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
        train_transform = self._transform(train=True)
        eval_view = PixelSequences(images, eval_transform, self.palette)
        train = self._hold_out(
            PixelSequences(images, train_transform, self.palette),
            eval_view,
            f"{what}, training split",
            labels=images.targets,
        )
        if need_probe:
            kept = np.asarray(train.indices if isinstance(train, Subset) else range(len(images)))
            if self.probe_train_size < len(kept):
                # a seeded, class-stratified sample: the first N of a class-sorted list (ImageNet) would be
                # a few classes only
                labels = np.asarray(images.targets)[kept]
                _, picked = holdout_split(labels, self.probe_train_size, self.probe_seed, f"{what}, probe")
                kept = kept[picked]
            self.probe_train_set = Subset(eval_view, kept.tolist())
        if need_train:
            self.train_set = training_set(train, self.train_subset, self.batch_size, what)

    def _transform(self, train: bool) -> v2.Compose:
        return build_pixel_transform(
            self.image_size, self.dataset, train, self.hflip, self.pad, self.short_side_range, self.crop_size
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, train=False)

    def probe_train_dataloader(self) -> DataLoader:
        """The ``probe_train_size`` training images, unaugmented, in order (a probe's training set)."""
        return self._loader(self.probe_train_set, self.eval_batch_size, train=False)
