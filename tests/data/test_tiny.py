import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.conftest import REPO
from vtrain.data.cifar import CIFAR, load_cifar_pickle
from vtrain.data.imagenet import IMAGENET_WNIDS, ImageNet
from vtrain.data.tiny import COCO_TINY_CATEGORIES, IMAGENET_TINY_PHOTOS, TINY_SETS, build_tiny, main


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("name", sorted(TINY_SETS))
def test_builds_are_byte_identical_for_a_seed(tmp_path, name):
    # fresh builds: the session's shared copy also holds what runs cached beside it (iGPT palettes)
    build_tiny(name, tmp_path / "first")
    first = _digests(tmp_path / "first")
    build_tiny(name, tmp_path / "again")
    build_tiny(name, tmp_path / "other", seed=1)
    assert first == _digests(tmp_path / "again")
    assert first != _digests(tmp_path / "other")


def test_cifar10_tiny(tiny):
    root = tiny("cifar10_tiny")
    train, test = CIFAR(root, "train"), CIFAR(root, "test")

    assert (len(train), len(test)) == (3000, 300)
    assert train.classes == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert (
        np.bincount(train.targets).tolist() == [300] * 10 and np.bincount(test.targets).tolist() == [30] * 10
    )
    batch = load_cifar_pickle(root / "cifar-10-batches-py" / "data_batch_2")
    assert batch["batch_label"] == b"training batch 2 of 5" and batch["data"].shape == (600, 3072)
    # Images differ from one another (colours, position, noise), not one template per class.
    assert len({image.tobytes() for image in train.images}) == 3000


def _digit_indices(batch: dict) -> set[int]:
    return {int(i) for name in batch["filenames"] for i in re.findall(r"\d{4}", name.decode().split("_")[1])}


def test_cifar_tiny_train_and_test_use_disjoint_digits(tiny):
    folder = tiny("cifar10_tiny") / "cifar-10-batches-py"
    train = set().union(*(_digit_indices(load_cifar_pickle(folder / f"data_batch_{i}")) for i in range(1, 6)))
    test = _digit_indices(load_cifar_pickle(folder / "test_batch"))
    assert len(train) > 1000 and len(test) > 250 and not train & test

    folder = tiny("cifar100_tiny") / "cifar-100-python"
    train, test = (_digit_indices(load_cifar_pickle(folder / split)) for split in ("train", "test"))
    assert train and test and not train & test


def test_cifar100_tiny(tiny):
    root = tiny("cifar100_tiny")
    fine, coarse = CIFAR(root, "train", "cifar100"), CIFAR(root, "train", "cifar100", label="coarse")

    assert (len(fine), len(CIFAR(root, "test", "cifar100"))) == (500, 200)
    assert fine.classes[42] == "42" and coarse.classes[8] == "40-44"
    assert np.array_equal(coarse.targets, fine.targets // 5)
    assert np.bincount(fine.targets).tolist() == [5] * 100


def test_imagenet_tiny(tiny):
    root = tiny("imagenet_tiny")
    train, val = ImageNet(root, "train"), ImageNet(root, "val")
    wnids = [wnid for wnid, _, _ in IMAGENET_TINY_PHOTOS]

    assert (len(train), len(val)) == (300, 100)
    assert sorted(set(train.targets)) == sorted(IMAGENET_WNIDS.index(w) for w in wnids)
    assert np.bincount(val.targets, minlength=1000)[train.targets[0]] == 10
    assert train[0][0].size == (80, 80)
    # Val crops are drawn separately from train crops: no file is shared.
    assert not {_sha(p) for p, _ in train.samples} & {_sha(p) for p, _ in val.samples}
    mapping = (root / "kaggle" / "LOC_synset_mapping.txt").read_text().splitlines()
    assert len(mapping) == 1000 and mapping[281] == "n02123045 tabby, tabby cat"


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_build_tiny_keeps_an_existing_set(tmp_path):
    target = build_tiny("cifar100_tiny", tmp_path)
    assert target == tmp_path / "cifar-100-python"
    (target / "meta").write_bytes(b"left alone")
    assert build_tiny("cifar100_tiny", tmp_path) == target
    assert (target / "meta").read_bytes() == b"left alone"


def test_concurrent_builds_leave_one_complete_set(tmp_path):
    with ProcessPoolExecutor(max_workers=3) as pool:
        targets = list(pool.map(build_tiny, ["imagenet_tiny"] * 3, [tmp_path / "imagenet_tiny"] * 3))
    assert targets == [tmp_path / "imagenet_tiny"] * 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["imagenet_tiny"]
    assert _digests(targets[0]) == _digests(build_tiny("imagenet_tiny", tmp_path / "reference"))


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown tiny data set 'mnist'; expected one of \['cifar100_tiny'"):
        build_tiny("mnist", tmp_path)


def test_command_line_builds_each_set_under_its_name(tmp_path, capsys):
    main(["--root", str(tmp_path), "cifar100_tiny"])
    assert (tmp_path / "cifar100_tiny" / "cifar-100-python" / "meta").is_file()
    assert capsys.readouterr().out == f"cifar100_tiny: {tmp_path / 'cifar100_tiny'}\n"
    with pytest.raises(SystemExit):
        main(["--root", str(tmp_path), "mnist"])


def _coco_json(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())


def test_coco_tiny_is_a_complete_coco_set(tiny):
    root = tiny("coco_tiny")
    for split, n_images in (("train", 48), ("val", 16)):
        content = _coco_json(root, split)
        assert list(content) == ["info", "licenses", "images", "annotations", "categories"]
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(root / "annotations" / f"instances_{split}2017.json"))
        assert len(coco.imgs) == n_images == len(list((root / f"{split}2017").glob("*.jpg")))
        assert [(c["id"], c["name"]) for c in content["categories"]] == [
            (cat_id, name) for cat_id, name, _, _, _ in COCO_TINY_CATEGORIES
        ]
        assert [c["id"] for c in content["categories"]] == [1, 3, 7, 10]
        crowds = [a for a in coco.anns.values() if a["iscrowd"]]
        assert len(crowds) == n_images // 8 and all(a["category_id"] == 7 for a in crowds)
        for image_id, image in coco.imgs.items():
            with Image.open(root / f"{split}2017" / image["file_name"]) as f:
                assert f.size == (image["width"], image["height"]) in {(160, 128), (128, 160), (144, 128)}
            boxes = [a["bbox"] for a in coco.imgToAnns[image_id]]
            for x, y, w, h in boxes:  # inside the image
                assert x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
            for i, (x, y, w, h) in enumerate(boxes):  # disjoint, so every object is wholly visible
                assert all(
                    x + w <= u or u + s <= x or y + h <= v or v + t <= y for u, v, s, t in boxes[i + 1 :]
                )
        for a in coco.anns.values():
            mask = coco.annToMask(a)
            ys, xs = np.nonzero(mask)
            assert a["area"] == mask.sum() and a["bbox"] == [
                xs.min(),
                ys.min(),
                np.ptp(xs) + 1,
                np.ptp(ys) + 1,
            ]
            if not a["iscrowd"]:
                assert (
                    isinstance(a["segmentation"], list)
                    and 24 <= min(a["bbox"][2:]) <= max(a["bbox"][2:]) <= 64
                )
        objects = np.bincount([len(coco.getAnnIds(imgIds=i, iscrowd=False)) for i in coco.imgs], minlength=5)
        assert objects[1:5].sum() == n_images - objects[0] and objects[0] == (split == "train")


def test_coco_tiny_digit_boxes_frame_the_yellow_cards(tiny):
    root = tiny("coco_tiny")
    content = _coco_json(root, "val")
    files = {image["id"]: image["file_name"] for image in content["images"]}
    for a in content["annotations"]:
        if a["category_id"] == 7 and not a["iscrowd"]:
            x, y, w, h = (int(v) for v in a["bbox"])
            pixels = np.asarray(Image.open(root / "val2017" / files[a["image_id"]]), dtype=np.float32)
            ring = pixels[y + 1 : y + h - 1, x + 1 : x + w - 1]
            edge = np.concatenate([ring[0], ring[-1], ring[:, 0], ring[:, -1]])  # card margin, just inside
            assert edge[:, 0].mean() > 180 and edge[:, 2].mean() < 110


def test_coco_tiny_splits_are_disjoint(tiny):
    root = tiny("coco_tiny")
    train, val = _coco_json(root, "train"), _coco_json(root, "val")
    for key in ("images", "annotations"):
        assert not {e["id"] for e in train[key]} & {e["id"] for e in val[key]}
    digests = [{_sha(str(p)) for p in (root / f"{split}2017").glob("*.jpg")} for split in ("train", "val")]
    assert len(digests[0]) == 48 and len(digests[1]) == 16 and not digests[0] & digests[1]


def test_coco_tiny_ground_truth_scores_an_ap_of_one(tiny):
    root = tiny("coco_tiny")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(root / "annotations" / "instances_val2017.json"))
        detections = coco.loadRes(
            [
                {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                for a in coco.anns.values()
                if not a["iscrowd"]
            ]
        )
        evaluation = COCOeval(coco, detections, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_a_killed_build_leaves_no_partial_set_and_the_next_build_clears_its_folder(tmp_path):
    root = tmp_path / "cifar10_tiny"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vtrain.data.tiny", "--root", str(tmp_path), "cifar10_tiny"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    # killed in the middle of the build: once its temporary folder holds a file
    while not any(path.is_file() for path in root.rglob("*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "cifar-10-batches-py").exists()
    (staging,) = list(root.iterdir())
    assert staging.name.startswith(".cifar-10-batches-py.")

    target = build_tiny("cifar10_tiny", root)
    assert sorted(root.iterdir()) == [target]
    assert len(CIFAR(root, "train")) == 3000 and len(CIFAR(root, "test")) == 300
