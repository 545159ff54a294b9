"""Shards (vtrain.data.shards): the converter keeps every sample, label and byte; reading from shards gives
the samples of the folder readers one by one; bad inputs are reported, bad directories refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from vtrain.data.cifar import CIFAR
from vtrain.data.cityscapes import CityscapesSegmentation
from vtrain.data.classification import ClassificationDataModule
from vtrain.data.coco import CocoDetection
from vtrain.data.coco_instance import CocoInstanceSegmentation
from vtrain.data.coco_panoptic import CocoPanoptic
from vtrain.data.cufed import CUFED5, CUFEDTrain
from vtrain.data.detection import DetectionDataModule
from vtrain.data.gpu_decode import EncodedFileLoader
from vtrain.data.imagenet import ImageNet
from vtrain.data.images import CorruptImageError
from vtrain.data.shards.convert import convert, main, parse_size
from vtrain.data.shards.datasets import ShardClassification
from vtrain.data.shards.format import MANIFEST, ShardFormatError, ShardSplit, iter_members

SMALL = 64 * 1024  # small shards, so that every test set spans several


def _same_image(a, b) -> None:
    a = np.asarray(a.as_subclass(torch.Tensor) if isinstance(a, torch.Tensor) else a)
    b = np.asarray(b.as_subclass(torch.Tensor) if isinstance(b, torch.Tensor) else b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b)


def _same_target(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert type(value) is type(b[key]) and torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny: Callable[[str], Path]) -> Callable[[str, str], Path]:
    """``converted(dataset, tiny name)``: the tiny set converted once per module."""
    out = tmp_path_factory.mktemp("shards")

    def get(dataset: str, name: str, subfolder: str = "") -> Path:
        target = out / f"{name}{subfolder.replace('/', '_')}"
        if not (target / MANIFEST).exists():
            convert(dataset, tiny(name) / subfolder, target, SMALL)
        return target

    return get


@pytest.mark.parametrize("layout", ["", "kaggle"], ids=["folders", "kaggle"])
def test_imagenet_from_shards_equals_folders_one_by_one(tiny, converted, layout):
    root = tiny("imagenet_tiny") / layout
    shards = converted("imagenet", "imagenet_tiny", layout)
    manifest = json.loads((shards / MANIFEST).read_text())
    for split in ("train", "val"):
        folders, sharded = ImageNet(root, split), ShardClassification(shards, "imagenet", split)
        assert manifest["splits"][split]["samples"] == len(sharded) == len(folders) > 0
        assert manifest["splits"][split]["shards"] > 1 or split == "val"
        assert sharded.classes == folders.classes and np.array_equal(sharded.targets, folders.targets)
        assert sharded.scan_counts.counts == folders.scan_counts.counts
        for index in range(len(folders)):
            (image_a, label_a), (image_b, label_b) = folders[index], sharded[index]
            assert label_a == label_b
            _same_image(image_a, image_b)
            assert image_b.mode == "RGB"


def test_shards_keep_the_original_bytes_and_labels(tiny, converted):
    root, shards = tiny("imagenet_tiny"), converted("imagenet", "imagenet_tiny")
    folders = ImageNet(root, "train")
    members = dict(m for shard in sorted((shards / "train").glob("*.tar")) for m in iter_members(shard))
    path, label = folders.samples[7]
    assert members["00000007.jpeg"] == Path(path).read_bytes()  # not re-encoded
    assert members["00000007.cls"] == str(label).encode()
    assert json.loads(members["00000007.json"])["file"] == Path(path).relative_to(root / "train").as_posix()
    split = ShardSplit(shards, ("imagenet",), "train")
    assert split[7] == {
        ".jpeg": members["00000007.jpeg"],
        ".cls": b"%d" % label,
        ".json": members["00000007.json"],
    }
    assert split.files[7] == json.loads(members["00000007.json"])["file"]
    index = json.loads((shards / "train" / "shardindex.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1"
    assert sum(shard["nsamples"] for shard in index["shardlist"]) == len(folders)


def test_gpu_decoding_reads_the_jpeg_bytes_from_shards(tiny, converted):
    """data.decode=gpu on shards: each sample's loader hands the device the bytes the folder file has."""
    root, shards = tiny("imagenet_tiny"), converted("imagenet", "imagenet_tiny")
    folders, sharded = ImageNet(root, "train"), ShardClassification(shards, "imagenet", "train")
    from_folders, from_shards = EncodedFileLoader(folders.loader), EncodedFileLoader(sharded.loader)
    for index in (0, 7, len(folders) - 1):
        path = folders.samples[index][0]
        a, b = from_folders(path), from_shards(sharded.shards.directory / sharded.files[index])
        assert a.encoded and b.encoded and a.size == b.size
        assert torch.equal(a.data, b.data) and bytes(b.data.numpy()) == Path(path).read_bytes()
    assert from_shards.decoded_on_cpu == 0


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_from_shards_equals_the_pickles_one_by_one(tiny, converted, variant):
    root, shards = tiny(f"{variant}_tiny"), converted(variant, f"{variant}_tiny")
    labels = ["fine", "coarse"] if variant == "cifar100" else ["fine"]
    for split in ("train", "test"):
        for label in labels:
            folders = CIFAR(root, split, variant=variant, label=label)
            sharded = ShardClassification(shards, variant, split, label=label)
            assert len(sharded) == len(folders) and sharded.classes == folders.classes
            assert np.array_equal(sharded.targets, folders.targets)
            for index in range(len(folders)):
                (image_a, label_a), (image_b, label_b) = folders[index], sharded[index]
                assert label_a == label_b
                assert type(image_a) is type(image_b)  # tv_tensors.Image [3, 32, 32] uint8
                _same_image(image_a, image_b)


@pytest.mark.parametrize("dataset_class", [CocoDetection, CocoInstanceSegmentation])
@pytest.mark.parametrize("train", [True, False])
def test_coco_from_shards_equals_folders_one_by_one(tiny, converted, dataset_class, train):
    root, shards = tiny("coco_tiny"), converted("coco", "coco_tiny")
    for split in ("train", "val"):
        folders = dataset_class(root, split, train=train)
        sharded = dataset_class(shards, split, train=train, format="shards")
        assert sharded.ids == folders.ids and sharded.categories == folders.categories
        assert sharded.scan_counts.counts == folders.scan_counts.counts
        for index in range(len(folders)):
            (image_a, target_a), (image_b, target_b) = folders[index], sharded[index]
            _same_image(image_a, image_b)
            _same_target(target_a, target_b)


@pytest.mark.parametrize("masks", [True, False])
def test_coco_panoptic_from_shards_equals_folders_one_by_one(tiny, converted, masks):
    root, shards = tiny("coco_panoptic_tiny"), converted("coco_panoptic", "coco_panoptic_tiny")
    for split in ("train", "val"):
        folders = CocoPanoptic(root, split, masks=masks)
        sharded = CocoPanoptic(shards, split, masks=masks, format="shards")
        assert sharded.ids == folders.ids and sharded.categories == folders.categories
        for index in range(len(folders)):
            (image_a, target_a), (image_b, target_b) = folders[index], sharded[index]
            _same_image(image_a, image_b)
            _same_target(target_a, target_b)
    # what PQ and box / mask AP are scored against, copied as it is
    for name in ("panoptic_val2017.json", "instances_val2017.json"):
        assert (shards / "annotations" / name).read_bytes() == (root / "annotations" / name).read_bytes()
    pngs = sorted(p.name for p in (root / "annotations" / "panoptic_val2017").iterdir())
    assert sorted(p.name for p in (shards / "annotations" / "panoptic_val2017").iterdir()) == pngs


def test_cityscapes_from_shards_equals_folders_one_by_one(tiny, converted):
    root, shards = tiny("cityscapes_tiny"), converted("cityscapes", "cityscapes_tiny")
    members = dict(m for shard in sorted((shards / "train").glob("*.tar")) for m in iter_members(shard))
    for split in ("train", "val"):
        folders = CityscapesSegmentation(root, split)
        sharded = CityscapesSegmentation(shards, split, format="shards")
        assert len(sharded) == len(folders) and sharded.scan_counts.counts == folders.scan_counts.counts
        for index in range(len(folders)):
            (image_a, labels_a), (image_b, labels_b) = folders[index], sharded[index]
            assert torch.equal(image_a, image_b) and torch.equal(labels_a, labels_b)
            if split == "train":
                assert members[f"{index:08d}.labelids.png"] == folders.labels[index].read_bytes()


def test_cufed_from_shards_equals_folders_one_by_one(tiny, converted):
    root, shards = tiny("cufed_tiny"), converted("cufed", "cufed_tiny")
    train = ShardSplit(shards, ("cufed",), "train")
    folders, sharded = (
        CUFEDTrain(root / "train", augment=False),
        CUFEDTrain(train.directory, augment=False, shards=train),
    )
    assert len(sharded) == len(folders) and sharded.scan_counts.counts == folders.scan_counts.counts
    for index in range(len(folders)):
        a, b = folders[index], sharded[index]
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    test = ShardSplit(shards, ("cufed",), "test")
    assert test.directory == shards / "test" / "CUFED5"
    for level in (1, 5, "lr"):
        folders, sharded = CUFED5(root / "test" / "CUFED5", level), CUFED5(test.directory, level, shards=test)
        assert len(sharded) == len(folders)
        for index in range(len(folders)):
            a, b = folders[index], sharded[index]
            assert a["name"] == b["name"] and all(torch.equal(a[k], b[k]) for k in ("lr", "hr", "ref"))


def test_coco_annotations_travel_with_each_sample(tiny, converted):
    root, shards = tiny("coco_tiny"), converted("coco", "coco_tiny")
    folders = CocoDetection(root, "train", train=False)
    members = dict(m for shard in sorted((shards / "train2017").glob("*.tar")) for m in iter_members(shard))
    for index, image_id in enumerate(folders.ids):
        sample = json.loads(members[f"{index:08d}.json"])
        assert sample["image"] == folders.coco.imgs[image_id]
        assert sample["annotations"] == folders.coco.imgToAnns[image_id]
    copied = shards / "annotations" / "instances_val2017.json"
    assert copied.read_bytes() == (root / "annotations" / "instances_val2017.json").read_bytes()


def test_datamodules_train_from_shards_with_the_folder_batches(tiny, converted):
    """The seeded training batches of a DataModule are the same from folders and from shards."""
    common = dict(num_classes=1000, image_size=32, recipe="imagenet", mean=[0.5] * 3, std=[0.5] * 3)
    common |= dict(batch_size=8, num_workers=0, crop_scale=[0.5, 1.0])
    folders = ClassificationDataModule("imagenet", str(tiny("imagenet_tiny")), **common)
    sharded = ClassificationDataModule(
        "imagenet", str(converted("imagenet", "imagenet_tiny")), format="shards", **common
    )
    batches = []
    for datamodule in (folders, sharded):
        datamodule.setup("fit")
        batches.append(next(iter(datamodule.train_dataloader())))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
    detection = dict(num_classes=11, batch_size=4, num_workers=0, scales=[96], max_size=160, eval_size=96)
    detection |= dict(pre_crop_scales=[80], crop_min=48, crop_max=80)
    modules = [
        DetectionDataModule(str(tiny("coco_tiny")), **detection),
        DetectionDataModule(str(converted("coco", "coco_tiny")), format="shards", **detection),
    ]
    batches = []
    for datamodule in modules:
        datamodule.setup("fit")
        batches.append(next(iter(datamodule.train_dataloader())))
    (images_a, mask_a, targets_a), (images_b, mask_b, targets_b) = batches
    assert torch.equal(images_a, images_b) and torch.equal(mask_a, mask_b)
    for a, b in zip(targets_a, targets_b, strict=True):
        _same_target(a, b)


def test_unreadable_images_are_reported_and_read_as_from_folders(imagenet_tiny_copy, tmp_path, capsys):
    broken = sorted((imagenet_tiny_copy / "train").rglob("*.JPEG"))[3]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated
    manifest = convert("imagenet", imagenet_tiny_copy, tmp_path / "shards", SMALL)
    name = broken.relative_to(imagenet_tiny_copy / "train").as_posix()
    assert manifest["splits"]["train"]["unreadable"] == {"count": 1, "files": [name]}
    assert manifest["splits"]["val"]["unreadable"]["count"] == 0
    assert f"1 unreadable: {name}" in capsys.readouterr().err
    # kept in its place: the folder reader's indices and errors stay the same
    folders, sharded = (
        ImageNet(imagenet_tiny_copy, "train"),
        ShardClassification(tmp_path / "shards", "imagenet", "train"),
    )
    index = [Path(p) for p, _ in folders.samples].index(broken)
    with pytest.raises(CorruptImageError, match=f"cannot read image {name} \\(sample {index:08d}"):
        sharded[index]
    skipping = ShardClassification(tmp_path / "shards", "imagenet", "train", skip_corrupt=True)
    assert skipping[index] is None and skipping.loader.skipped == 1


def test_interrupted_conversion_leaves_no_partial_shard_and_no_manifest(tiny, tmp_path, monkeypatch):
    from vtrain.data.shards import convert as convert_module

    real = convert_module._read_image
    calls = []

    def failing(path):
        calls.append(path)
        if len(calls) == 70:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(convert_module, "_read_image", failing)
    out = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        convert("imagenet", tiny("imagenet_tiny"), out, SMALL)
    assert not (out / MANIFEST).exists()
    left = sorted(p.name for p in (out / "train").iterdir())
    assert left and all(name.startswith("shard-") and name.endswith(".tar") for name in left)  # no temporary
    for shard in left:  # each complete: its last sample has all of its members
        names = [name for name, _ in iter_members(out / "train" / shard)]
        assert len(names) % 3 == 0
    with pytest.raises(ShardFormatError, match="is not a shard directory"):
        ShardClassification(out, "imagenet", "train")
    monkeypatch.setattr(convert_module, "_read_image", real)
    assert convert("imagenet", tiny("imagenet_tiny"), out, SMALL)["splits"]["train"]["samples"] == 300


def test_bad_shard_directories_are_refused_by_name(tiny, converted, tmp_path):
    with pytest.raises(ShardFormatError, match=f"{tmp_path} is not a shard directory"):
        ShardClassification(tmp_path, "imagenet", "train")
    cifar = converted("cifar10", "cifar10_tiny")
    with pytest.raises(ShardFormatError, match="the shards hold 'cifar10', expected imagenet"):
        ShardClassification(cifar, "imagenet", "train")
    with pytest.raises(
        ShardFormatError, match=r"no 'val' split in these cifar10 shards, found \['test', 'train'\]"
    ):
        ShardClassification(cifar, "cifar10", "val")
    with pytest.raises(ShardFormatError, match="expected coco"):
        CocoDetection(cifar, "train", format="shards")
    with pytest.raises(ValueError, match="data.format must be one of"):
        DetectionDataModule(str(cifar), format="lmdb")
    with pytest.raises(ValueError, match="data.tiny='coco_tiny' builds a folder layout"):
        DetectionDataModule(str(cifar), format="shards", tiny="coco_tiny")
    with pytest.raises(FileExistsError, match="holds a conversion already"):
        convert("cifar10", tiny("cifar10_tiny"), cifar, SMALL)


def test_command_line_converts_and_parses_sizes(tiny, tmp_path, capsys):
    main(
        [
            "cifar100",
            "--root",
            str(tiny("cifar100_tiny")),
            "--out",
            str(tmp_path / "out"),
            "--shard-size",
            "100KB",
        ]
    )
    assert "cifar100 train: 500 samples in" in capsys.readouterr().err
    assert parse_size("512MB") == 512 * 2**20 and parse_size("1GiB") == 2**30 and parse_size("4096") == 4096


def test_converter_on_real_coco_tiny(shared, tmp_path):
    root = shared("coco_tiny")
    manifest = convert("coco", root, tmp_path / "coco", parse_size("4MB"), workers=2)
    assert (
        manifest["splits"]["train"]["samples"] == 80
        and manifest["splits"]["train"]["unreadable"]["count"] == 0
    )
    folders = CocoInstanceSegmentation(root, "train", train=False)
    sharded = CocoInstanceSegmentation(tmp_path / "coco", "train", train=False, format="shards")
    for index in range(0, len(folders), 9):
        (image_a, target_a), (image_b, target_b) = folders[index], sharded[index]
        _same_image(image_a, image_b)
        _same_target(target_a, target_b)


def test_converter_on_real_coco_panoptic(shared, tmp_path):
    root = shared("coco_panoptic")
    manifest = convert("coco_panoptic", root, tmp_path / "panoptic", parse_size("4MB"))
    assert manifest["splits"]["val"]["samples"] == 2 and manifest["splits"]["val"]["unreadable"]["count"] == 0
    folders, sharded = CocoPanoptic(root, "val"), CocoPanoptic(tmp_path / "panoptic", "val", format="shards")
    for index in range(len(folders)):
        (image_a, target_a), (image_b, target_b) = folders[index], sharded[index]
        _same_image(image_a, image_b)
        _same_target(target_a, target_b)


@pytest.mark.parametrize("layout, split", [("imagenet", "train"), ("imagenet/kaggle_loc", "val")])
def test_converter_on_real_imagenet(shared, tmp_path, layout, split):
    root = shared(layout)
    manifest = convert("imagenet", root, tmp_path / "imagenet", parse_size("4MB"), workers=2)
    assert list(manifest["splits"]) == [split] and manifest["splits"][split]["samples"] == 100
    folders, sharded = ImageNet(root, split), ShardClassification(tmp_path / "imagenet", "imagenet", split)
    assert np.array_equal(folders.targets, sharded.targets)
    for index in range(0, 100, 7):
        _same_image(folders[index][0], sharded[index][0])
