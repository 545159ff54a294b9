"""``data.decode=gpu``: JPEG files decoded on the GPU in batches, and the augmentations run there.

With ``decode: cpu`` (the default) a loader worker opens each file with PIL, augments it and sends the
pixels. With ``decode: gpu`` the worker only reads the file: the sample is its encoded bytes
(:class:`EncodedImage`), the label or target, and the sample's augmentation seed
(``SeededSamples(with_seed=True)``). When the batch has reached the device, the data module's
``on_after_batch_transfer`` decodes all its JPEGs in one ``torchvision.io.decode_jpeg(list, device=...)``
call (nvJPEG) and runs the same transforms.v2 pipeline on the decoded GPU tensors, each sample inside
``seeded_generators(seed)``: the random crops, flips and erasings are the ones the CPU path draws (v2 draws
its parameters from the CPU generator even for GPU tensors), so exact resume and the DDP equivalence hold
unchanged. The pixels differ from the CPU path's by the decoders (nvJPEG against libjpeg-turbo) and the
resize kernels (torch's antialiased interpolation against PIL's), about one grey level.

Files the GPU decoder does not take are decoded on the CPU in the worker, as with ``decode: cpu``, and sent
as pixels; ``EncodedFileLoader.decoded_on_cpu`` counts them (logged at teardown): PNGs and other non-JPEG
files (ImageNet's train split has one, n02105855_2933.JPEG), CMYK / YCCK JPEGs (4 components; 22 in
ImageNet's train split; both lists: tensorflow/models inception build_imagenet_data.py ``_is_png``,
``_is_cmyk``), 12-bit and lossless or arithmetic-coded JPEGs. The file's content decides, not its name.
Baseline and progressive 8-bit JPEGs with 1 or 3 components go to the GPU. A JPEG whose header reads but
whose data is broken fails in the batched decode; the batch is then decoded file by file to raise a
``CorruptImageError`` naming the file (``skip_corrupt`` cannot drop it there: the batch is already formed).

Pipelines built on PIL (the classification recipe ``timm``, DeiT's: timm's RandAugment works on PIL
images) cannot run on GPU tensors; the data module refuses ``decode: gpu`` for them, and for data sets that
are not image files (CIFAR).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from vtrain.data.images import CorruptImageError, ImageFileLoader, RereadingLoader, jpeg_frame, plain_jpeg
from vtrain.data.sampler import seeded_generators
from vtrain.data.splits import base_dataset
from vtrain.data.tensor_decode import TensorFileLoader

# cpu: PIL in the workers; tensor: torchvision in the workers, uint8 tensors augmented
# (vtrain.data.tensor_decode); gpu: nvJPEG on the device, augmented there (this module)
DECODES = ("cpu", "tensor", "gpu")


class EncodedImage:
    """An image file as a ``decode: gpu`` worker sends it.

    Attributes:
        data: the file's bytes, uint8 [N], for a JPEG the GPU decodes; else the pixels the worker decoded,
            uint8 [3, H, W] RGB.
        width, height: the image's size in pixels (from the JPEG header); ``size`` is (width, height), as
            for a PIL image, so the data sets check it against their annotations unchanged.
        path: the file, for error messages.
        train: which pipeline runs on the device (set by :class:`DeferToDevice`).
    """

    __slots__ = ("data", "width", "height", "path", "train")

    def __init__(self, data: torch.Tensor, width: int, height: int, path: str, train: bool = False) -> None:
        self.data, self.width, self.height, self.path, self.train = data, width, height, path, train

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def encoded(self) -> bool:
        return self.data.ndim == 1


class EncodedFileLoader(RereadingLoader):
    """The ``decode: gpu`` counterpart of an :class:`~vtrain.data.images.ImageFileLoader` (``source``, which
    reads from folders or from shards): returns a JPEG the GPU decodes as its bytes, has ``source`` decode
    anything else on the CPU (and counts it in ``decoded_on_cpu``, summed over worker processes).
    Unreadable files raise or are skipped, and counted in ``skipped``, as ``source`` does."""

    def __init__(self, source: ImageFileLoader | None = None) -> None:
        super().__init__(source)
        self._decoded_on_cpu = torch.multiprocessing.Value("i", 0)

    def __call__(self, path: str | Path) -> EncodedImage | None:
        data = self.read(path)
        frame = jpeg_frame(data)
        if plain_jpeg(frame):
            _, _, height, width, _ = frame
            return EncodedImage(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), width, height, str(path)
            )
        image = self.source(path)
        if image is None:
            return None
        with self._decoded_on_cpu.get_lock():
            self._decoded_on_cpu.value += 1
        return EncodedImage(F.pil_to_tensor(image), image.width, image.height, str(path))

    @property
    def decoded_on_cpu(self) -> int:
        """Files decoded on the CPU so far (not JPEGs nvJPEG takes), over all worker processes."""
        return self._decoded_on_cpu.value


class DeferToDevice:
    """The data set's transform under ``decode: gpu``: marks the image for the train or the eval pipeline
    and passes the sample through; the pipeline itself runs after the batch transfer."""

    def __init__(self, train: bool) -> None:
        self.train = train

    def __call__(self, image: EncodedImage, *target: Any) -> Any:
        image.train = self.train
        return (image, *target) if target else image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(train={self.train})"


class EncodedBatch:
    """A ``decode: gpu`` batch: ``images`` (:class:`EncodedImage`), ``targets`` (labels or target dicts)
    and ``seeds``, one per sample. A plain object, so Lightning's batch transfer and pinning leave it on
    the CPU, where ``decode_jpeg`` wants its input."""

    def __init__(self, images: list[EncodedImage], targets: list[Any], seeds: list[int]) -> None:
        self.images, self.targets, self.seeds = images, targets, seeds

    def __len__(self) -> int:
        return len(self.images)


def collate_encoded(batch: Sequence[tuple[EncodedImage, Any, int] | None]) -> EncodedBatch:
    """DataLoader collate for ``decode: gpu`` samples ``(image, label or target, seed)``; samples that are
    None (skipped corrupt images) are dropped."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        raise CorruptImageError(
            f"all {len(batch)} samples of a batch were unreadable images (skipped as corrupt); "
            "the data set is probably broken, see the warnings above for the file names"
        )
    return EncodedBatch([s[0] for s in kept], [s[1] for s in kept], [int(s[-1]) for s in kept])


def decode_images(images: Sequence[EncodedImage], device: torch.device | str) -> list[torch.Tensor]:
    """The images as uint8 [3, H, W] RGB tensors on ``device``, in order: the JPEGs in one batched
    ``decode_jpeg`` call, the ones the worker decoded copied over.

    Raises:
        CorruptImageError: naming the file whose JPEG data does not decode, or decodes to another size
            than its header gives.
    """
    device = torch.device(device)
    decoded: list[torch.Tensor | None] = [
        None if image.encoded else image.data.to(device, non_blocking=True) for image in images
    ]
    jpegs = [i for i, image in enumerate(images) if image.encoded]
    if jpegs:
        data = [images[i].data for i in jpegs]
        try:
            pixels = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pixels = [_decode_one(images[i], device) for i in jpegs]
        for i, image in zip(jpegs, pixels, strict=True):
            if tuple(image.shape[1:]) != (images[i].height, images[i].width):
                raise CorruptImageError(
                    f"{images[i].path}: decoded to {image.shape[2]} x {image.shape[1]} pixels but its JPEG "
                    f"header gives {images[i].width} x {images[i].height}"
                )
            decoded[i] = image
    return decoded  # type: ignore[return-value]


def _decode_one(image: EncodedImage, device: torch.device) -> torch.Tensor:
    try:
        return decode_jpeg(image.data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as error:
        raise CorruptImageError(f"cannot decode image {image.path} on {device}: {error}") from error


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


def augment_on_device(
    batch: EncodedBatch, train_transform: Callable, eval_transform: Callable, device: torch.device | str
) -> list[Any]:
    """Decode ``batch`` on ``device`` and run each sample's pipeline there, seeded by its seed as a loader
    worker would: a list of ``transform(image)`` (classification: the label is not passed) or
    ``transform(image, target)`` (detection: a target dict, its tensors moved to ``device`` first)."""
    device = torch.device(device)
    outputs = []
    pixels = decode_images(batch.images, device)
    for image, source, target, seed in zip(pixels, batch.images, batch.targets, batch.seeds, strict=True):
        transform = train_transform if source.train else eval_transform
        with seeded_generators(seed):
            if isinstance(target, dict):
                target = {key: _to(value, device) for key, value in target.items()}
                outputs.append(transform(tv_tensors.Image(image), target))
            else:
                outputs.append(transform(tv_tensors.Image(image)))
    return outputs


def cuda_available() -> bool:
    return torch.cuda.is_available()


class DeviceDecodeMixin:
    """``data.decode`` for a DataModule whose pipelines are transforms.v2 (``train_transform``,
    ``eval_transform``) and whose data sets read files with an ``ImageFileLoader`` in ``loader``.

    ``_init_decode`` (in ``__init__``, after the pipelines are built) moves them to ``device_transforms``
    and leaves :class:`DeferToDevice` in their place; ``_encoded(dataset)`` gives a freshly read data set
    an :class:`EncodedFileLoader` (``decode: tensor``: a :class:`~vtrain.data.tensor_decode.TensorFileLoader`,
    the pipelines left in place); ``_check_decode_device`` (in ``setup``) raises without CUDA; the module's
    ``collate`` becomes :func:`collate_encoded` and ``on_after_batch_transfer`` calls ``decode_batch``,
    which the module defines: it turns the transformed samples into the batch the CPU path gives.
    """

    decode: str
    collate: Callable | None
    train_transform: Callable
    eval_transform: Callable

    def _init_decode(self, decode: str) -> None:
        if decode not in DECODES:
            raise ValueError(f"{type(self).__name__}: data.decode must be one of {DECODES}, found {decode!r}")
        self.decode = decode
        if decode == "gpu":
            self.device_transforms = (self.train_transform, self.eval_transform)
            self.train_transform, self.eval_transform = DeferToDevice(True), DeferToDevice(False)
            self.collate = collate_encoded

    def _encoded(self, dataset: Any) -> Any:
        if self.decode == "gpu":
            dataset.loader = EncodedFileLoader(dataset.loader)
        elif self.decode == "tensor":
            dataset.loader = TensorFileLoader(dataset.loader)
        return dataset

    def _check_decode_device(self) -> None:
        if self.decode == "gpu" and not cuda_available():
            raise RuntimeError(
                f"{type(self).__name__}: data.decode=gpu decodes JPEGs with nvJPEG on a CUDA device, and "
                "torch sees none here; use data.decode=cpu"
            )

    def _augment_on_device(self, batch: EncodedBatch, device: torch.device | str) -> list[Any]:
        return augment_on_device(batch, *self.device_transforms, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, EncodedBatch):
            return self.decode_batch(batch, self.trainer.lightning_module.device)  # type: ignore[attr-defined]
        return batch

    def decoded_on_cpu(self) -> int:
        """Images that ``decode: gpu`` decoded on the CPU so far (not JPEGs nvJPEG takes), over the splits."""
        loaders = {id(d.loader): d.loader for d in self._decode_datasets() if hasattr(d, "loader")}
        return sum(loader.decoded_on_cpu for loader in loaders.values() if hasattr(loader, "decoded_on_cpu"))

    def _decode_datasets(self) -> list[Any]:
        sets = (getattr(self, name, None) for name in ("train_set", "val_set", "test_set"))
        return [base_dataset(d) for d in sets if d is not None]
