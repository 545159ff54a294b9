"""What the data readers leave out, counted, so that a run reports it instead of losing data silently.

A data set whose reader leaves something out while it builds its index (a file skipped for its extension, a
box with no area) keeps the numbers in ``self.scan_counts`` (a :class:`ScanCounts`) and logs them once, with
a few examples; ``LoaderMixin.data_counts()`` adds them up over a DataModule's data sets, together with the
images skipped as corrupt while loading. The keys:

    data/files_skipped_extension  files in an image folder left out for their name (not an image extension)
    data/images_without_label     images in a labelled folder that no label names (Kaggle ImageNet val)
    data/labels_without_image     labels whose image file is absent (Kaggle ImageNet val, partial copies)
    data/boxes_dropped_degenerate annotations left out for a box without area (width or height <= 0)
    data/boxes_dropped_off_image  annotations left out for a box wholly outside its image
    data/corrupt_images_skipped   images that could not be decoded, skipped (``skip_corrupt``)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch.utils.data import Dataset

log = logging.getLogger(__name__)

FILES_SKIPPED_EXTENSION = "data/files_skipped_extension"
IMAGES_WITHOUT_LABEL = "data/images_without_label"
LABELS_WITHOUT_IMAGE = "data/labels_without_image"
BOXES_DROPPED_DEGENERATE = "data/boxes_dropped_degenerate"
BOXES_DROPPED_OFF_IMAGE = "data/boxes_dropped_off_image"
CORRUPT_IMAGES_SKIPPED = "data/corrupt_images_skipped"


@dataclass(frozen=True)
class ScanCounts:
    """What one data set's reader left out while building its index, by key.

    ``source`` names what it read (annotation file, folder): data sets that read one source (CUFED5's
    validation and test levels, a val split that is the train split) count it once.
    """

    source: str
    counts: dict[str, int]


# (source, key, count) already logged by this process: data sets that read one source (CUFED5's levels)
# log it once.
_logged: set[tuple[str, str, int]] = set()


def log_left_out(source: str, key: str, examples: Sequence[object], reason: str) -> int:
    """Log once that ``source`` left out ``len(examples)`` items for ``reason``, naming the first few;
    returns the count (nothing is logged for none)."""
    if examples and (source, key, len(examples)) not in _logged:
        _logged.add((source, key, len(examples)))
        shown = ", ".join(str(example) for example in examples[:5])
        more = f" and {len(examples) - 5} more" if len(examples) > 5 else ""
        log.warning("%s: left out %d %s (%s): %s%s", source, len(examples), reason, key, shown, more)
    return len(examples)


def _unwrapped(dataset: Dataset) -> Iterable[Dataset]:
    """``dataset`` and the data sets it wraps (``Subset.dataset``, ``PixelSequences.images``, ...)."""
    yield dataset
    for attribute in ("dataset", "images"):
        inner = getattr(dataset, attribute, None)
        if isinstance(inner, Dataset):
            yield from _unwrapped(inner)


def held_datasets(owner: object) -> list[Dataset]:
    """Every data set ``owner`` (a DataModule) holds in an attribute, alone or in a list, tuple or dict,
    with the ones they wrap; each once."""
    found: dict[int, Dataset] = {}
    for value in vars(owner).values():
        items = (
            value.values()
            if isinstance(value, dict)
            else value
            if isinstance(value, list | tuple)
            else [value]
        )
        for item in items:
            if isinstance(item, Dataset):
                found.update((id(d), d) for d in _unwrapped(item))
    return list(found.values())


def collect_counts(datasets: Iterable[Dataset]) -> dict[str, int]:
    """The counts of ``datasets``: their ``scan_counts`` summed over distinct sources, and
    ``data/corrupt_images_skipped``, the images their ``ImageFileLoader`` skipped so far (over all worker
    processes), when any of them loads image files; a loader that several data sets share (a split and its
    eval-transform view, see vtrain.data.splits) counts once. Keys that none of them counts are absent."""
    totals: dict[str, int] = {}
    sources: set[str] = set()
    loaders: set[int] = set()
    corrupt: int | None = None
    for dataset in datasets:
        scan = getattr(dataset, "scan_counts", None)
        if isinstance(scan, ScanCounts) and scan.source not in sources:
            sources.add(scan.source)
            for key, count in scan.counts.items():
                totals[key] = totals.get(key, 0) + count
        loader = getattr(dataset, "loader", None)
        skipped = getattr(loader, "skipped", None)
        if isinstance(skipped, int) and id(loader) not in loaders:
            loaders.add(id(loader))
            corrupt = (corrupt or 0) + skipped
    if corrupt is not None:
        totals[CORRUPT_IMAGES_SKIPPED] = corrupt
    return dict(sorted(totals.items()))


def report_counts(counts: dict[str, int]) -> dict[str, float]:
    """``counts`` (``data_counts()``) as metrics for ``metrics.json``, after one warning per non-zero count;
    the log lines written while reading the data name the files and annotations."""
    for key, count in counts.items():
        if count:
            log.warning("%s = %d: the run's data left this many out; earlier warnings name them", key, count)
    return {key: float(count) for key, count in counts.items()}
