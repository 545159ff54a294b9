"""Hold-out validation (vtrain.data.splits): every DataModule of conf/data, on its tiny set, validates on a
seeded part of its training split (disjoint from training, eval transforms, stratified by class where there
are labels) and tests on the official split; the index split itself; the errors."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch.utils.data import Subset

from vtrain.data.cifar import CIFAR
from vtrain.data.cityscapes import CityscapesSegmentation
from vtrain.data.classification import ClassificationDataModule
from vtrain.data.coco import CocoDetection
from vtrain.data.coco_panoptic import CocoPanoptic
from vtrain.data.cufed import CUFED5, CUFEDTrain
from vtrain.data.detection import DetectionDataModule
from vtrain.data.imagenet import ImageNet
from vtrain.data.pixels import PixelSequences
from vtrain.data.splits import base_dataset, check_holdout, holdout_split

# data config -> (train, val, test) sizes with holdout=0.1: round(0.1 * training split) held out
SIZES = {
    "cifar10_tiny": (2700, 300, 300),
    "cifar100_tiny": (450, 50, 200),
    "imagenet_tiny": (270, 30, 100),
    "cifar10_pixels_tiny": (2700, 300, 300),
    "coco_tiny": (43, 5, 16),
    "coco_instance_tiny": (43, 5, 16),
    "coco_panoptic_tiny": (43, 5, 16),
    "cityscapes_tiny": (36, 4, 12),
    "cufed_tiny": (76, 8, 6),
}
LABELLED = ("cifar10_tiny", "cifar100_tiny", "imagenet_tiny", "cifar10_pixels_tiny")


def _datamodule(make_cfg, name: str, *overrides: str):
    # hflip: the pixel set's only augmentation, off in its tiny config; on here so that train and eval differ
    extra = ["data.hflip=true"] if name == "cifar10_pixels_tiny" else []
    cfg = make_cfg([f"data={name}", "data.num_workers=0", *extra, *overrides])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    return datamodule


def _reader_and_rows(dataset) -> tuple[object, list[int]]:
    """The reader under ``Subset`` wrappers (and iGPT's PixelSequences), and the rows ``dataset`` reads."""
    rows = list(range(len(dataset)))
    while isinstance(dataset, Subset):
        rows = [dataset.indices[i] for i in rows]
        dataset = dataset.dataset
    if isinstance(dataset, PixelSequences):
        dataset = dataset.images
    return dataset, rows


def identities(dataset) -> list[tuple]:
    """What names each sample's image: (CIFAR file folder, split, row), or the image file's path."""
    reader, rows = _reader_and_rows(dataset)
    if isinstance(reader, CIFAR):
        return [(str(reader.root), reader.split, row) for row in rows]
    if isinstance(reader, ImageNet):
        return [reader.samples[row][0] for row in rows]
    if isinstance(reader, CocoDetection):
        return [str(reader.image_folder / reader.coco.imgs[reader.ids[row]]["file_name"]) for row in rows]
    if isinstance(reader, CocoPanoptic):
        return [str(reader.image_folder / reader.images[reader.ids[row]]["file_name"]) for row in rows]
    if isinstance(reader, CityscapesSegmentation):
        return [str(reader.images[row]) for row in rows]
    if isinstance(reader, CUFEDTrain | CUFED5):
        return [str(reader.inputs[row]) for row in rows]
    raise TypeError(f"no identity for {type(reader).__name__}")


def labels_of(dataset) -> np.ndarray:
    reader, rows = _reader_and_rows(dataset)
    return np.asarray(reader.targets)[rows]


def _tensors(sample) -> list[torch.Tensor]:
    """The tensors of a sample (tuple or dict, targets included), for comparing two reads of it."""
    if isinstance(sample, torch.Tensor):
        return [sample.as_subclass(torch.Tensor)]
    if isinstance(sample, dict):
        return [t for value in sample.values() for t in _tensors(value)]
    if isinstance(sample, list | tuple):
        return [t for value in sample for t in _tensors(value)]
    return []


def _reads_alike(dataset, index: int, seeds=range(4)) -> bool:
    """Whether sample ``index`` is the same however torch's global generator is seeded."""
    reads = []
    for seed in seeds:
        torch.manual_seed(seed)
        reads.append(_tensors(dataset[index]))
    return all(
        len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))
        for a, b in zip(reads, reads[1:], strict=False)
    )


@pytest.mark.parametrize("name", list(SIZES))
def test_holdout_validates_on_part_of_train_and_tests_on_the_official_split(make_cfg, name):
    datamodule = _datamodule(make_cfg, name, "data.holdout=0.1")
    datamodule.setup("fit")
    train, val, test = datamodule.train_set, datamodule.val_set, datamodule.test_set
    assert (len(train), len(val), len(test)) == SIZES[name]
    assert datamodule.val_source == "holdout"
    assert datamodule.split_summary() == {
        "train": SIZES[name][0],
        "val": SIZES[name][1],
        "test": SIZES[name][2],
        "val_source": "holdout",
        "holdout": 0.1,
        "holdout_seed": 42,  # conf/train.yaml's seed
    }

    # disjoint from training, together the whole training split, no image of the official split
    train_ids, val_ids, test_ids = identities(train), identities(val), identities(test)
    full = identities(base_dataset(train))
    assert len(set(val_ids)) == len(val_ids) and not set(val_ids) & set(train_ids)
    assert sorted(train_ids + val_ids) == sorted(full)
    assert not set(test_ids) & set(full)

    # the held-out images go through the eval pipeline: the same however the generator is seeded, while
    # the training pipeline draws its augmentation for that same image
    held_row = _reader_and_rows(val)[1][0]
    assert _reads_alike(val, 0) and _reads_alike(test, 0)
    assert not _reads_alike(base_dataset(train), held_row)

    # the loaders run on the subsets (the training one through the seeded sampler)
    assert next(iter(datamodule.train_dataloader())) is not None
    assert next(iter(datamodule.val_dataloader())) is not None

    # the official split, as the module loads it without a hold-out (where it also validates)
    plain = _datamodule(make_cfg, name)
    plain.setup("fit")
    assert plain.val_set is plain.test_set and plain.val_source == "test"
    assert identities(plain.test_set) == test_ids and len(plain.train_set) == len(full)


@pytest.mark.parametrize("name", ["cifar10_tiny", "coco_tiny", "cityscapes_tiny", "cufed_tiny"])
def test_the_split_follows_the_seed(make_cfg, name):
    def held_out(*overrides: str) -> list[tuple]:
        datamodule = _datamodule(make_cfg, name, "data.holdout=0.1", *overrides)
        datamodule.setup("fit")
        return identities(datamodule.val_set)

    first = held_out()
    assert held_out() == first
    assert held_out("data.holdout_seed=42") == first
    assert held_out("data.holdout_seed=1") != first
    assert held_out("seed=7") != first  # holdout_seed: ${seed}


@pytest.mark.parametrize("name", LABELLED)
def test_every_class_gives_its_share_to_the_holdout(make_cfg, name):
    datamodule = _datamodule(make_cfg, name, "data.holdout=0.1")
    datamodule.setup("fit")
    full = Counter(labels_of(base_dataset(datamodule.train_set)).tolist())
    held = Counter(labels_of(datamodule.val_set).tolist())
    for label, count in full.items():
        assert abs(held[label] - 0.1 * count) <= 1, (label, held[label], count)


def test_a_holdout_count_and_the_probe_of_the_pixel_module(make_cfg):
    datamodule = _datamodule(make_cfg, "cifar10_pixels_tiny", "data.holdout=250")
    datamodule.setup("fit")
    assert (len(datamodule.train_set), len(datamodule.val_set)) == (2750, 250)
    probe = identities(datamodule.probe_train_set)
    assert len(probe) == 2750 and not set(probe) & set(identities(datamodule.val_set))  # all but the holdout
    assert set(probe) == set(identities(datamodule.train_set))


def test_validate_reads_the_training_split_only_for_a_holdout_and_test_never(tiny, monkeypatch):
    scanned: list[str] = []
    make_dataset = ImageNet.make_dataset

    def counting(self, directory, *args, **kwargs):
        scanned.append(Path(directory).name)
        return make_dataset(self, directory, *args, **kwargs)

    monkeypatch.setattr(ImageNet, "make_dataset", counting)
    args = dict(dataset="imagenet", root=str(tiny("imagenet_tiny")), num_classes=1000, image_size=32)
    args |= dict(recipe="imagenet", mean=(0.5,) * 3, std=(0.5,) * 3, batch_size=8, num_workers=0)

    for stage in ("validate", "test"):
        datamodule = ClassificationDataModule(**args)
        datamodule.setup(stage)
        assert datamodule.train_set is None and datamodule.val_set is datamodule.test_set
    held = ClassificationDataModule(**args, holdout=0.1)
    held.setup("test")
    assert held.train_set is None and held.val_set is None and len(held.test_set) == 100
    assert scanned == ["val", "val", "val"]
    held.setup("validate")
    assert len(held.val_set) == 30 and scanned == ["val", "val", "val", "train"]
    fit = ClassificationDataModule(**args, holdout=0.1)
    fit.setup("fit")
    assert scanned[3:] == ["train", "val", "train"]  # the training folders are walked once per module
    assert base_dataset(fit.val_set).transform is fit.eval_transform
    assert base_dataset(fit.train_set).transform is fit.train_transform


def test_detection_modules_evaluate_the_holdout_against_the_training_annotations(make_cfg, data_dir):
    datamodule = _datamodule(make_cfg, "coco_panoptic_tiny", "data.holdout=0.1")
    datamodule.setup("fit")
    annotations = data_dir / "coco_panoptic_tiny" / "annotations"
    assert datamodule.val_annotation_file == annotations / "instances_train2017.json"
    assert datamodule.val_panoptic_file == annotations / "panoptic_train2017.json"
    assert datamodule.test_annotation_file == annotations / "instances_val2017.json"
    assert datamodule.test_panoptic_file == annotations / "panoptic_val2017.json"
    assert datamodule.val_dataset.colors and datamodule.category_names[1]
    plain = _datamodule(make_cfg, "coco_tiny")
    assert plain.val_annotation_file == plain.test_annotation_file == plain.test_annotation_file
    assert plain.val_annotation_file.name == "instances_val2017.json"


def test_val_split_train_still_validates_on_the_whole_training_split(make_cfg):
    datamodule = _datamodule(make_cfg, "cifar10_tiny", "data.val_split=train")
    datamodule.setup("validate")
    assert len(datamodule.val_set) == 3000 and len(datamodule.test_set) == 300
    assert datamodule.val_source == "train" and identities(datamodule.test_set)[0][1] == "test"
    with pytest.raises(InstantiationException, match="val_split='train' validates on the whole training"):
        _datamodule(make_cfg, "cifar10_tiny", "data.val_split=train", "data.holdout=0.1")


def test_an_empty_validation_split_is_an_error_naming_it(make_cfg, tiny, tmp_path):
    with pytest.raises(ValueError, match=r"instances_train2017.json \(train split\): holdout 0.01 of 48"):
        _datamodule(make_cfg, "coco_tiny", "data.holdout=0.01").setup("fit")
    root = Path(shutil.copytree(tiny("coco_tiny"), tmp_path / "coco_tiny"))
    val_file = root / "annotations" / "instances_val2017.json"
    content = json.loads(val_file.read_text())
    val_file.write_text(json.dumps({**content, "images": [], "annotations": []}))
    datamodule = DetectionDataModule(str(root), num_classes=11, num_workers=0)
    with pytest.raises(ValueError, match=r"instances_val2017.json.*(empty|no image)"):
        datamodule.setup("validate")


def test_holdout_split_counts_strata_and_seeds():
    labels = np.repeat(np.arange(5), [50, 30, 11, 7, 2])  # 100 samples, unequal classes
    train, val = holdout_split(labels, 0.2, seed=0)
    assert len(val) == 20 and len(train) == 80
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(100))
    held = np.bincount(labels[val], minlength=5)
    assert np.all(np.abs(held - 0.2 * np.bincount(labels)) < 1), held
    again_train, again_val = holdout_split(labels, 0.2, seed=0)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(holdout_split(labels, 0.2, seed=1)[1], val)
    assert len(holdout_split(labels, 7, seed=0)[1]) == 7  # a count
    assert len(holdout_split(10, 0.25, seed=0)[1]) == 3  # 2.5 rounds half up
    # a plain random choice touches every part of the index range, not a block of it
    _, plain = holdout_split(1000, 0.1, seed=0)
    assert len(plain) == 100 and plain.min() < 100 and plain.max() > 900


def test_holdout_split_refuses_an_empty_part_and_bad_values():
    with pytest.raises(ValueError, match="my split: holdout 0.01 of 20 training samples is 0 samples"):
        holdout_split(20, 0.01, seed=0, what="my split")
    with pytest.raises(ValueError, match="holdout 20 of 20 training samples leaves no training sample"):
        holdout_split(20, 20, seed=0)
    for bad in (0, -3, 1.0, 1.5, 0.0, True, "0.1"):
        with pytest.raises(ValueError, match="holdout must be null, a fraction in"):
            check_holdout(bad, 0, "SomeDataModule")
    with pytest.raises(ValueError, match="SomeDataModule: holdout_seed must be an integer, found None"):
        check_holdout(0.1, None, "SomeDataModule")
    check_holdout(None, None, "SomeDataModule")
