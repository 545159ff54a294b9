"""Cityscapes loader: label ids -> train ids, the tiny set's exact labels, augmentation keeping image and
labels aligned, the data module's batches, and errors that name the missing files."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from vtrain.data.cityscapes import (
    CITYSCAPES_NAMES,
    CityscapesSegmentation,
    SegmentationDataModule,
    SegmentationTransform,
    label_id_to_train_id,
)
from vtrain.data.images import ImageSizeError
from vtrain.data.tiny.cityscapes import build_cityscapes_tiny


def test_label_ids_map_to_the_19_train_ids():
    table = label_id_to_train_id()
    # cityscapesscripts: road 7 -> 0, sky 23 -> 10, person 24 -> 11, car 26 -> 13, bicycle 33 -> 18
    assert (table[7], table[23], table[24], table[26], table[33]) == (0, 10, 11, 13, 18)
    assert sorted(set(table.tolist()) - {255}) == list(range(19))
    for ignored in (0, 1, 4, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 255):
        assert table[ignored] == 255
    assert len(CITYSCAPES_NAMES) == 19


def test_tiny_set_is_deterministic_and_in_the_official_layout(tmp_path):
    a, b = build_cityscapes_tiny(tmp_path / "a"), build_cityscapes_tiny(tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 2 * (40 + 12)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files[:6])
    label = np.asarray(Image.open(a / "gtFine/val/frankfurt/frankfurt_000000_000000_gtFine_labelIds.png"))
    assert label.shape == (128, 256) and label.dtype == np.uint8
    assert {7, 8, 23, 24}.issubset(np.unique(label)) and label[-1].tolist() == [1] * 256  # ego vehicle


def test_dataset_gives_train_ids_and_ignores_the_ego_vehicle(tmp_path):
    root = build_cityscapes_tiny(tmp_path / "cs")
    dataset = CityscapesSegmentation(root, "val")
    assert len(dataset) == 12
    image, labels = dataset[0]
    assert image.shape == (3, 128, 256) and image.dtype == torch.uint8
    raw = np.asarray(Image.open(dataset.labels[0]))
    assert torch.equal(labels, torch.from_numpy(label_id_to_train_id()[raw]).long())
    assert (labels[-1] == 255).all() and {0, 1, 10, 11} <= set(labels.unique().tolist())


def test_train_transform_moves_labels_with_the_image():
    torch.manual_seed(0)
    # labels are a function of the pixel colour: after any scale / crop / flip they must still agree
    labels = torch.zeros(64, 128, dtype=torch.long)
    labels[:, 64:] = 1
    labels[20:40, 10:30] = 2
    palette = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0]], dtype=torch.uint8)
    image = palette[labels].permute(2, 0, 1)
    transform = SegmentationTransform(
        True, crop_size=(48, 80), scale_range=(0.5, 1.5), mean=(0, 0, 0), std=(1, 1, 1)
    )
    for _ in range(10):
        out, out_labels = transform(image, labels)
        assert out.shape == (3, 48, 80) and out_labels.shape == (48, 80)
        valid = out_labels != 255
        colours = palette.float()[out_labels[valid]] / 255
        # away from the borders between regions (bilinear mixes colours there)
        inner = (out[:, valid].T - colours).abs().amax(1) < 0.05
        assert inner.float().mean() > 0.85
        assert (out[:, ~valid] == 0).all()  # padding: image 0, labels 255


def test_datamodule_batches_and_missing_data_errors(tmp_path):
    root = tmp_path / "cs"
    dm = SegmentationDataModule(
        str(root),
        crop_size=(64, 96),
        batch_size=4,
        num_workers=0,
        persistent_workers=False,
        tiny="cityscapes_tiny",
    )
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 64, 96) and labels.shape == (4, 64, 96) and labels.dtype == torch.int64
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 128, 256)
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        CityscapesSegmentation(tmp_path / "nowhere", "train")
    next((root / "gtFine" / "val").rglob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match="label files missing"):
        CityscapesSegmentation(root, "val")


def test_label_image_of_another_size_names_both_files(tmp_path):
    root = build_cityscapes_tiny(tmp_path / "cs")
    dataset = CityscapesSegmentation(root, "val")
    with Image.open(dataset.labels[3]) as label:
        label.resize((128, 64), Image.NEAREST).save(dataset.labels[3])
    with pytest.raises(ImageSizeError) as error:
        dataset[3]
    assert str(error.value) == (
        f"{dataset.labels[3]}: the label image is 128 x 64 pixels (width x height) but its image "
        f"{dataset.images[3]} is 256 x 128"
    )


def test_other_files_in_the_city_folders_are_counted_and_logged(tmp_path, caplog):
    root = build_cityscapes_tiny(tmp_path / "cs")
    image = next((root / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    for name in ("notes.txt", image.name.replace(".png", ".jpg")):
        (image.parent / name).write_bytes(b"")
    dm = SegmentationDataModule(str(root), crop_size=(64, 96), batch_size=4, num_workers=0)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert len(dm.val_set) == 12
    assert dm.data_counts() == {"data/files_skipped_extension": 2}
    assert (
        f"{root / 'leftImg8bit' / 'val'}: left out 2 files that are not *_leftImg8bit.png images"
        in caplog.text
    )
    assert "notes.txt" in caplog.text
