"""ImageNet-1k classification (ILSVRC-2012) from image folders, in either of its two common layouts.

Class index = position of the wnid in the sorted list of the 1000 ImageNet-1k wnids (``imagenet_wnids.txt``,
the order of ``synset_words.txt`` and of every released checkpoint), also when only some class folders are
present: a 10-class subset still has labels in [0, 1000). The layout is detected from ``root``::

    folder layout (ImageFolder; also the downsampled 32 / 64 px ImageNet variants stored as images)
        <root>/train/<wnid>/*.JPEG
        <root>/val/<wnid>/*.JPEG
    Kaggle "ImageNet Object Localization Challenge" layout
        <root>/ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG
        <root>/ILSVRC/Data/CLS-LOC/val/*.JPEG
        <root>/LOC_val_solution.csv    ImageId,PredictionString (its first token is the wnid)
        <root>/LOC_synset_mapping.txt  optional; if present, its wnids must be those of imagenet_wnids.txt
"""

import csv
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchvision.datasets import DatasetFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from vtrain.data.images import ImageFileLoader

IMAGENET_WNIDS: tuple[str, ...] = tuple(Path(__file__).with_name("imagenet_wnids.txt").read_text().split())
WNID_TO_INDEX: dict[str, int] = {wnid: index for index, wnid in enumerate(IMAGENET_WNIDS)}

IMAGENET_LAYOUT = """expected one of these layouts:
  folder layout (also for the downsampled 32/64 px variants):
    <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG
  Kaggle layout:
    <root>/ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG, <root>/ILSVRC/Data/CLS-LOC/val/*.JPEG
    and <root>/LOC_val_solution.csv
or build a tiny stand-in: python -m vtrain.data.tiny --root DIR imagenet_tiny (then root=DIR/imagenet_tiny)"""

_KAGGLE_DIR = Path("ILSVRC", "Data", "CLS-LOC")


def _detect_layout(root: Path) -> str:
    """ "kaggle" or "folders"; raises FileNotFoundError naming root when neither is there."""
    if (root / _KAGGLE_DIR).is_dir():
        return "kaggle"
    if (root / "train").is_dir() or (root / "val").is_dir():
        return "folders"
    raise FileNotFoundError(f"ImageNet not found under {root}; {IMAGENET_LAYOUT}")


def _check_synset_mapping(path: Path) -> None:
    wnids = tuple(line.split()[0] for line in path.read_text().splitlines() if line.strip())
    if wnids != IMAGENET_WNIDS:
        unknown = sorted(set(wnids) - set(IMAGENET_WNIDS))[:5]
        raise ValueError(
            f"{path}: expected the 1000 ImageNet-1k wnids in sorted order, found {len(wnids)} wnids"
            + (f" including unknown ones {unknown}" if unknown else "")
        )


class ImageNet(DatasetFolder):
    """ImageNet-1k ``split`` ("train" or "val") under ``root``, in the folder or the Kaggle layout.

    Args:
        root: data set root (see the module docstring for the layouts).
        split: "train" or "val".
        transform: applied to the RGB PIL image of each sample.
        skip_corrupt: drop unreadable images (the sample becomes None, ``collate_skip_corrupt`` removes it,
            ``self.loader.skipped`` counts it) instead of raising an error that names the file.

    Attributes:
        classes: the 1000 wnids (the label space), ``class_to_idx`` their indices, ``samples`` the
            (path, class index) pairs found, ``layout`` "folders" or "kaggle".
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"ImageNet split must be 'train' or 'val', found {split!r}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"ImageNet root {root} is not a directory; {IMAGENET_LAYOUT}")
        self.layout = _detect_layout(root)
        self.split = split
        self._solution_csv = None
        split_dir = root / split
        if self.layout == "kaggle":
            split_dir = root / _KAGGLE_DIR / split
            if (root / "LOC_synset_mapping.txt").is_file():
                _check_synset_mapping(root / "LOC_synset_mapping.txt")
            if split == "val":
                self._solution_csv = root / "LOC_val_solution.csv"
                if not self._solution_csv.is_file():
                    raise FileNotFoundError(
                        f"ImageNet val labels {self._solution_csv} do not exist; {IMAGENET_LAYOUT}"
                    )
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"ImageNet {split} split not found: {split_dir} is not a directory; {IMAGENET_LAYOUT}"
            )
        super().__init__(
            split_dir,
            loader=ImageFileLoader(skip_corrupt),
            extensions=IMG_EXTENSIONS,
            transform=transform,
            allow_empty=True,
        )
        if not self.samples:
            raise FileNotFoundError(
                f"no images ({', '.join(IMG_EXTENSIONS)}) found for ImageNet {split} under {split_dir}; "
                f"{IMAGENET_LAYOUT}"
            )

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        """All 1000 wnids, after checking that every class folder present is one of them."""
        if self._solution_csv is None:
            folders = [p.name for p in Path(directory).iterdir() if p.is_dir() and not p.name.startswith(".")]
            unknown = sorted(name for name in folders if name not in WNID_TO_INDEX)
            if unknown:
                raise ValueError(
                    f"{directory}: class folder {unknown[0]!r} is not an ImageNet-1k wnid ({len(unknown)} "
                    f"unknown folders: {unknown[:5]}); expected folders named by wnid, like 'n01440764'"
                )
        return list(IMAGENET_WNIDS), dict(WNID_TO_INDEX)

    def make_dataset(
        self,
        directory: str | Path,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        """(path, class index) pairs: from the class folders, or for Kaggle val from LOC_val_solution.csv."""
        if self._solution_csv is None:
            return DatasetFolder.make_dataset(
                directory, class_to_idx, extensions=extensions, is_valid_file=is_valid_file, allow_empty=True
            )
        return self._kaggle_val_samples(Path(directory), class_to_idx)

    def _kaggle_val_samples(self, directory: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
        """Labels of the flat Kaggle val folder; rows whose image is absent are left out (partial copies)."""
        present = {entry.name for entry in os.scandir(directory)}
        samples = []
        with self._solution_csv.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
                raise ValueError(
                    f"{self._solution_csv}: expected the header 'ImageId,PredictionString', "
                    f"found {reader.fieldnames}"
                )
            for line, row in enumerate(reader, start=2):
                tokens = (row["PredictionString"] or "").split()
                if not tokens or tokens[0] not in class_to_idx:
                    raise ValueError(
                        f"{self._solution_csv}, line {line}: expected a PredictionString starting with an "
                        f"ImageNet-1k wnid, found {row['PredictionString']!r}"
                    )
                name = f"{row['ImageId']}.JPEG"
                if name in present:
                    samples.append((str(directory / name), class_to_idx[tokens[0]]))
        return sorted(samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        """(image, class index), or None when the image is corrupt and ``skip_corrupt`` is set."""
        path, target = self.samples[index]
        image = self.loader(path)
        if image is None:
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, target
