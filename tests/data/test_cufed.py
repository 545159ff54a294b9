"""CUFED / CUFED5 layouts, the tiny CUFED-layout builder and the super-resolution DataModule."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vtrain.data.cufed import CUFED5, CUFEDTrain, SuperResolutionDataModule, hr_sample, to_tensor
from vtrain.data.tiny import build_tiny


@pytest.fixture(scope="module")
def cufed_tiny(data_dir: Path) -> Path:
    return build_tiny("cufed_tiny", data_dir / "cufed_tiny")


def test_tiny_set_has_the_cufed_and_cufed5_layouts(cufed_tiny):
    inputs = sorted((cufed_tiny / "train" / "input").glob("*.png"))
    refs = sorted((cufed_tiny / "train" / "ref").glob("*.png"))
    assert len(inputs) == len(refs) == 84
    assert Image.open(inputs[0]).size == (96, 96)
    test = cufed_tiny / "test" / "CUFED5"
    assert len(list(test.glob("*_0.png"))) == 6
    assert {p.name for p in test.glob("000_*.png")} == {f"000_{i}.png" for i in range(6)}
    # references really come from the same photo: level 1 is closer to its HR image than level 5
    hr = np.asarray(Image.open(test / "000_0.png"), dtype=np.float64)
    near = np.asarray(Image.open(test / "000_1.png"), dtype=np.float64)
    far = np.asarray(Image.open(test / "000_5.png"), dtype=np.float64)
    assert np.abs(hr - near).mean() < np.abs(hr - far).mean()


def test_hr_sample_is_bicubic_4x_as_the_official_code(tmp_path):
    rng = np.random.default_rng(0)
    hr = Image.fromarray(rng.integers(0, 256, (42, 50, 3), dtype=np.uint8))
    sample = hr_sample(hr, hr)
    assert sample["hr"].shape == (3, 40, 48)  # cut to multiples of 4
    lr = hr.crop((0, 0, 48, 40)).resize((12, 10), Image.BICUBIC)
    torch.testing.assert_close(sample["lr"], to_tensor(lr))
    torch.testing.assert_close(sample["lr_up"], to_tensor(lr.resize((48, 40), Image.BICUBIC)))
    assert sample["hr"].min() >= -1 and sample["hr"].max() <= 1


def test_training_pairs_are_padded_and_augmented_consistently(cufed_tiny):
    torch.manual_seed(0)
    plain = CUFEDTrain(cufed_tiny / "train", ref_size=128, augment=False)[3]
    assert plain["ref"].shape == (3, 128, 128) and (plain["ref"][:, 100:, 100:] == -1).all()
    augmented = CUFEDTrain(cufed_tiny / "train", ref_size=128, augment=True)
    changed = 0
    for _ in range(8):
        sample = augmented[3]
        # the LR image still is the HR image downsampled: the same flip / rotation reached both
        assert (F.avg_pool2d(sample["hr"][None], 4)[0] - sample["lr"]).abs().mean() < 0.05
        changed += not torch.equal(sample["hr"], plain["hr"])
    assert changed > 0
    cropped = CUFEDTrain(cufed_tiny / "train", ref_size=96, crop_size=48)[3]
    assert cropped["hr"].shape == (3, 48, 48) and cropped["lr"].shape == (3, 12, 12)
    assert cropped["ref"].shape == (3, 96, 96)
    with pytest.raises(ValueError, match="multiple of 4"):
        CUFEDTrain(cufed_tiny / "train", crop_size=50)


def test_cufed5_levels_and_lr_as_reference(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)).save(tmp_path / f"001_{i}.png")
    sample = CUFED5(tmp_path, ref_level=3)[0]
    assert sample["hr"].shape == (3, 88, 128) and sample["lr"].shape == (3, 22, 32)
    assert sample["ref_level"] == "3" and sample["name"] == "001_0"
    expected = np.asarray(Image.open(tmp_path / "001_3.png"))[:88, :128]
    torch.testing.assert_close(sample["ref"], to_tensor(expected))
    own = CUFED5(tmp_path, ref_level="lr")[0]
    torch.testing.assert_close(own["ref"][:, :20, :32], own["lr"][:, :20, :32])
    with pytest.raises(ValueError, match="ref_level"):
        CUFED5(tmp_path, ref_level=6)


def test_datamodule_loaders(cufed_tiny):
    dm = SuperResolutionDataModule(
        str(cufed_tiny), ref_size=96, batch_size=4, num_workers=0, test_ref_levels=(1, 5, "lr")
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["hr"].shape == (4, 3, 96, 96) and batch["lr"].shape == (4, 3, 24, 24)
    assert batch["ref"].shape == (4, 3, 96, 96)
    val = next(iter(dm.val_dataloader()))
    assert val["hr"].shape == (1, 3, 88, 120) and val["ref_level"] == ["1"]
    tests = dm.test_dataloader()
    assert [next(iter(loader))["ref_level"][0] for loader in tests] == ["1", "5", "lr"]


def test_files_skipped_for_their_extension_are_counted_once_per_folder(tmp_path, caplog):
    rng = np.random.default_rng(0)
    names = [*(f"train/{kind}/{i}.png" for kind in ("input", "ref") for i in range(2))]
    names += [f"test/CUFED5/000_{level}.png" for level in range(6)]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    for name in ("train/input/Thumbs.db", "test/CUFED5/readme.txt"):
        (tmp_path / name).write_text("")
    dm = SuperResolutionDataModule(
        str(tmp_path), ref_size=32, batch_size=2, num_workers=0, test_ref_levels=(1, 2)
    )
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")

    assert len(dm.train_set) == 2 and len(dm.val_set) == 1
    # the validation set and both test levels read test/CUFED5: its file is counted and logged once
    assert dm.data_counts() == {"data/corrupt_images_skipped": 0, "data/files_skipped_extension": 2}
    messages = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert messages == [
        f"{tmp_path / 'test/CUFED5'}: left out 1 files without an image extension (.png, .jpg, .jpeg, .bmp) "
        "(data/files_skipped_extension): readme.txt",
        f"{tmp_path / 'train'}: left out 1 files without an image extension (.png, .jpg, .jpeg, .bmp) "
        "(data/files_skipped_extension): input/Thumbs.db",
    ]
