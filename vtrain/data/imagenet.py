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
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from vtrain.data.counts import (
    FILES_SKIPPED_EXTENSION,
    IMAGES_WITHOUT_LABEL,
    LABELS_WITHOUT_IMAGE,
    ScanCounts,
    log_left_out,
)
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
_NOT_IMAGES = f"files without an image extension ({', '.join(IMG_EXTENSIONS)})"


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
        scan_counts: what the scan left out (logged once, with examples): files without an image extension,
            and for Kaggle val the images no row of ``LOC_val_solution.csv`` labels and the rows whose image
            is absent (a partial copy).
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
        self._left_out: dict[str, tuple[list[str], str]] = {}
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
        source = str(split_dir)
        self.scan_counts = ScanCounts(
            source,
            {key: log_left_out(source, key, items, why) for key, (items, why) in self._left_out.items()},
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
        """(path, class index) pairs: from the class folders, or for Kaggle val from LOC_val_solution.csv;
        what is left out goes to ``self._left_out``."""
        if self._solution_csv is not None:
            return self._kaggle_val_samples(Path(directory), class_to_idx)
        skipped: list[str] = []

        def is_image(path: str) -> bool:
            if has_file_allowed_extension(path, IMG_EXTENSIONS):
                return True
            skipped.append(os.path.relpath(path, directory))
            return False

        samples = DatasetFolder.make_dataset(
            directory, class_to_idx, is_valid_file=is_image, allow_empty=True
        )
        self._left_out[FILES_SKIPPED_EXTENSION] = (sorted(skipped), _NOT_IMAGES)
        return samples

    def _kaggle_val_samples(self, directory: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
        """Labels of the flat Kaggle val folder; rows whose image is absent are left out (partial copies)."""
        present = {entry.name for entry in os.scandir(directory) if entry.is_file()}
        images = {name for name in present if has_file_allowed_extension(name, IMG_EXTENSIONS)}
        samples, absent = [], []
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
                else:
                    absent.append(row["ImageId"])
        labelled = {Path(path).name for path, _ in samples}
        csv_name = self._solution_csv.name
        self._left_out = {
            FILES_SKIPPED_EXTENSION: (sorted(present - images), _NOT_IMAGES),
            IMAGES_WITHOUT_LABEL: (sorted(images - labelled), f"images that no row of {csv_name} labels"),
            LABELS_WITHOUT_IMAGE: (absent, f"rows of {csv_name} whose image <ImageId>.JPEG is absent"),
        }
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
