import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as L
import torch
from PIL import Image
from timm.data import create_transform
from torch import nn
from torchvision import transforms, tv_tensors
from torchvision.transforms import v2

from vtrain.data.classification import ClassificationDataModule
from vtrain.data.imagenet import IMAGENET_WNIDS
from vtrain.data.images import CorruptImageError
from vtrain.data.sampler import SeededSamples, sample_seed
from vtrain.data.tiny import IMAGENET_TINY_PHOTOS
from vtrain.data.transforms import build_classification_transforms

CIFAR_STATS = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
VIT_STATS = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
IMAGENET_STATS = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# DeiT's training augmentation (facebookresearch/deit main.py defaults, datasets.py build_transform)
DEIT_TIMM_TRAIN = dict(
    auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, re_prob=0.25, re_mode="pixel", re_count=1
)


def _cifar10(root: Path, **overrides) -> ClassificationDataModule:
    args = dict(
        dataset="cifar10", root=str(root), num_classes=10, image_size=32, recipe="cifar", batch_size=16
    )
    return ClassificationDataModule(**{**args, **CIFAR_STATS, **overrides})


def _imagenet(root: Path, **overrides) -> ClassificationDataModule:
    args = dict(dataset="imagenet", root=str(root), num_classes=1000, image_size=64, recipe="imagenet")
    return ClassificationDataModule(**{**args, **VIT_STATS, "batch_size": 8, **overrides})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cifar10_tiny_batches(data_dir, num_workers):
    datamodule = _cifar10(data_dir / "cifar10_tiny", tiny="cifar10_tiny", num_workers=num_workers)
    datamodule.prepare_data()
    datamodule.setup("fit")

    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32 and type(images) is torch.Tensor
    assert labels.shape == (16,) and labels.dtype == torch.int64 and 0 <= labels.min() <= labels.max() < 10
    images, labels = next(iter(datamodule.val_dataloader()))
    # Normalised: undoing mean / std gives back pixels in [0, 1].
    mean, std = (torch.tensor(CIFAR_STATS[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    pixels = images * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and pixels.std() > 0.1
    assert (
        len(datamodule.train_dataloader()) == 3000 // 16
        and len(datamodule.test_dataloader()) == 300 // 16 + 1
    )


def test_imagenet_tiny_batches_keep_the_1000_class_indices(tiny):
    datamodule = _imagenet(tiny("imagenet_tiny"), num_workers=2, randaugment_magnitude=9)
    datamodule.setup("fit")

    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert set(labels.tolist()) <= {IMAGENET_WNIDS.index(wnid) for wnid, _, _ in IMAGENET_TINY_PHOTOS}
    assert next(iter(datamodule.val_dataloader()))[0].shape == (8, 3, 64, 64)


def test_kaggle_layout_and_cifar100_through_the_datamodule(tiny):
    kaggle = _imagenet(tiny("imagenet_tiny") / "kaggle", num_workers=0, eval_batch_size=100)
    kaggle.setup("validate")
    assert next(iter(kaggle.val_dataloader()))[1].bincount(minlength=1000).max() == 10

    cifar100 = _cifar10(
        tiny("cifar100_tiny"), dataset="cifar100", num_classes=100, image_size=48, num_workers=0
    )
    cifar100.setup("fit")
    assert next(iter(cifar100.train_dataloader()))[0].shape == (16, 3, 48, 48)


def test_num_classes_mismatch_and_too_small_subset_raise(tiny):
    with pytest.raises(ValueError, match=r"num_classes is 100 but the data set has 10 classes"):
        _cifar10(tiny("cifar10_tiny"), num_classes=100).setup("fit")
    with pytest.raises(ValueError, match=r"10 training samples are fewer than batch_size 16"):
        _cifar10(tiny("cifar10_tiny"), train_subset=10).setup("fit")
    subset = _cifar10(tiny("cifar10_tiny"), train_subset=40, num_workers=0)
    subset.setup("fit")
    assert len(subset.train_dataloader()) == 2


@pytest.mark.parametrize(
    "dataset, layout",
    [("cifar10", "<root>/cifar-10-batches-py/{data_batch_1"), ("imagenet", "<root>/train/<wnid>")],
)
def test_missing_data_names_the_path_and_the_layout(tmp_path, dataset, layout):
    make = _cifar10 if dataset == "cifar10" else _imagenet
    with pytest.raises(FileNotFoundError) as error:
        make(tmp_path / "missing").setup("fit")
    assert str(tmp_path / "missing") in str(error.value) and layout in str(error.value)


def _damage_val(root: Path, count: int) -> list[Path]:
    paths = sorted((root / "val").rglob("*.JPEG"))[:count]
    for path in paths:
        path.write_bytes(path.read_bytes()[:200])
    return paths


def test_skip_corrupt_counts_across_workers_and_reports_at_teardown(imagenet_tiny_copy, caplog):
    _damage_val(imagenet_tiny_copy, 3)
    datamodule = _imagenet(imagenet_tiny_copy, skip_corrupt=True, num_workers=2, persistent_workers=False)
    datamodule.setup("validate")

    assert sum(len(labels) for _, labels in datamodule.val_dataloader()) == 97
    assert datamodule.corrupt_count() == 3
    assert datamodule.data_counts() == {"data/corrupt_images_skipped": 3, "data/files_skipped_extension": 0}
    with caplog.at_level(logging.INFO, logger="vtrain.data.classification"):
        datamodule.teardown("validate")
    assert "imagenet: 3 corrupt images skipped so far" in caplog.text


def test_corrupt_image_without_skip_names_the_file(imagenet_tiny_copy):
    (broken,) = _damage_val(imagenet_tiny_copy, 1)
    datamodule = _imagenet(imagenet_tiny_copy, num_workers=2, persistent_workers=False)
    datamodule.setup("validate")
    error_type, message = _first_batch_error(datamodule.val_dataloader())
    assert error_type is CorruptImageError and f"cannot read image {broken}" in message


def _first_batch_error(loader) -> tuple[type, str]:
    """Type and message of the error of the first batch. The traceback is dropped: torch's re-raised error
    sits in a reference cycle with it and the iterator, and a worker shutdown run later by the garbage
    collector waits 5 s per worker."""
    batches = iter(loader)
    try:
        next(batches)
    except Exception as error:
        error.__traceback__ = None
        return type(error), str(error)
    raise AssertionError("the first batch loaded without error")


class _LinearClassifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3 * 32 * 32, 10)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return nn.functional.cross_entropy(self.head(images.flatten(1)), labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val_loss", nn.functional.cross_entropy(self.head(images.flatten(1)), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_trainer_runs_prepare_setup_and_teardown(tmp_path, tiny):
    root = tmp_path / "cifar10_tiny"
    shutil.copytree(tiny("cifar10_tiny"), root)
    datamodule = _cifar10(root, tiny="cifar10_tiny", num_workers=0, val_split="train")
    trainer = L.Trainer(
        fast_dev_run=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_LinearClassifier(), datamodule=datamodule)
    assert trainer.state.finished and len(datamodule.val_set) == 3000


@pytest.mark.parametrize("recipe", ["cifar", "imagenet", "finetune", "inception_crop"])
@pytest.mark.parametrize("train", [True, False])
def test_every_recipe_gives_normalised_float_images_of_image_size(recipe, train):
    torch.manual_seed(0)
    transform = build_classification_transforms(train, 48, recipe, randaugment_magnitude=9, **VIT_STATS)
    # Many draws, so that every RandAugment op meets both a PIL image and a tensor image.
    for image in 20 * (
        Image.new("RGB", (40, 30), (255, 0, 0)),
        tv_tensors.Image(torch.zeros(3, 32, 32, dtype=torch.uint8)),
    ):
        output = transform(image)
        assert type(output) is torch.Tensor and output.shape == (3, 48, 48) and output.dtype == torch.float32
        assert output.min() >= -1 and output.max() <= 1


def test_imagenet_eval_resizes_the_short_side_to_size_over_crop_pct_then_center_crops():
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    transform = build_classification_transforms(False, 32, "imagenet", crop_pct=0.5, **VIT_STATS)
    # int(32 / 0.5) = 64 is already the short side: no resampling, a 32 x 32 crop from the middle.
    expected = torch.from_numpy(pixels[16:48, 32:64]).permute(2, 0, 1) / 255 * 2 - 1
    torch.testing.assert_close(transform(Image.fromarray(pixels)), expected)


def test_inception_crop_eval_resizes_the_whole_image_to_a_square():
    # vit_jax/input_pipeline.py:213: tf.image.resize(im, [size, size]), no crop, the aspect ratio not kept
    base = np.random.default_rng(0).integers(0, 256, size=(16, 32, 3), dtype=np.uint8)
    pixels = base.repeat(2, axis=1)  # a 16 x 64 image of column pairs: any nearest resize halves it exactly
    transform = build_classification_transforms(
        False, 32, "inception_crop", interpolation="nearest", **VIT_STATS
    )
    expected = torch.from_numpy(base.repeat(2, axis=0)).permute(2, 0, 1) / 255 * 2 - 1
    torch.testing.assert_close(transform(Image.fromarray(pixels)), expected)


def test_inception_crop_train_crops_5_to_100_percent_of_the_area_then_flips():
    transform = build_classification_transforms(True, 32, "inception_crop", **VIT_STATS)
    crop, flip = transform.transforms[:2]
    assert isinstance(crop, v2.RandomResizedCrop) and isinstance(flip, v2.RandomHorizontalFlip)
    assert tuple(crop.size) == (32, 32) and crop.scale == (0.05, 1.0)
    assert crop.ratio == pytest.approx((3 / 4, 4 / 3))
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.zeros(3, 100, 100, dtype=torch.uint8))
    areas = [params["height"] * params["width"] for params in (crop.make_params([image]) for _ in range(400))]
    assert min(areas) < 0.08 * 100 * 100 and max(areas) > 0.9 * 100 * 100  # below torchvision's 8 %


def test_imagenet_crop_scale_sets_the_area_range_of_the_training_crops():
    # MAE's pretraining (facebookresearch/mae main_pretrain.py:124): RandomResizedCrop(scale=(0.2, 1.0))
    default = build_classification_transforms(True, 32, "imagenet", **VIT_STATS).transforms[0]
    mae = build_classification_transforms(
        True, 32, "imagenet", crop_scale=[0.2, 1.0], **VIT_STATS
    ).transforms[0]
    assert default.scale == (0.08, 1.0) and mae.scale == (0.2, 1.0)
    with pytest.raises(ValueError, match=r"crop_scale must be \[min, max\] with 0 < min <= max <= 1"):
        build_classification_transforms(True, 32, "imagenet", crop_scale=[0.5, 0.2], **VIT_STATS)
    with pytest.raises(
        ValueError, match="crop_scale is for recipe 'imagenet' only, found it with recipe 'cifar'"
    ):
        build_classification_transforms(True, 32, "cifar", crop_scale=[0.2, 1.0], **VIT_STATS)


def test_transform_arguments_are_checked():
    with pytest.raises(
        ValueError,
        match=r"one of \('cifar', 'imagenet', 'finetune', 'inception_crop', 'timm'\), found 'deit'",
    ):
        build_classification_transforms(True, 32, "deit", **VIT_STATS)
    with pytest.raises(
        ValueError,
        match=r"interpolation must be one of \('bicubic', 'bilinear', 'nearest'\), found 'lanczos'",
    ):
        build_classification_transforms(True, 32, "cifar", interpolation="lanczos", **VIT_STATS)


def test_hflip_can_be_turned_off_and_random_erasing_erases():
    pixels = tv_tensors.Image(torch.arange(32, dtype=torch.uint8).repeat(3, 32, 1) * 8)  # a left-right ramp
    no_flip = build_classification_transforms(True, 32, "imagenet", hflip=False, crop_pct=1.0, **VIT_STATS)
    flips = build_classification_transforms(True, 32, "imagenet", hflip=True, crop_pct=1.0, **VIT_STATS)
    torch.manual_seed(0)
    assert all((no_flip(pixels)[0, 0].diff() >= 0).all() for _ in range(20))
    assert any((flips(pixels)[0, 0].diff() < 0).any() for _ in range(20))
    erasing = build_classification_transforms(True, 32, "cifar", random_erasing=1.0, **VIT_STATS)
    assert (erasing(pixels) == 0).sum() > 0
    with pytest.raises(ValueError, match="random_erasing"):
        build_classification_transforms(True, 32, "cifar", random_erasing=1.5, **VIT_STATS)


def _photos(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = rng.integers(60, 140, size=(count, 2))
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _seeded(transform, image, seed: int) -> torch.Tensor:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return transform(image)


def test_timm_recipe_is_timms_create_transform_as_deit_calls_it():
    ours = build_classification_transforms(True, 48, "timm", timm_train=DEIT_TIMM_TRAIN, **IMAGENET_STATS)
    timms = create_transform(
        48, is_training=True, interpolation="bicubic", **DEIT_TIMM_TRAIN, **IMAGENET_STATS
    )
    photos, outputs = _photos(12), []
    for seed, image in enumerate(photos):
        output = _seeded(ours, image, seed)
        assert type(output) is torch.Tensor and output.shape == (3, 48, 48)
        torch.testing.assert_close(output, _seeded(timms, image, seed), rtol=0, atol=0)
        outputs.append(output)
    assert not torch.equal(outputs[0], _seeded(ours, photos[0], 99))  # the seeds matter
    # a tensor sample (CIFAR) goes through the same PIL pipeline
    pixels = tv_tensors.Image(torch.from_numpy(np.array(photos[0])).permute(2, 0, 1))
    torch.testing.assert_close(_seeded(ours, pixels, 0), outputs[0], rtol=0, atol=0)


class _TransformedPhotos(torch.utils.data.Dataset):
    """Four photos through `transform`."""

    def __init__(self, transform) -> None:
        self.transform, self.photos = transform, _photos(4)

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.photos[index]), index


def test_timm_recipe_draws_are_fixed_by_the_sample_seed():
    # RandAugment (NumPy's and Python's generators), erasing (Python's and torch's): the same key gives the
    # same image whatever ran before, another key another image
    transform = build_classification_transforms(
        True, 48, "timm", timm_train=DEIT_TIMM_TRAIN, **IMAGENET_STATS
    )
    samples = SeededSamples(_TransformedPhotos(transform))
    key = (3, sample_seed(0, 0, 3))
    first = samples[key][0]
    random.random(), np.random.rand(), torch.rand(1)
    assert torch.equal(samples[key][0], first)
    assert not torch.equal(samples[(3, sample_seed(0, 1, 3))][0], first)


def test_timm_recipe_evaluates_as_deit():
    # DeiT datasets.py:99-108: Resize(int(224 / 0.875) = 256, bicubic) of the short side, CenterCrop(224)
    ours = build_classification_transforms(False, 224, "timm", timm_train=DEIT_TIMM_TRAIN, **IMAGENET_STATS)
    deit = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_STATS["mean"], IMAGENET_STATS["std"]),
        ]
    )
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    torch.testing.assert_close(ours(image), deit(image))


def test_timm_recipe_arguments_are_checked():
    with pytest.raises(ValueError, match=r"timm_train must not set \['hflip', 'mean'\]"):
        build_classification_transforms(True, 32, "timm", timm_train={"hflip": 0.5, "mean": 0}, **VIT_STATS)
    with pytest.raises(ValueError, match="takes RandAugment and random erasing from timm_train"):
        build_classification_transforms(True, 32, "timm", randaugment_magnitude=9, **VIT_STATS)
    with pytest.raises(
        ValueError, match="timm_train is for recipe 'timm' only, found it with recipe 'imagenet'"
    ):
        build_classification_transforms(True, 32, "imagenet", timm_train=DEIT_TIMM_TRAIN, **VIT_STATS)


def test_timm_posterize_keeping_zero_bits_gives_black_as_before_pillow_13():
    """DeiT's rand-m9-mstd0.5-inc1 posterizes to 0 bits at magnitude 10, which Pillow 13 refuses."""
    from PIL import ImageOps
    from timm.data.auto_augment import RandAugment

    pipeline = build_classification_transforms(
        train=True, image_size=32, recipe="timm", timm_train=DEIT_TIMM_TRAIN, **VIT_STATS
    )
    randaugment = next(t for t in pipeline.transforms[1].transforms if isinstance(t, RandAugment))
    posterize = next(op for op in randaugment.ops if op.name == "PosterizeIncreasing")
    posterize.prob, posterize.magnitude, posterize.magnitude_std = 1.0, 10, 0.0
    image = _photos(1)[0]
    assert np.asarray(posterize(image)).max() == 0
    assert np.array_equal(np.asarray(posterize.aug_fn(image, 3)), np.asarray(ImageOps.posterize(image, 3)))
