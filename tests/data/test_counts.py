"""LoaderMixin.data_counts(): every data set a DataModule holds (wrapped or in lists) is found once, scan
counts add up once per source, corrupt images over all worker processes."""

import logging

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from vtrain.data.counts import ScanCounts, collect_counts, held_datasets, report_counts
from vtrain.data.imagenet import ImageNet
from vtrain.data.images import collate_skip_corrupt
from vtrain.data.loading import LoaderMixin
from vtrain.data.palette import Palette
from vtrain.data.pixels import PixelSequences, build_pixel_transform
from vtrain.data.splits import with_attributes


class _Scanned(Dataset):
    def __init__(self, source: str, **counts: int) -> None:
        self.scan_counts = ScanCounts(source, {f"data/{key}": n for key, n in counts.items()})

    def __len__(self) -> int:
        return 4


class _Module(LoaderMixin):
    def __init__(self, **attributes) -> None:
        vars(self).update(attributes)


def test_datasets_are_found_wrapped_and_in_lists_and_each_source_counts_once():
    train, val = (
        _Scanned("train.json", files_skipped_extension=2),
        _Scanned("val.json", files_skipped_extension=1),
    )
    same_file = _Scanned("val.json", files_skipped_extension=1)  # e.g. a second reader of the val file
    module = _Module(
        train_set=Subset(train, range(2)),
        holdout_set=Subset(train, range(2, 4)),
        val_set=val,
        test_sets=[same_file, Subset(val, [0])],
        by_level={"lr": _Scanned("lr", boxes_dropped_degenerate=5)},
        batch_size=4,
        palette=None,
    )
    assert {id(d) for d in held_datasets(module)} >= {id(train), id(val), id(same_file)}
    assert module.data_counts() == {"data/boxes_dropped_degenerate": 5, "data/files_skipped_extension": 3}
    assert _Module(val_set=None).data_counts() == {}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_images_behind_wrappers_are_counted_over_workers(tmp_path, num_workers):
    folder = tmp_path / "train" / "n01440764"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(folder / f"{i}.JPEG")
    (folder / "1.JPEG").write_bytes(b"broken")
    (folder / "notes.txt").write_text("")
    images = ImageNet(tmp_path, "train", skip_corrupt=True)
    pixels = PixelSequences(images, build_pixel_transform(8, "imagenet", False), Palette(np.zeros((2, 3))))
    module = _Module(train_set=Subset(pixels, range(4)), val_set=None)
    loader = DataLoader(
        module.train_set, batch_size=2, num_workers=num_workers, collate_fn=collate_skip_corrupt
    )
    assert sum(len(labels) for _, labels in loader) == 3

    assert module.data_counts() == {"data/corrupt_images_skipped": 1, "data/files_skipped_extension": 1}
    assert collect_counts([images]) == module.data_counts()
    # a hold-out's eval-transform view shares the reader's loader: its skipped images count once
    view = with_attributes(images, transform=None)
    assert collect_counts([images, view]) == module.data_counts()


def test_report_counts_warns_for_each_non_zero_count(caplog):
    with caplog.at_level(logging.WARNING, logger="vtrain.data.counts"):
        metrics = report_counts({"data/boxes_dropped_degenerate": 2, "data/corrupt_images_skipped": 0})
    assert metrics == {"data/boxes_dropped_degenerate": 2.0, "data/corrupt_images_skipped": 0.0}
    assert [r.getMessage() for r in caplog.records] == [
        "data/boxes_dropped_degenerate = 2: the run's data left this many out; earlier warnings name them"
    ]
