import csv
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from vtrain.data.imagenet import IMAGENET_WNIDS, ImageNet
from vtrain.data.images import CorruptImageError, ImageFileLoader, collate_skip_corrupt


def _synset_words(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()]


def test_packaged_wnids_are_the_1000_sorted_imagenet_wnids():
    assert len(IMAGENET_WNIDS) == len(set(IMAGENET_WNIDS)) == 1000
    assert list(IMAGENET_WNIDS) == sorted(IMAGENET_WNIDS)
    assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in IMAGENET_WNIDS)
    assert (IMAGENET_WNIDS[0], IMAGENET_WNIDS[281], IMAGENET_WNIDS[999]) == (
        "n01440764",
        "n02123045",
        "n15075141",
    )


def test_packaged_wnids_match_synset_words(shared):
    assert list(IMAGENET_WNIDS) == _synset_words(shared("imagenet/synset_words.txt"))


def test_real_folder_layout_labels_are_synset_words_positions(shared):
    root = shared("imagenet")
    order = _synset_words(root / "synset_words.txt")
    dataset = ImageNet(root, "train")

    assert dataset.layout == "folders" and len(dataset) == 100 and len(dataset.classes) == 1000
    for path, target in dataset.samples:
        assert target == order.index(Path(path).parent.name)
    image, target = dataset[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and target == dataset.targets[0]


def test_real_kaggle_val_labels_come_from_the_solution_csv(shared):
    root = shared("imagenet/kaggle_loc")
    order = _synset_words(root / "LOC_synset_mapping.txt")
    with (root / "LOC_val_solution.csv").open() as f:
        wnid_of = {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
    dataset = ImageNet(root, "val")

    assert dataset.layout == "kaggle" and len(dataset) == 100
    for path, target in dataset.samples:
        assert target == order.index(wnid_of[Path(path).stem])
    assert dataset[5][0].size == (227, 227)


def test_missing_split_names_the_folder_and_the_layouts(shared):
    with pytest.raises(FileNotFoundError) as error:
        ImageNet(shared("imagenet"), "val")
    assert str(shared("imagenet") / "val") in str(error.value)
    assert "<root>/ILSVRC/Data/CLS-LOC/val/*.JPEG" in str(error.value)


def test_tiny_folder_and_kaggle_layouts_agree(tiny):
    root = tiny("imagenet_tiny")
    for split in ("train", "val"):
        folders, kaggle = ImageNet(root, split), ImageNet(root / "kaggle", split)
        assert (folders.layout, kaggle.layout) == ("folders", "kaggle")
        pairs = sorted((Path(path).name, target) for path, target in folders.samples)
        assert pairs == sorted((Path(path).name, target) for path, target in kaggle.samples)


def _image_folder(root: Path, wnid: str = "n01440764", count: int = 3, suffix: str = ".JPEG") -> list[Path]:
    paths = []
    for i in range(count):
        path = root / "train" / wnid / f"{i}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(path)
        paths.append(path)
    return paths


def test_subset_of_classes_keeps_the_1000_class_indices_and_reads_downsampled_pngs(tmp_path):
    _image_folder(tmp_path, "n15075141", suffix=".png")
    _image_folder(tmp_path, "n01443537", count=2)
    dataset = ImageNet(tmp_path, "train")

    assert sorted(set(dataset.targets)) == [1, 999] and len(dataset.classes) == 1000
    assert dataset[4][0].size == (32, 32)


def test_unknown_class_folder_is_named(tmp_path):
    _image_folder(tmp_path)
    (tmp_path / "train" / "cats").mkdir()
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'train'}: class folder 'cats' is not")):
        ImageNet(tmp_path, "train")


def test_missing_root_and_empty_split_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        ImageNet(tmp_path / "nowhere")
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as error:
        ImageNet(tmp_path, "train")
    assert "no images (.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp) found" in str(error.value)
    assert f"for ImageNet train under {tmp_path / 'train'}" in str(error.value)
    assert "<root>/train/<wnid>/*.JPEG" in str(error.value)


def _corrupt(tmp_path: Path) -> tuple[Path, Path]:
    """Three good images and, sorted between them, one that is not an image at all and a truncated JPEG."""
    good = _image_folder(tmp_path, count=3)
    garbage = tmp_path / "train" / "n01440764" / "0_garbage.JPEG"
    garbage.write_bytes(b"this is not a JPEG")
    truncated = tmp_path / "train" / "n01440764" / "1_truncated.JPEG"
    truncated.write_bytes(good[0].read_bytes()[:300])
    return garbage, truncated


def test_corrupt_image_error_names_the_file(tmp_path):
    garbage, truncated = _corrupt(tmp_path)
    dataset = ImageNet(tmp_path, "train")
    index = {Path(path).name: i for i, (path, _) in enumerate(dataset.samples)}
    for path in (garbage, truncated):
        with pytest.raises(CorruptImageError, match=re.escape(f"cannot read image {path}")):
            dataset[index[path.name]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_corrupt_drops_the_samples_and_counts_them_across_workers(tmp_path, num_workers):
    _corrupt(tmp_path)
    dataset = ImageNet(tmp_path, "train", transform=np.array, skip_corrupt=True)
    loader = DataLoader(dataset, batch_size=2, num_workers=num_workers, collate_fn=collate_skip_corrupt)

    # Batches [0, 0_garbage], [1, 1_truncated], [2] keep one image each.
    images = [batch[0] for batch in loader]
    assert [len(batch) for batch in images] == [1, 1, 1] and images[0].shape[1:] == (32, 32, 3)
    assert dataset.loader.skipped == 2


def test_a_batch_of_only_corrupt_images_raises():
    loader = ImageFileLoader(skip_corrupt=True)
    assert loader("/nonexistent/image.JPEG") is None and loader.skipped == 1
    with pytest.raises(CorruptImageError, match="all 2 samples of a batch were unreadable"):
        collate_skip_corrupt([None, None])


def test_files_skipped_for_their_extension_are_counted_and_logged_once(tmp_path, caplog):
    _image_folder(tmp_path, "n01440764", count=2)
    _image_folder(tmp_path, "n01443537", count=1, suffix=".png")
    for name in ("n01440764/notes.txt", "n01440764/.DS_Store", "n01443537/1.JPEG.part"):
        (tmp_path / "train" / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        dataset = ImageNet(tmp_path, "train")

    assert len(dataset) == 3 and dataset.scan_counts.counts == {"data/files_skipped_extension": 3}
    (record,) = [r for r in caplog.records if "left out" in r.getMessage()]
    assert record.getMessage() == (
        f"{tmp_path / 'train'}: left out 3 files without an image extension (.jpg, .jpeg, .png, .ppm, .bmp, "
        ".pgm, .tif, .tiff, .webp) (data/files_skipped_extension): n01440764/.DS_Store, n01440764/notes.txt, "
        "n01443537/1.JPEG.part"
    )


def test_kaggle_val_counts_unlabelled_images_absent_images_and_other_files(tmp_path):
    val = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    val.mkdir(parents=True)
    for name in ("a.JPEG", "b.JPEG"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(val / name)
    (val / "readme.txt").write_text("")
    rows = ["ImageId,PredictionString", "a,n01440764 1 2 3 4", "c,n01443537 1 2 3 4", "d,n01443537"]
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    dataset = ImageNet(tmp_path, "val")

    assert [Path(path).name for path, _ in dataset.samples] == ["a.JPEG"]
    assert dataset.scan_counts.counts == {
        "data/files_skipped_extension": 1,  # readme.txt
        "data/images_without_label": 1,  # b.JPEG
        "data/labels_without_image": 2,  # rows c and d
    }
