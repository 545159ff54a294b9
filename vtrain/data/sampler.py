"""Training-set order and augmentation randomness that depend only on (seed, epoch, sample index).

Two properties follow, and the cluster tests check both:

* exact resume: a run killed in the middle of an epoch and resumed from its last checkpoint sees the same
  batches, with the same random crops, flips and erasings, as the run that was never interrupted; the
  loader skips the batches already trained on (torchdata's ``StatefulDataLoader``, whose position is saved
  in every checkpoint by Lightning);
* world-size independence: N DDP ranks together see, at every optimizer step, the same samples with the
  same augmentations as one process with an N times larger batch.

Per-worker random streams (PyTorch's default) give neither: a resumed worker restarts its stream, and
which worker or rank draws a sample depends on the world size.

:class:`RepeatedAugmentationSampler` is DeiT's repeated augmentation with the same two properties.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, get_worker_info
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler


def global_seed() -> int:
    """The seed of `seed_everything` (Lightning exports it as PL_GLOBAL_SEED, so DDP ranks and data-loader
    workers inherit it), 0 when the run is not seeded: every rank must shuffle with the same seed."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentations in one epoch (SplitMix64 over the three numbers)."""
    mask = (1 << 64) - 1
    x = 0
    for part in (seed, epoch, index):
        x = (x ^ (part & mask)) + 0x9E3779B97F4A7C15 & mask
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & mask
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & mask
        x ^= x >> 31
    return x >> 1


class SeededShuffleSampler(StatefulDistributedSampler):
    """Shuffles with ``seed + epoch`` (as ``DistributedSampler`` does) and yields ``(index, sample_seed)``
    pairs for :class:`SeededSamples`.

    The rank and world size are read from ``torch.distributed`` when it is initialised (Lightning builds
    the train loader after the process group exists), else this is a one-process sampler. Rank r takes
    every world-size-th index of the permutation, so the ranks' i-th batches together are exactly the
    i-th batch of a single process whose batch is world-size times larger.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=global_seed() if seed is None else seed,
            drop_last=False,
        )

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in super().__iter__():
            yield index, sample_seed(self.seed, self.epoch, index)


class RepeatedAugmentationSampler(SeededShuffleSampler):
    """DeiT's repeated augmentation (Hoffer et al. 2020; facebookresearch/deit samplers.py ``RASampler``):
    every image of an epoch's shuffled order appears ``repeats`` times in a row, each copy with
    augmentations of its own, and rank r takes every world-size-th entry of that list, so the copies of one
    image land on different ranks. An epoch is as long as DeiT's: the data set's length rounded down to a
    multiple of 256 (samplers.py:35), so it sees about 1 / ``repeats`` of the images.

    Yields ``(index, sample_seed)`` pairs for :class:`SeededSamples`; copy k of image i draws with
    ``sample_seed(seed, epoch, i * repeats + k)``. As for :class:`SeededShuffleSampler`, the ranks' i-th
    batches together are the i-th batch of one process with a world-size times larger batch, and the
    position in the epoch is saved for an exact mid-epoch resume. The order is ``torch.randperm`` seeded
    with ``seed + epoch`` (DeiT seeds it with the epoch alone).
    """

    # DeiT samplers.py:35 rounds the epoch down to a multiple of 256 samples
    EPOCH_MULTIPLE = 256

    def __init__(
        self,
        dataset: Dataset,
        repeats: int = 3,
        seed: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(dataset, seed=seed, num_replicas=num_replicas, rank=rank)
        if repeats < 1:
            raise ValueError(f"RepeatedAugmentationSampler: repeats must be at least 1, found {repeats}")
        size = len(dataset)  # type: ignore[arg-type]
        if size < self.EPOCH_MULTIPLE:
            raise ValueError(
                f"RepeatedAugmentationSampler: an epoch is the data set's {size} samples rounded down to a "
                f"multiple of {self.EPOCH_MULTIPLE} (as DeiT's RASampler), which leaves none; "
                "data.repeated_aug=1 turns repeated augmentation off"
            )
        self.repeats = repeats
        self.num_samples = size // self.EPOCH_MULTIPLE * self.EPOCH_MULTIPLE // self.num_replicas
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # the position bookkeeping of StatefulDistributedSampler.__iter__, over this order
        start, self.next_yielded = self.next_yielded or 0, None
        self.yielded = start
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        positions = range(self.rank, self.total_size, self.num_replicas)
        for position in positions[start:]:
            image, copy = divmod(position, self.repeats)
            index = order[image]
            self.yielded += 1
            yield index, sample_seed(self.seed, self.epoch, index * self.repeats + copy)


@contextlib.contextmanager
def seeded_generators(seed: int) -> Iterator[None]:
    """Runs its body with torch's CPU generator, Python's ``random`` and NumPy's global generator seeded by
    ``seed``, and gives the caller's random states back afterwards. The draws of a sample's augmentations,
    in a loader worker (:class:`SeededSamples`) or on the GPU after the batch arrived
    (:mod:`vtrain.data.gpu_decode`). In a loader worker process the states are not given back: nothing
    there draws from them but the samples, each of which seeds them anew, and saving NumPy's state alone
    costs a tenth of a millisecond per sample."""
    if get_worker_info() is not None:
        _seed_all(seed)
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            _seed_all(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _seed_all(seed: int) -> None:
    # the CPU generator only: torch.manual_seed would also reseed CUDA's, which the training step uses
    # (dropout) when the loader runs in the main process
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's legacy seeds are 32-bit


class SeededSamples(Dataset):
    """Wraps a map-style dataset so that ``dataset[(index, seed)]`` runs the wrapped ``dataset[index]``
    (its loading and transforms) with every random generator a transform may draw from seeded by
    ``seed``: torch's CPU generator (torchvision), Python's ``random`` and NumPy's global generator
    (timm's RandAugment, random erasing and random-resized crop), leaving the caller's random states as
    they were. Integer indices pass through unchanged.

    ``with_seed``: each sample (a tuple) gets its seed appended, 0 for integer indices, for augmentations
    that run after the batch is on the GPU (``data.decode=gpu``, :mod:`vtrain.data.gpu_decode`); a None
    sample (a skipped corrupt image) stays None."""

    def __init__(self, dataset: Dataset, with_seed: bool = False) -> None:
        self.dataset, self.with_seed = dataset, with_seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is None:
            sample = self.dataset[index]
        else:
            with seeded_generators(seed):
                sample = self.dataset[index]
        if self.with_seed and sample is not None:
            return (*sample, seed or 0)
        return sample

    def __getattr__(self, name: str):
        # `loader.dataset.categories`, `.loader` and the like keep working through the wrapper; special
        # names do not: a wrapped Subset's `__getitems__` would fetch (index, seed) keys past `__getitem__`
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
