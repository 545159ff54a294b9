"""data.decode=gpu: the workers send JPEG bytes and seeds, the batch is decoded and augmented after the
transfer with the CPU path's draws. The device path runs here with device="cpu" (torchvision's CPU
decode_jpeg) where no GPU is present, and on CUDA in the test marked gpu."""

import io
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as L
import torch
from PIL import Image
from torch import nn

import vtrain.data.gpu_decode as gpu_decode
from vtrain.data.classification import ClassificationDataModule
from vtrain.data.detection import DetectionDataModule
from vtrain.data.gpu_decode import EncodedBatch, EncodedFileLoader, decode_images, jpeg_frame
from vtrain.data.images import CorruptImageError

VIT_STATS = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
DETR_TINY_SIZES = dict(
    scales=(96, 112, 128), max_size=200, pre_crop_scales=(80, 96), crop_min=64, crop_max=112, eval_size=128
)


@pytest.fixture
def cuda_claimed(monkeypatch):
    """The setup check passes on a CPU machine, so that the device path runs with device="cpu"."""
    monkeypatch.setattr(gpu_decode, "cuda_available", lambda: True)


def _imagenet(root: Path, **overrides) -> ClassificationDataModule:
    args = dict(dataset="imagenet", root=str(root), num_classes=1000, image_size=64, recipe="imagenet")
    return ClassificationDataModule(**{**args, **VIT_STATS, "batch_size": 8, "num_workers": 0, **overrides})


def _coco(root: Path, **overrides) -> DetectionDataModule:
    args = dict(root=str(root), num_classes=11, batch_size=4, num_workers=0, **DETR_TINY_SIZES)
    return DetectionDataModule(**{**args, **overrides})


def _photo(mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def test_jpegs_the_gpu_takes_travel_as_bytes_the_others_are_decoded_and_counted(tmp_path):
    files = {
        "baseline.jpg": dict(format="JPEG", quality=90),
        "progressive.jpg": dict(format="JPEG", quality=90, progressive=True),
        "grey.jpg": dict(format="JPEG"),
        "cmyk.jpg": dict(format="JPEG"),
        "photo.png": dict(format="PNG"),
    }
    modes = {"grey.jpg": "L", "cmyk.jpg": "CMYK"}
    for name, options in files.items():
        _photo(modes.get(name, "RGB")).save(tmp_path / name, **options)
    loader = EncodedFileLoader()
    images = {name: loader(tmp_path / name) for name in files}

    assert all(image.size == (80, 48) for image in images.values())
    assert {name for name, image in images.items() if image.encoded} == {
        "baseline.jpg",
        "progressive.jpg",
        "grey.jpg",
    }
    assert jpeg_frame((tmp_path / "cmyk.jpg").read_bytes())[4] == 4 and jpeg_frame(b"\x89PNG....") is None
    assert loader.decoded_on_cpu == 2 and images["photo.png"].data.shape == (3, 48, 80)
    decoded = decode_images(list(images.values()), "cpu")
    assert all(d.shape == (3, 48, 80) and d.dtype == torch.uint8 for d in decoded)
    # the CPU path's pixels (PIL), within the decoders' rounding
    reference = torch.from_numpy(np.array(Image.open(tmp_path / "baseline.jpg").convert("RGB"))).permute(
        2, 0, 1
    )
    assert (decoded[0].int() - reference.int()).abs().float().mean() < 0.5


def test_a_broken_jpeg_names_its_file(tmp_path):
    path = tmp_path / "broken.jpg"
    _photo().save(path, format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # the header reads, the scan data ends early
    good = tmp_path / "good.jpg"
    _photo().save(good, format="JPEG")
    loader = EncodedFileLoader()
    images = [loader(good), loader(path)]
    assert images[1].encoded
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        decode_images(images, "cpu")


def test_imagenet_batches_decoded_after_the_transfer_match_the_cpu_path(tiny, cuda_claimed):
    """Same labels, same crops, flips and erasings (seeded per sample); pixels within the decoders' and
    resize kernels' rounding: measured mean 0.05, max 3 grey levels."""
    options = dict(random_erasing=0.25)
    cpu, gpu = (
        _imagenet(tiny("imagenet_tiny"), **options),
        _imagenet(tiny("imagenet_tiny"), decode="gpu", **options),
    )
    cpu.setup("fit")
    gpu.setup("fit")
    images, labels = next(iter(cpu.train_dataloader()))
    batch = next(iter(gpu.train_dataloader()))
    assert isinstance(batch, EncodedBatch) and all(image.encoded for image in batch.images)
    device_images, device_labels = gpu.decode_batch(batch, "cpu")

    assert torch.equal(labels, device_labels) and device_images.shape == images.shape
    levels = (images - device_images).abs() * 0.5 * 255  # normalised by std 0.5
    assert levels.mean() < 0.5 and levels.max() <= 8
    val_images, _ = next(iter(cpu.val_dataloader()))
    device_val, _ = gpu.decode_batch(next(iter(gpu.val_dataloader())), "cpu")
    assert ((val_images - device_val).abs() * 0.5 * 255).max() <= 8


def test_detr_batches_decoded_after_the_transfer_match_the_cpu_path(tiny, cuda_claimed):
    root = tiny("coco_tiny")
    cpu, gpu = _coco(root), _coco(root, decode="gpu")
    cpu.setup("fit")
    gpu.setup("fit")
    images, mask, targets = next(iter(cpu.train_dataloader()))
    device_images, device_mask, device_targets = gpu.decode_batch(next(iter(gpu.train_dataloader())), "cpu")

    assert device_images.shape == images.shape and torch.equal(mask, device_mask)
    assert ((images - device_images).abs() * 0.226 * 255).mean() < 0.5
    for target, device_target in zip(targets, device_targets, strict=True):
        assert target.keys() == device_target.keys() and target["image_id"] == device_target["image_id"]
        for key in ("boxes", "labels", "size", "orig_size", "area"):
            torch.testing.assert_close(target[key], device_target[key])


class _Classifier(L.LightningModule):
    """Records what its training step receives."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.seen = nn.Linear(3 * 64 * 64, 1000), []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        self.seen.append((type(images), images.shape, labels.dtype))
        return nn.functional.cross_entropy(self.head(images.flatten(1)), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_the_trainer_hands_the_task_decoded_batches(tmp_path, tiny, cuda_claimed):
    """Lightning's on_after_batch_transfer of the data module turns the encoded batch into the one the
    task's training step expects (here on the CPU device)."""
    model = _Classifier()
    trainer = L.Trainer(
        fast_dev_run=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=_imagenet(tiny("imagenet_tiny"), decode="gpu"))
    assert model.seen == [(torch.Tensor, (8, 3, 64, 64), torch.int64)] * 2


def test_decode_gpu_without_cuda_fails_at_setup_naming_the_key(tiny, monkeypatch):
    monkeypatch.setattr(gpu_decode, "cuda_available", lambda: False)
    datamodule = _imagenet(tiny("imagenet_tiny"), decode="gpu")
    with pytest.raises(RuntimeError, match="data.decode=gpu .* use data.decode=cpu"):
        datamodule.setup("fit")
    with pytest.raises(RuntimeError, match="data.decode=gpu"):
        _coco(tiny("coco_tiny"), decode="gpu").setup("fit")


def test_decode_gpu_is_refused_where_it_cannot_run(tiny):
    with pytest.raises(ValueError, match="data.decode=gpu .*timm's PIL pipeline"):
        _imagenet(tiny("imagenet_tiny"), decode="gpu", recipe="timm")
    with pytest.raises(ValueError, match="cifar10 .*arrays in memory"):
        ClassificationDataModule(
            dataset="cifar10",
            root="x",
            num_classes=10,
            image_size=32,
            recipe="cifar",
            decode="gpu",
            **VIT_STATS,
        )
    with pytest.raises(ValueError, match="data.decode must be one of"):
        _imagenet(tiny("imagenet_tiny"), decode="nvjpeg")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_nvjpeg_batches_match_the_cpu_path(tiny):
    """On the GPU: nvJPEG's pixels and the CUDA resize kernels against PIL's, the same draws."""
    for make, root, scale in ((_imagenet, "imagenet_tiny", 0.5), (_coco, "coco_tiny", 0.226)):
        cpu, gpu = make(tiny(root)), make(tiny(root), decode="gpu")
        cpu.setup("fit")
        gpu.setup("fit")
        reference = next(iter(cpu.train_dataloader()))
        decoded = gpu.decode_batch(next(iter(gpu.train_dataloader())), "cuda")
        assert decoded[0].is_cuda and decoded[0].shape == reference[0].shape
        levels = (reference[0] - decoded[0].cpu()).abs() * scale * 255
        assert levels.mean() < 1.0 and levels.max() <= 16, (root, levels.mean(), levels.max())


def test_jpeg_frame_skips_segments_before_the_frame_header():
    buffer = io.BytesIO()
    _photo().save(buffer, format="JPEG", exif=b"Exif\x00\x00" + b"\x00" * 64, dpi=(72, 72))
    marker, precision, height, width, components = jpeg_frame(buffer.getvalue())
    assert (marker, precision, height, width, components) == (0xC0, 8, 48, 80, 3)
