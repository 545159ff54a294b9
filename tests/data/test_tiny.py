import hashlib
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vtrain.data.cifar import CIFAR, load_cifar_pickle
from vtrain.data.imagenet import IMAGENET_WNIDS, ImageNet
from vtrain.data.tiny import IMAGENET_TINY_PHOTOS, TINY_SETS, build_tiny, main


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("name", sorted(TINY_SETS))
def test_builds_are_byte_identical_for_a_seed(tmp_path, tiny, name):
    first = _digests(tiny(name))
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
