"""data.decode=tensor: torchvision decodes in the loader workers and the pipelines resample uint8 tensors,
with the PIL path's random draws and its pixels to within the resize kernels' rounding."""

import io
import random
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from omegaconf import OmegaConf
from PIL import Image

from vtrain.data.classification import ClassificationDataModule
from vtrain.data.coco_panoptic import PanopticDataModule
from vtrain.data.detection import DetectionDataModule
from vtrain.data.images import CorruptImageError, ImageFileLoader
from vtrain.data.shards.convert import convert
from vtrain.data.tensor_decode import TensorFileLoader
from vtrain.data.transforms import (
    NormalizedTensor,
    PlanesToPIL,
    TimmCropOnTensor,
    build_classification_transforms,
)

REPO = Path(__file__).resolve().parents[2]
SHARED_IMAGENET = REPO.parent / "shared" / "data" / "imagenet" / "train"  # real JPEGs, where present
DEIT = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "experiment" / "vit_s16_imagenet.yaml").data)
STATS = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
GREY_LEVELS = 255 * torch.tensor(STATS["std"]).view(3, 1, 1)  # normalised units -> grey levels


def _jpegs(tmp_path: Path) -> list[Path]:
    """The photos scikit-image ships (500 x 375 and larger, ImageNet's sizes) as quality-90 JPEGs."""
    paths = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field"):
        path = tmp_path / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path, quality=90)
        paths.append(path)
    return paths


def _seeded(transform, image, seed: int) -> tuple[torch.Tensor, tuple]:
    """``transform(image)`` with the three generators seeded as a worker seeds a sample, and the state
    they are left in (the draws made)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    out = transform(image)
    return out, (random.random(), float(np.random.random()), float(torch.rand(())))


def test_the_decoder_gives_pils_pixels_exactly(tmp_path):
    paths = _jpegs(tmp_path) + sorted(SHARED_IMAGENET.glob("*/*"))[:30]
    loader = TensorFileLoader()
    for path in paths:
        pil = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(loader(path).as_subclass(torch.Tensor), pil), path


# recipe, torchvision RandAugment magnitude, bounds on the mean and on the largest image's mean difference
# in grey levels; measured on these photos: 0.012 / 0.13 (timm), 0.003 / 0.005 (imagenet), 0.11 / 0.65
# (imagenet with v2.RandAugment, whose ops differ between the PIL and the tensor kernels themselves)
PIPELINES = [("timm", None, 0.1, 0.5), ("imagenet", None, 0.02, 0.05), ("imagenet", 9, 0.25, 1.0)]


@pytest.mark.parametrize(("recipe", "randaugment", "mean_bound", "max_bound"), PIPELINES)
def test_the_tensor_pipeline_makes_the_pil_pipelines_draws_within_a_grey_level(
    tmp_path, recipe, randaugment, mean_bound, max_bound
):
    """The same seed: the same draws (the generators end in the same state), pixels within the resize
    kernels' rounding, amplified at places by RandAugment's thresholds (posterize, solarize)."""
    options = dict(image_size=224, recipe=recipe, interpolation="bicubic", **STATS)
    if recipe == "timm":
        options["timm_train"] = DEIT["timm_train"]
    options["randaugment_magnitude"] = randaugment
    pil_path = build_classification_transforms(train=True, **options)
    tensor_path = build_classification_transforms(train=True, tensor_images=True, **options)
    loader = TensorFileLoader()
    means = []
    for seed, path in enumerate(_jpegs(tmp_path) * 3):
        expected, draws = _seeded(pil_path, Image.open(path).convert("RGB"), seed)
        found, tensor_draws = _seeded(tensor_path, loader(path), seed)
        assert type(found) is torch.Tensor and found.shape == expected.shape == (3, 224, 224)
        assert tensor_draws == draws, path
        means.append(((found - expected).abs() * GREY_LEVELS).mean().item())
    assert np.mean(means) < mean_bound and max(means) < max_bound, sorted(means)[-3:]


def test_the_timm_crop_on_a_tensor_is_timms_crop():
    crop = build_classification_transforms(
        train=True, tensor_images=True, image_size=224, recipe="timm", timm_train=DEIT["timm_train"], **STATS
    ).transforms[0]
    assert isinstance(crop, TimmCropOnTensor)
    pixels = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)
    random.seed(3)
    expected = crop.crop.get_params(Image.fromarray(skimage.data.chelsea()), crop.crop.scale, crop.crop.ratio)
    random.seed(3)
    assert crop.crop.get_params(pixels, crop.crop.scale, crop.crop.ratio) == expected


def test_plain_jpegs_decode_with_torchvision_the_rest_with_pil(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    files = {"grey.jpg": ("L", "JPEG"), "cmyk.jpg": ("CMYK", "JPEG"), "photo.png": ("RGB", "PNG")}
    for name, (mode, format) in files.items():
        Image.fromarray(pixels).convert(mode).save(tmp_path / name, format=format)
    (tmp_path / "png_named.JPEG").write_bytes((tmp_path / "photo.png").read_bytes())
    loader = TensorFileLoader()
    for name in [*files, "png_named.JPEG"]:
        image = loader(tmp_path / name)
        pil = torch.from_numpy(np.array(Image.open(tmp_path / name).convert("RGB"))).permute(2, 0, 1)
        assert image.shape == (3, 48, 80) and torch.equal(image.as_subclass(torch.Tensor), pil), name


def test_a_broken_jpeg_is_named_or_skipped_and_counted(tmp_path):
    path = tmp_path / "broken.jpg"
    Image.fromarray(skimage.data.chelsea()).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header reads, the scan data ends early
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        TensorFileLoader()(path)
    skipping = TensorFileLoader(ImageFileLoader(skip_corrupt=True))
    assert skipping(path) is None and skipping(tmp_path / "absent.jpg") is None
    assert skipping.skipped == 2


def _imagenet(root: Path, **overrides) -> ClassificationDataModule:
    args = dict(dataset="imagenet", root=str(root), num_classes=1000, image_size=64, **STATS)
    keys = dict(recipe="timm", timm_train=DEIT["timm_train"], batch_size=8, num_workers=0)
    return ClassificationDataModule(**{**args, **keys, **overrides})


@pytest.mark.parametrize("format", ["folders", "shards"])
def test_imagenet_batches_from_tensors_match_the_pil_path(tiny, tmp_path, format):
    root = tiny("imagenet_tiny")
    if format == "shards":
        root = tmp_path / "shards"
        convert("imagenet", tiny("imagenet_tiny"), root, 1 << 20)
    pil, tensor = _imagenet(root, format=format), _imagenet(root, format=format, decode="tensor")
    for module in (pil, tensor):
        module.setup("fit")
    batches = (next(iter(module.train_dataloader())) for module in (pil, tensor))
    (images, labels), (tensor_images, tensor_labels) = batches
    assert torch.equal(labels, tensor_labels) and tensor_images.shape == images.shape == (8, 3, 64, 64)
    assert ((images - tensor_images).abs() * GREY_LEVELS).mean() < 0.5
    (val, _), (tensor_val, _) = (next(iter(m.val_dataloader())) for m in (pil, tensor))
    assert ((val - tensor_val).abs() * GREY_LEVELS).mean() < 0.5


def test_detr_batches_from_tensors_match_the_pil_path(tiny):
    sizes = dict(scales=(96, 112, 128), max_size=200, pre_crop_scales=(80, 96), crop_min=64, crop_max=112)
    args = dict(root=str(tiny("coco_tiny")), num_classes=11, batch_size=4, num_workers=0, eval_size=128)
    pil, tensor = DetectionDataModule(**args, **sizes), DetectionDataModule(**args, **sizes, decode="tensor")
    for module in (pil, tensor):
        module.setup("fit")
    (images, mask, targets), (tensor_images, tensor_mask, tensor_targets) = (
        next(iter(m.train_dataloader())) for m in (pil, tensor)
    )
    assert torch.equal(mask, tensor_mask) and images.shape == tensor_images.shape
    for target, tensor_target in zip(targets, tensor_targets, strict=True):
        assert torch.equal(target["labels"], tensor_target["labels"])
        torch.testing.assert_close(target["boxes"], tensor_target["boxes"])
    assert ((images - tensor_images).abs() * GREY_LEVELS).mean() < 1.0


def test_decode_tensor_is_refused_where_the_images_are_not_files(tiny):
    with pytest.raises(ValueError, match="cifar10 has its images as arrays in memory"):
        cifar = dict(dataset="cifar10", root="x", num_classes=10, image_size=32, recipe="cifar")
        ClassificationDataModule(**cifar, decode="tensor", **STATS)
    with pytest.raises(ValueError, match="PanopticDataModule: data.decode=tensor"):
        PanopticDataModule(root="x", decode="tensor")


def test_a_loader_reading_shards_gives_the_tensor_loader_its_bytes(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(skimage.data.coffee()).save(path, quality=90)

    class Bytes(ImageFileLoader):
        def read(self, _: str | Path) -> bytes:
            return path.read_bytes()

    image = TensorFileLoader(Bytes())("somewhere/else.jpg")
    reference = np.array(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
    assert torch.equal(image.as_subclass(torch.Tensor), torch.from_numpy(reference).permute(2, 0, 1))


def test_the_fused_normalisation_is_timms_to_float_rounding():
    from timm.data.transforms import MaybeToTensor
    from torchvision import transforms

    steps = build_classification_transforms(
        train=True, tensor_images=True, image_size=224, recipe="timm", timm_train=DEIT["timm_train"], **STATS
    ).transforms
    fused = next(step for step in steps if isinstance(step, NormalizedTensor))
    assert not any(isinstance(step, (MaybeToTensor, transforms.Normalize)) for step in steps)
    image = Image.fromarray(skimage.data.astronaut())
    expected = transforms.Normalize(STATS["mean"], STATS["std"])(MaybeToTensor()(image))
    torch.testing.assert_close(fused(image), expected, rtol=0, atol=1e-6)


def test_planes_to_pil_is_to_pil_image():
    from torchvision.transforms import v2

    pixels = torch.from_numpy(skimage.data.coffee()).permute(2, 0, 1)  # a strided view, as decode_jpeg's
    assert np.array_equal(np.asarray(PlanesToPIL()(pixels)), np.asarray(v2.ToPILImage()(pixels)))
