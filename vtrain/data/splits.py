"""Which samples each stage reads, so that model selection never happens on the split that is reported.

    test        always the official evaluation split (CIFAR's test batch, ImageNet val, COCO val2017,
                Cityscapes val, CUFED5);
    validation  without a hold-out, that same split (as the papers' recipes do); with ``holdout`` set, a
                seeded part of the training split, read with the eval transforms and left out of training.

``monitor``, early stopping and the best checkpoint all read validation, so with a hold-out the number that
``test`` reports comes from images that chose nothing. ``holdout_split`` makes the index split (stratified by
class where there are labels); ``SplitsMixin`` gives a DataModule its ``train_set`` / ``val_set`` /
``test_set`` plumbing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

Holdout = float | int | None


def check_holdout(holdout: Holdout, holdout_seed: int | None, owner: str) -> None:
    """Raise ValueError naming ``owner`` unless ``holdout`` is None, a fraction in (0, 1) or a count >= 1,
    and, with a hold-out, ``holdout_seed`` an integer (every run and every DDP rank must draw the same)."""
    if holdout is None:
        return
    fraction = isinstance(holdout, float) and 0 < holdout < 1
    count = isinstance(holdout, int) and not isinstance(holdout, bool) and holdout >= 1
    if not (fraction or count):
        raise ValueError(
            f"{owner}: holdout must be null, a fraction in (0, 1) or an integer count >= 1, found {holdout!r}"
        )
    if not isinstance(holdout_seed, int) or isinstance(holdout_seed, bool):
        raise ValueError(f"{owner}: holdout_seed must be an integer, found {holdout_seed!r}")


def holdout_count(n: int, holdout: float | int, what: str) -> int:
    """Samples to hold out of ``n``: ``holdout`` itself (a count) or ``holdout * n`` rounded half up (a
    fraction). Raises ValueError naming ``what`` when that leaves validation or training without a sample."""
    count = holdout if isinstance(holdout, int) else math.floor(holdout * n + 0.5)
    if count < 1:
        raise ValueError(
            f"{what}: holdout {holdout} of {n} training samples is {count} samples, an empty validation "
            "split; expected a larger fraction or a count >= 1"
        )
    if count >= n:
        raise ValueError(
            f"{what}: holdout {holdout} of {n} training samples leaves no training sample; expected a count "
            f"below {n} or a fraction below 1"
        )
    return count


def holdout_split(
    samples: int | Sequence[int] | np.ndarray, holdout: float | int, seed: int, what: str = "training split"
) -> tuple[np.ndarray, np.ndarray]:
    """Split the indices ``0 .. N-1`` of a training split into (train_idx, val_idx).

    Args:
        samples: N (a plain seeded choice of images) or the class labels [N] (stratified: class c gives
            ``count * N_c / N`` samples, rounded to one of its two neighbours so that the counts add up).
        holdout: a fraction in (0, 1) of the N samples or a count (see :func:`holdout_count`).
        seed: the split depends on ``seed``, N, ``holdout`` and the labels only.
        what: the split and where it lives, for errors.

    Returns:
        Two sorted int64 arrays, disjoint, together ``0 .. N-1``.
    """
    labels = np.zeros(samples, np.int64) if isinstance(samples, int) else np.asarray(samples)
    n = len(labels)
    count = holdout_count(n, holdout, what)
    rng = np.random.default_rng(seed)
    _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    quota = count * sizes / n
    take = np.floor(quota).astype(np.int64)
    # largest remainders first, ties in a seeded random order rather than always to the lowest classes
    order = rng.permutation(len(sizes))
    order = order[np.argsort(take[order] - quota[order], kind="stable")]
    take[order[: count - take.sum()]] += 1
    # a random order of the samples, grouped by class: each class's first `take` samples are held out
    shuffled = rng.permutation(n)
    shuffled = shuffled[np.argsort(inverse[shuffled], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    classes = inverse[shuffled]
    held = np.zeros(n, bool)
    held[shuffled] = np.arange(n) - starts[classes] < take[classes]
    return np.flatnonzero(~held), np.flatnonzero(held)


def with_attributes(dataset: Dataset, **attributes: Any) -> Dataset:
    """A shallow copy of ``dataset`` with ``attributes`` replaced, e.g. ``transform=eval_transform``: the
    copy shares what the reader scanned or loaded (ImageNet's file list, CIFAR's arrays, COCO's index), so a
    split is read once and served with two pipelines. Raises AttributeError for an attribute it lacks."""
    for name in attributes:
        if not hasattr(dataset, name):
            raise AttributeError(f"{type(dataset).__name__} has no attribute {name!r} to replace")
    view = copy.copy(dataset)
    for name, value in attributes.items():
        setattr(view, name, value)
    return view


def base_dataset(dataset: Dataset | None) -> Dataset | None:
    """The reader under any number of ``Subset`` wrappers."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def require_samples(dataset: Dataset, what: str) -> Dataset:
    """``dataset``, after checking that it has a sample; ``what`` names the split and its source."""
    if len(dataset) == 0:
        raise ValueError(f"{what}: the split is empty; expected at least one sample to validate or test on")
    return dataset


class SplitsMixin:
    """``train_set`` / ``val_set`` / ``test_set`` of a DataModule and the choice of its validation split.

    A DataModule calls ``_init_splits(holdout, holdout_seed)`` in ``__init__``; in ``setup`` it loads
    ``test_set`` (and, without a hold-out, makes it ``val_set`` as well), loads the training split when
    ``_needs_train_split(stage)`` and passes it through ``_hold_out``.
    """

    train_set: Dataset | None
    val_set: Dataset | None
    test_set: Dataset | None
    # False where validation reads the whole training split (ClassificationDataModule's val_split="train")
    _val_is_test: bool = True

    def _init_splits(self, holdout: Holdout, holdout_seed: int | None) -> None:
        check_holdout(holdout, holdout_seed, type(self).__name__)
        self.holdout, self.holdout_seed = holdout, holdout_seed
        self.train_set = self.val_set = self.test_set = None

    def _needs_train_split(self, stage: str | None) -> bool:
        """Fit reads the training split; validate only when validation comes out of it (a hold-out)."""
        if self.train_set is not None:
            return False
        return stage in (None, "fit") or (stage == "validate" and self.val_set is None)

    def _hold_out(
        self, train: Dataset, eval_view: Dataset, what: str, labels: Sequence[int] | np.ndarray | None = None
    ) -> Dataset:
        """``train`` without its hold-out, and ``val_set`` the hold-out read through ``eval_view`` (the same
        samples with the eval transforms); ``train`` itself when nothing is held out. ``labels``: stratify."""
        if self.holdout is None:
            return train
        samples = len(train) if labels is None else labels
        train_idx, val_idx = holdout_split(samples, self.holdout, self.holdout_seed, what)
        self.val_set = Subset(eval_view, val_idx.tolist())
        return Subset(train, train_idx.tolist())

    @property
    def val_source(self) -> str:
        """Where validation, and so ``monitor`` and checkpoint selection, reads: "holdout" (a part of the
        training split kept out of training), "test" (the split that test reports on) or "train" (the whole
        training split)."""
        if self.holdout is not None:
            return "holdout"
        return "test" if self._val_is_test else "train"

    def split_summary(self) -> dict[str, Any]:
        """Sizes of the splits loaded so far (None: not loaded) and where validation reads, for logs."""

        def size(dataset: Dataset | None) -> int | None:
            return None if dataset is None else len(dataset)

        return {
            "train": size(self.train_set),
            "val": size(self.val_set),
            "test": size(self.test_set),
            "val_source": self.val_source,
            "holdout": self.holdout,
            "holdout_seed": self.holdout_seed if self.holdout is not None else None,
        }
