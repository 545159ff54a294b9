"""DataLoader plumbing the DataModules share."""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import DataLoader, Dataset, Subset
from torchdata.stateful_dataloader import StatefulDataLoader

from vtrain.data.counts import collect_counts, held_datasets
from vtrain.data.sampler import RepeatedAugmentationSampler, SeededSamples, SeededShuffleSampler
from vtrain.data.splits import base_dataset

FORMATS = ("folders", "shards")


def check_format(format: str, tiny: str | None, owner: str) -> str:
    """``format`` ("folders" or "shards", data.format) after checking it, and that a tiny set (built as
    folders) is not asked for with shards."""
    if format not in FORMATS:
        raise ValueError(f"{owner}: data.format must be one of {FORMATS}, found {format!r}")
    if format == "shards" and tiny is not None:
        raise ValueError(
            f"{owner}: data.tiny={tiny!r} builds a folder layout, data.format=shards reads a shard "
            "directory; build the tiny set, convert it (python -m vtrain.data.shards) and train from the "
            "shards with data.tiny=null"
        )
    return format


def training_set(dataset: Dataset, subset: int | None, batch_size: int, what: str) -> Dataset:
    """`dataset`, cut to its first `subset` samples when asked (debugging), checked to fill one batch.

    The train loader drops the last incomplete batch, so a set smaller than `batch_size` would produce no
    batch at all: that raises, naming `what` (the data set and where it lives).
    """
    if subset is not None and subset < len(dataset):
        dataset = Subset(dataset, range(subset))
    if len(dataset) < batch_size:
        raise ValueError(f"{what}: {len(dataset)} training samples are fewer than batch_size {batch_size}")
    return dataset


def make_loader(
    dataset: Dataset | None,
    batch_size: int,
    train: bool,
    num_workers: int,
    pin_memory: bool,
    persistent_workers: bool,
    collate_fn: Callable | None,
    owner: str,
    repeated_aug: int = 1,
    with_seed: bool = False,
) -> DataLoader:
    """A shuffled, last-batch-dropping loader for training, a sequential complete one for evaluation.

    The training loader is resumable mid-epoch (a ``StatefulDataLoader``, whose position Lightning stores
    in checkpoints) and draws its order and each sample's augmentations from (seed, epoch, index) only,
    see :mod:`vtrain.data.sampler`; in DDP it shards the data itself, so Lightning leaves it as it is.
    ``repeated_aug`` > 1 trains with DeiT's repeated augmentation, each image that many times per epoch
    (:class:`~vtrain.data.sampler.RepeatedAugmentationSampler`); 1 shuffles every image once.
    ``with_seed``: every sample carries its augmentation seed (0 in evaluation), for ``data.decode=gpu``.
    """
    if dataset is None:
        raise RuntimeError(f"{owner}: call setup() before asking for a dataloader")
    if train:
        sampler = (
            RepeatedAugmentationSampler(dataset, repeats=repeated_aug)
            if repeated_aug > 1
            else SeededShuffleSampler(dataset)
        )
        return StatefulDataLoader(
            SeededSamples(dataset, with_seed=with_seed),
            batch_size=batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            collate_fn=collate_fn,
        )
    return DataLoader(
        SeededSamples(dataset, with_seed=True) if with_seed else dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
        collate_fn=collate_fn,
    )


class LoaderMixin:
    """``_loader(dataset, batch_size, train)`` for a DataModule: :func:`make_loader` with the module's
    ``num_workers``, ``pin_memory``, ``persistent_workers``, ``collate`` (None: PyTorch's default) and
    ``repeated_aug`` (1: off); ``decode`` "gpu" gives every sample its augmentation seed."""

    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    collate: Callable | None = None
    repeated_aug: int = 1
    decode: str = "cpu"

    def _loader(self, dataset: Dataset | None, batch_size: int, train: bool) -> DataLoader:
        return make_loader(
            dataset,
            batch_size,
            train,
            self.num_workers,
            self.pin_memory,
            self.persistent_workers,
            self.collate,
            type(self).__name__,
            self.repeated_aug,
            with_seed=self.decode == "gpu",
        )

    def data_counts(self) -> dict[str, int]:
        """What this module's data sets left out so far, by key (see :mod:`vtrain.data.counts`): files,
        labels and boxes their readers skipped while indexing (once per annotation file or folder), and
        ``data/corrupt_images_skipped`` (summed over DataLoader worker processes). Keys that none of the
        data sets counts are absent; call after ``setup``, at the end of a run for the corrupt count."""
        return collect_counts(held_datasets(self))


def corrupt_images_skipped(*datasets: Dataset | None) -> int:
    """Images skipped as corrupt so far by the datasets' image loaders (`ImageFileLoader.skipped`, summed
    over worker processes); datasets without such a loader (CIFAR's in-memory arrays) count 0. A loader
    that several datasets share (a split and its eval-transform view, see vtrain.data.splits) counts once."""
    loaders = [getattr(base_dataset(d), "loader", None) for d in datasets]
    unique = {id(loader): loader for loader in loaders if hasattr(loader, "skipped")}
    return sum(loader.skipped for loader in unique.values())
