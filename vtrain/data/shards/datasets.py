"""Shard-backed sources behind the folder readers' interfaces.

* :class:`ShardImageLoader` replaces a data set's :class:`~vtrain.data.images.ImageFileLoader`: called with
  the path the folder reader would open, it decodes that file's original bytes from the shards, with the
  same 8-bit RGB conversion and the same corrupt-image handling. COCO detection, instance and panoptic
  segmentation and CUFED / CUFED5 read their images through it and everything else (annotation index,
  targets, transforms) as from folders; Cityscapes reads its images and label files from the shards too.
* :class:`ShardClassification` is ImageNet or CIFAR from shards: the same samples, labels, class names and
  scan counts as :class:`~vtrain.data.imagenet.ImageNet` / :class:`~vtrain.data.cifar.CIFAR`, the same
  image types handed to the transforms (a PIL image for ImageNet, a ``tv_tensors.Image`` for CIFAR).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from vtrain.data.counts import ScanCounts
from vtrain.data.images import ImageFileLoader, open_rgb
from vtrain.data.shards.format import ShardSplit, sample_key


class ShardImageLoader(ImageFileLoader):
    """An :class:`~vtrain.data.images.ImageFileLoader` whose files live in ``shards``: ``loader(path)`` with
    ``path`` under ``folder`` (the image folder the converter read, e.g. ``<root>/train2017``) decodes the
    bytes that file had. Unreadable images raise or are skipped and counted exactly as from folders; errors
    name the file and the sample."""

    def __init__(self, shards: ShardSplit, folder: str | Path, skip_corrupt: bool = False) -> None:
        super().__init__(skip_corrupt)
        self.shards, self.folder = shards, Path(folder)

    def read(self, path: str | Path) -> bytes:
        return self.shards.image_bytes(self.shards.position(self._name(path)))

    def open(self, path: str | Path) -> Image.Image:
        name = self._name(path)
        index = self.shards.position(name)
        data = self.shards.image_bytes(index)
        return open_rgb(io.BytesIO(data), f"{name} (sample {sample_key(index)} in {self.shards.directory})")

    def _name(self, path: str | Path) -> str:
        return Path(os.path.relpath(path, self.folder)).as_posix()


class ShardClassification(Dataset):
    """ImageNet ("train" / "val") or CIFAR-10 / CIFAR-100 ("train" / "test") from a shard directory.

    Args:
        root: the shard directory (the converter's ``--out``).
        dataset: "imagenet", "cifar10" or "cifar100"; the shards must hold that data set.
        split: the split to read.
        transform: as for the folder readers (a PIL RGB image for ImageNet, a ``tv_tensors.Image``
            [3, 32, 32] uint8 for CIFAR).
        skip_corrupt: as for :class:`~vtrain.data.imagenet.ImageNet`.
        label: CIFAR-100's "fine" (default) or "coarse" labels.

    Attributes (as the folder readers'): ``classes``, ``targets`` (int64 numpy array), ``loader``,
    ``scan_counts`` (what the folder scan left out when the shards were made), ``files`` the source file of
    each sample.
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        split: str,
        transform: Callable[[Any], Any] | None = None,
        skip_corrupt: bool = False,
        label: str = "fine",
    ) -> None:
        self.shards = ShardSplit(root, (dataset,), split)
        index = self.shards.index
        prefix = "" if label == "fine" else f"{label}_"
        if f"{prefix}labels" not in index:
            raise ValueError(
                f"{self.shards.directory}: no {label!r} labels in these {dataset} shards, found "
                f"{sorted(k for k in index if k.endswith('labels'))}"
            )
        self.classes: list[str] = index[f"{prefix}classes"]
        self.targets = np.asarray(index[f"{prefix}labels"], dtype=np.int64)
        self.files = self.shards.files
        self.dataset, self.split, self.transform = dataset, split, transform
        self.loader = ShardImageLoader(self.shards, self.shards.directory, skip_corrupt)
        self.scan_counts = ScanCounts(index.get("source", str(root)), index.get("scan_counts", {}))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        image = self.loader(self.shards.directory / self.files[index])
        if image is None:
            return None
        if self.dataset != "imagenet":  # CIFAR's readers hand the transforms a uint8 tensor image
            image = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])
