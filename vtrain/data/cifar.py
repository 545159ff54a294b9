"""CIFAR-10 / CIFAR-100 from the python pickle batches (Krizhevsky, 2009).

Our own reader rather than ``torchvision.datasets.CIFAR10``: torchvision refuses files whose MD5 differs
from the official release, which rules out truncated copies and the tiny stand-ins of ``vtrain.data.tiny``.
Nothing here checks MD5s or the row count that ``batches.meta`` claims; each batch is checked for the keys,
the ``N x 3072`` uint8 data and one label per row.

Layout (``root`` is the folder holding the batches folder, or the batches folder itself)::

    <root>/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}
"""

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from vtrain.data.safe_pickle import RefusedPickleError, load_data_pickle


@dataclass(frozen=True)
class _Variant:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_keys: dict[str, str]  # label kind ("fine" / "coarse") -> key in a batch
    names_keys: dict[str, str]  # label kind -> key in the meta file


VARIANTS = {
    "cifar10": _Variant(
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_keys={"fine": "labels"},
        names_keys={"fine": "label_names"},
    ),
    "cifar100": _Variant(
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_keys={"fine": "fine_labels", "coarse": "coarse_labels"},
        names_keys={"fine": "fine_label_names", "coarse": "coarse_label_names"},
    ),
}

CIFAR_LAYOUT = """expected layout (the "python version" of https://www.cs.toronto.edu/~kriz/cifar.html):
  <root>/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}
  <root>/cifar-100-python/{train, test, meta}
or build a tiny stand-in: python -m vtrain.data.tiny --root DIR cifar10_tiny (then root=DIR/cifar10_tiny)"""


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def load_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys.

    The official files are Python 2 pickles: ``encoding="latin1"`` turns their byte-string keys into str
    and keeps the numpy data intact; keys that are real ``bytes`` (written from Python 3) are decoded too.
    Read with :func:`~vtrain.data.safe_pickle.load_data_pickle`, so a file that names any Python global
    other than numpy's array constructors is refused (RefusedPickleError) before anything in it runs.
    """
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file {path} does not exist; {CIFAR_LAYOUT}")
    try:
        content = load_data_pickle(path, encoding="latin1")
    except RefusedPickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ValueError(f"{path}: not a readable CIFAR pickle ({error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a pickled dict, found {type(content).__name__}")
    return {_text(key): value for key, value in content.items()}


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 32, 32, 3]`` uint8 (HWC) and labels ``[N]`` int64 of one batch file."""
    batch = load_cifar_pickle(path)
    missing = [key for key in ("data", label_key) if key not in batch]
    if missing:
        raise ValueError(f"{path}: expected keys 'data' and {label_key!r}, found keys {sorted(batch)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise ValueError(f"{path}: expected 'data' as an N x 3072 uint8 array, found {found}")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (len(data),):
        raise ValueError(
            f"{path}: expected {len(data)} {label_key!r} (one per data row), found {labels.size}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: expected {label_key!r} in [0, {num_classes}), found [{labels.min()}, {labels.max()}]"
        )
    # Rows are channel-major (1024 red, 1024 green, 1024 blue values, each 32 x 32 row-major).
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


class CIFAR(Dataset):
    """CIFAR-10 or CIFAR-100, held in memory.

    Args:
        root: folder holding ``cifar-10-batches-py`` / ``cifar-100-python``, or that folder itself.
        split: "train" (all training batches) or "test".
        variant: "cifar10" or "cifar100".
        transform: applied to the ``tv_tensors.Image`` [3, 32, 32] uint8 of each sample.
        label: "fine" or, for CIFAR-100 only, "coarse" (the 20 superclasses).

    Attributes:
        images: ``[N, 32, 32, 3]`` uint8 numpy array (HWC).
        targets: ``[N]`` int64 numpy array.
        classes: the label names from the meta file, index = label.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        variant: str = "cifar10",
        transform: Callable[[Any], Any] | None = None,
        label: str = "fine",
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"CIFAR variant must be one of {sorted(VARIANTS)}, found {variant!r}")
        spec = VARIANTS[variant]
        if label not in spec.label_keys:
            raise ValueError(f"{variant} label must be one of {sorted(spec.label_keys)}, found {label!r}")
        if split not in ("train", "test"):
            raise ValueError(f"CIFAR split must be 'train' or 'test', found {split!r}")
        root = Path(root)
        folder = root if root.name == spec.folder else root / spec.folder
        if not folder.is_dir():
            raise FileNotFoundError(f"{variant} not found: {folder} is not a directory; {CIFAR_LAYOUT}")

        meta_path = folder / spec.meta_file
        meta = load_cifar_pickle(meta_path)
        names_key = spec.names_keys[label]
        if names_key not in meta:
            raise ValueError(f"{meta_path}: expected key {names_key!r}, found keys {sorted(meta)}")
        self.classes = [_text(name) for name in meta[names_key]]

        files = spec.train_files if split == "train" else spec.test_files
        batches = [_read_batch(folder / name, spec.label_keys[label], len(self.classes)) for name in files]
        self.images = np.concatenate([images for images, _ in batches])
        self.targets = np.concatenate([labels for _, labels in batches])
        self.root, self.split, self.variant, self.transform = folder, split, variant, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = tv_tensors.Image(torch.from_numpy(self.images[index]).permute(2, 0, 1))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])
