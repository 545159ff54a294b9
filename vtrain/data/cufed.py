"""CUFED (training) and CUFED5 (test) for reference-based super-resolution, as TTSR reads them.

Layouts, under a data set root (the official ``dataset_dir``)::

    train/input/*.png   HR training images (160 x 160 in CUFED)
    train/ref/*.png     their references (up to 160 x 160), paired by sorted file name
    test/CUFED5/NNN_0.png        HR test image
    test/CUFED5/NNN_1..5.png     its references, from most (1) to least (5) similar

Every sample is a dict of [3, H, W] float tensors in [-1, 1]: ``lr`` (HR bicubic-downsampled 4x),
``lr_up`` (``lr`` bicubic-upsampled back), ``hr``, ``ref`` and ``ref_down_up`` (the reference
down- and up-sampled 4x), all resampled with PIL's bicubic filter on 8-bit images as in the official code.
Test samples also carry ``name`` and ``ref_level`` ("1".."5", or "lr" when the LR image is its own
reference, the Urban100 / Sun80 protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vtrain.data.counts import FILES_SKIPPED_EXTENSION, ScanCounts, log_left_out
from vtrain.data.images import ImageFileLoader
from vtrain.data.loading import LoaderMixin, check_format, training_set
from vtrain.data.shards.datasets import ShardImageLoader
from vtrain.data.shards.format import ShardSplit
from vtrain.data.splits import SplitsMixin, require_samples, with_attributes
from vtrain.data.tiny import build_tiny

SCALE = 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
Sample = dict[str, torch.Tensor | str]


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """8-bit RGB [H, W, 3] -> float [3, H, W] in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1) / 127.5 - 1.0)


def crop_to_scale(image: Image.Image) -> Image.Image:
    """Cut the right and bottom edges so that both sides are multiples of 4."""
    w, h = image.size
    return image.crop((0, 0, w // SCALE * SCALE, h // SCALE * SCALE))


def down_up(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(image bicubic-downsampled 4x, that upsampled back to the image's size); sides multiples of 4."""
    w, h = image.size
    small = image.resize((w // SCALE, h // SCALE), Image.BICUBIC)
    return small, small.resize((w, h), Image.BICUBIC)


def hr_sample(hr: Image.Image, ref: Image.Image) -> dict[str, torch.Tensor]:
    """Inputs and target of one HR image (cropped to multiples of 4) and its reference."""
    hr, ref = crop_to_scale(hr), crop_to_scale(ref)
    lr, lr_up = down_up(hr)
    _, ref_down_up = down_up(ref)
    return {
        "lr": to_tensor(lr),
        "lr_up": to_tensor(lr_up),
        "hr": to_tensor(hr),
        "ref": to_tensor(ref),
        "ref_down_up": to_tensor(ref_down_up),
    }


def lr_sample(lr: Image.Image, ref: Image.Image) -> dict[str, torch.Tensor]:
    """Inputs for super-resolving a real LR image (no ground truth): ``lr_up`` is 4x its size."""
    w, h = lr.size
    ref = crop_to_scale(ref)
    _, ref_down_up = down_up(ref)
    lr_up = lr.resize((w * SCALE, h * SCALE), Image.BICUBIC)
    return {
        "lr": to_tensor(lr),
        "lr_up": to_tensor(lr_up),
        "ref": to_tensor(ref),
        "ref_down_up": to_tensor(ref_down_up),
    }


def images_in(folder: Path, skipped: list[Path]) -> list[Path]:
    """The image files of ``folder`` by name; its other files are added to ``skipped``."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    skipped += [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    return [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]


def _scan_counts(root: Path, skipped: list[Path]) -> ScanCounts:
    """The files of ``root`` skipped for their extension, logged once."""
    names = [p.relative_to(root) for p in skipped]
    reason = f"files without an image extension ({', '.join(IMAGE_SUFFIXES)})"
    return ScanCounts(
        str(root), {FILES_SKIPPED_EXTENSION: log_left_out(str(root), FILES_SKIPPED_EXTENSION, names, reason)}
    )


class CUFEDTrain(Dataset):
    """CUFED training pairs ``root/input/*`` and ``root/ref/*``.

    Args:
        root: the folder holding ``input/`` and ``ref/``.
        ref_size: references are padded (with black, bottom-right) to ``ref_size`` x ``ref_size`` so that
            they batch (official: 160, the largest CUFED reference); None: left as they are (evaluation,
            one pair per batch).
        augment: random horizontal / vertical flips and 90-degree rotations, drawn independently for the
            HR image (with its LR) and for the reference, as in the official code. Rotations by 90 / 270
            degrees only for square HR images, so that a batch keeps one shape.
        crop_size: train on a random crop_size x crop_size window of each HR image (a multiple of 4;
            the reference stays whole); None: the whole image, as the official code does.

        shards: read the pairs from the shards of ``python -m vtrain.data.shards cufed`` (``root`` is
            their split folder) instead of from ``root``.

    Files of ``input/`` and ``ref/`` without an image extension are left out, counted in ``scan_counts``.
    """

    def __init__(
        self,
        root: str | Path,
        ref_size: int | None = 160,
        augment: bool = True,
        crop_size: int | None = None,
        shards: ShardSplit | None = None,
    ) -> None:
        root = Path(root)
        if shards is None:
            for sub in ("input", "ref"):
                if not (root / sub).is_dir():
                    raise FileNotFoundError(
                        f"CUFED training set: expected folder {root / sub} (input/ and ref/)"
                    )
            skipped: list[Path] = []
            self.inputs, self.refs = images_in(root / "input", skipped), images_in(root / "ref", skipped)
            self.scan_counts = _scan_counts(root, skipped)
        else:
            self.inputs = [root / file for file in shards.files if file.startswith("input/")]
            self.refs = [root / file for file in shards.files if file.startswith("ref/")]
            self.scan_counts = ScanCounts(shards.index["source"], shards.index["scan_counts"])
        if len(self.inputs) != len(self.refs) or not self.inputs:
            raise ValueError(
                f"CUFED training set under {root}: expected as many references as inputs (at least one), "
                f"found {len(self.inputs)} inputs and {len(self.refs)} references"
            )
        if crop_size is not None and crop_size % SCALE:
            raise ValueError(
                f"CUFED training set: crop_size must be a multiple of {SCALE}, found {crop_size}"
            )
        self.ref_size, self.augment, self.crop_size = ref_size, augment, crop_size
        self.loader = ImageFileLoader() if shards is None else ShardImageLoader(shards, root)

    def __len__(self) -> int:
        return len(self.inputs)

    @staticmethod
    def _flip_rotate(images: list[torch.Tensor], allow_quarter: bool) -> list[torch.Tensor]:
        if torch.rand(()) < 0.5:
            images = [x.flip(-1) for x in images]
        if torch.rand(()) < 0.5:
            images = [x.flip(-2) for x in images]
        k = int(torch.randint(4, ())) if allow_quarter else 2 * int(torch.randint(2, ()))
        return [torch.rot90(x, k, dims=(-2, -1)) for x in images]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        hr, ref = self.loader(self.inputs[index]), self.loader(self.refs[index])
        if self.ref_size is not None and max(ref.size) > self.ref_size:
            raise ValueError(
                f"{self.refs[index]}: reference {ref.size} is larger than ref_size {self.ref_size}"
            )
        if self.crop_size is not None:
            w, h = hr.size
            if min(w, h) < self.crop_size:
                raise ValueError(
                    f"{self.inputs[index]}: {w} x {h} is smaller than crop_size {self.crop_size}"
                )
            left, top = (
                int(torch.randint(w - self.crop_size + 1, ())),
                int(torch.randint(h - self.crop_size + 1, ())),
            )
            hr = hr.crop((left, top, left + self.crop_size, top + self.crop_size))
        sample = hr_sample(hr, ref)
        if self.ref_size is not None:
            for key in ("ref", "ref_down_up"):
                x = sample[key]
                padded = torch.full((3, self.ref_size, self.ref_size), -1.0)
                padded[:, : x.shape[1], : x.shape[2]] = x
                sample[key] = padded
        if self.augment:
            square = sample["hr"].shape[1] == sample["hr"].shape[2]
            lr_keys, ref_keys = ("lr", "lr_up", "hr"), ("ref", "ref_down_up")
            for keys, quarter in ((lr_keys, square), (ref_keys, True)):
                for key, x in zip(keys, self._flip_rotate([sample[k] for k in keys], quarter), strict=True):
                    sample[key] = x.contiguous()
        return sample


class CUFED5(Dataset):
    """CUFED5-layout test set ``root/NNN_0.png`` with references ``root/NNN_<level>.png``.

    Args:
        root: the folder holding the images.
        ref_level: 1 (most similar) .. 5 (least), or "lr": the LR image is its own reference
            (Urban100 / Sun80 style); then the HR images are the ``*_0.*`` files if there are any, else
            every image in the folder.

        shards: read the images from the shards of ``python -m vtrain.data.shards cufed`` (``root`` is
            their split folder) instead of from ``root``.

    Files without an image extension are left out, counted in ``scan_counts``.
    """

    def __init__(self, root: str | Path, ref_level: int | str = 1, shards: ShardSplit | None = None) -> None:
        self.root = Path(root)
        if shards is None and not self.root.is_dir():
            raise FileNotFoundError(f"CUFED5 test set: folder {self.root} does not exist")
        self.ref_level = str(ref_level)
        if self.ref_level not in ("1", "2", "3", "4", "5", "lr"):
            raise ValueError(f"CUFED5: ref_level must be 1..5 or 'lr', found {ref_level!r}")
        if shards is None:
            skipped: list[Path] = []
            images = images_in(self.root, skipped)
            self.scan_counts = _scan_counts(self.root, skipped)
        else:
            images = [self.root / file for file in shards.files]
            self.scan_counts = ScanCounts(shards.index["source"], shards.index["scan_counts"])
        self.inputs = [p for p in images if p.stem.endswith("_0")]
        if self.ref_level == "lr":
            self.inputs = self.inputs or images
            self.refs: list[Path | None] = [None] * len(self.inputs)
        else:
            self.refs = []
            for path in self.inputs:
                matches = [p for p in images if p.stem == f"{path.stem[:-2]}_{self.ref_level}"]
                if not matches:
                    raise FileNotFoundError(
                        f"CUFED5: {path} has no reference {path.stem[:-2]}_{self.ref_level}.*"
                    )
                self.refs.append(matches[0])
        if not self.inputs:
            raise ValueError(f"CUFED5: no *_0 HR images in {self.root}")
        self.loader = ImageFileLoader() if shards is None else ShardImageLoader(shards, self.root)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> Sample:
        hr = self.loader(self.inputs[index])
        ref_path = self.refs[index]
        ref = down_up(crop_to_scale(hr))[0] if ref_path is None else self.loader(ref_path)
        return {**hr_sample(hr, ref), "name": self.inputs[index].stem, "ref_level": self.ref_level}


class SuperResolutionDataModule(LoaderMixin, SplitsMixin, L.LightningDataModule):
    """CUFED training pairs, CUFED5 test (one loader per reference level) and validation: CUFED5 at one
    reference level or, with ``holdout``, a random part of the training pairs, unaugmented, uncropped and
    with unpadded references (see vtrain.data.splits).

    Args:
        root: data set root (the official ``dataset_dir``).
        train_dir, test_dir: the training folder (``input/`` + ``ref/``) and the CUFED5 folder, relative
            to ``root``.
        ref_level: the reference level of validation (official: 1).
        test_ref_levels: one test loader per level; numbers are logged per level.
        ref_size: padded reference size of the training batches.
        augment, crop_size: training augmentation, see :class:`CUFEDTrain`.
        batch_size: training batch size (official: 9); evaluation runs one image at a time (sizes differ).
        tiny: name of a ``vtrain.data.tiny`` set that ``prepare_data`` builds into ``root`` when missing.
        train_subset: keep only the first N training pairs (debugging; after the hold-out).
        holdout: validate on a part of the training pairs instead, left out of training: a fraction in
            (0, 1) or a count, drawn at random by pair; None: no hold-out.
        holdout_seed: the seed that picks the held-out pairs.
        format: "folders", or "shards": ``root`` is a shard directory that ``python -m vtrain.data.shards
            cufed`` wrote from the default ``train`` and ``test/CUFED5`` folders (docs/data.md).

    After ``setup``: ``train_set``, ``val_set``, ``test_set`` (CUFED5 at ``ref_level``) and ``test_sets``
    (one per level of ``test_ref_levels``); ``val_source`` says where validation reads.
    """

    def __init__(
        self,
        root: str,
        train_dir: str = "train",
        test_dir: str = "test/CUFED5",
        ref_level: int | str = 1,
        test_ref_levels: Sequence[int | str] = (1, 2, 3, 4, 5),
        ref_size: int = 160,
        batch_size: int = 9,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        augment: bool = True,
        crop_size: int | None = None,
        tiny: str | None = None,
        train_subset: int | None = None,
        holdout: float | int | None = None,
        holdout_seed: int = 0,
        format: str = "folders",
    ) -> None:
        super().__init__()
        self.format = check_format(format, tiny, "SuperResolutionDataModule")
        self.root, self.tiny = Path(root), tiny
        self._init_splits(holdout, holdout_seed)
        self.train_dir, self.test_dir = self.root / train_dir, self.root / test_dir
        self.ref_level, self.test_ref_levels = ref_level, list(test_ref_levels)
        self.ref_size, self.batch_size, self.augment, self.crop_size = (
            ref_size,
            batch_size,
            augment,
            crop_size,
        )
        self.num_workers, self.train_subset = num_workers, train_subset
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.test_sets: list[Dataset] = []

    def prepare_data(self) -> None:
        if self.tiny is not None:
            build_tiny(self.tiny, self.root)

    def setup(self, stage: str | None = None) -> None:
        """Loads CUFED5 for every stage and the training pairs for "fit", and for "validate" with a
        hold-out."""
        if self.test_set is None:
            shards = ShardSplit(self.root, ("cufed",), "test") if self.format == "shards" else None
            test_dir = self.test_dir if shards is None else shards.directory
            test_set = CUFED5(test_dir, self.ref_level, shards)
            self.test_set = require_samples(test_set, f"CUFED5 {test_dir}")
            self.test_sets = [CUFED5(test_dir, level, shards) for level in self.test_ref_levels]
            if self.holdout is None:
                self.val_set = self.test_set
        if not self._needs_train_split(stage):
            return
        shards = ShardSplit(self.root, ("cufed",), "train") if self.format == "shards" else None
        train_dir = self.train_dir if shards is None else shards.directory
        train = CUFEDTrain(train_dir, self.ref_size, self.augment, self.crop_size, shards)
        eval_view = with_attributes(train, ref_size=None, augment=False, crop_size=None)
        what = f"CUFED under {self.train_dir}"
        train = self._hold_out(train, eval_view, what)
        self.train_set = training_set(train, self.train_subset, self.batch_size, what)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, 1, train=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(test_set, 1, train=False) for test_set in self.test_sets]
