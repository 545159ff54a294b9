"""``data.decode=tensor``: the loader workers decode JPEGs with torchvision and augment uint8 tensors.

With ``decode: cpu`` (the default) a worker opens each file with PIL and the pipeline resamples PIL images,
as the official code of every paper here does. With ``decode: tensor`` the worker decodes the file's bytes
(from a folder or a shard) with ``torchvision.io.decode_jpeg`` into a ``tv_tensors.Image`` [3, H, W] uint8,
and the pipeline crops and resizes that tensor with torch's antialiased uint8 kernels:

* the transforms.v2 recipes (imagenet, inception_crop, DETR's) run unchanged on the tensor;
* recipe ``timm`` (DeiT's) draws its random-resized crop with timm's own ``get_params``, resamples the
  tensor, flips it, and hands timm's RandAugment / colour jitter, erasing and normalisation a PIL image
  from there on (:func:`vtrain.data.transforms.tensor_front`).

Every random draw is the one the PIL path makes, in the same order, so the per-sample seeding, exact resume
and the DDP equivalence are unchanged. The pixels: torchvision's libjpeg-turbo decode equals PIL's exactly
on ImageNet's JPEGs, and torch's antialiased bicubic resize is PIL's to within a few hundredths of a grey
level on average (tests/data/test_tensor_decode.py measures both). On DeiT's pipeline a worker makes
1.1-1.2x the images per second of timm's own loader (the steps alone: 1.36x), on DETR's COCO pipeline about
1.4x the ``decode: cpu`` path's (docs/benchmarks.md, "Loader throughput: what the rows show").

Files that are not plain 8-bit JPEGs (PNGs, CMYK / YCCK, 12-bit, lossless or arithmetic-coded JPEGs; see
:func:`vtrain.data.images.plain_jpeg`) are opened with PIL as under ``decode: cpu`` and made a tensor, so
they get PIL's pixels. Unreadable files raise a ``CorruptImageError`` naming the file, or are skipped and
counted with ``skip_corrupt``, exactly as under ``decode: cpu``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from vtrain.data.images import CorruptImageError, RereadingLoader, jpeg_frame, plain_jpeg


class TensorFileLoader(RereadingLoader):
    """The ``decode: tensor`` counterpart of an :class:`~vtrain.data.images.ImageFileLoader` (``source``,
    which reads from folders or from shards): ``loader(path)`` is the image as a ``tv_tensors.Image``
    [3, H, W] uint8 RGB, None for a corrupt file that ``source`` skips (and counts in ``skipped``)."""

    def __call__(self, path: str | Path) -> tv_tensors.Image | None:
        data = self.read(path)
        if plain_jpeg(jpeg_frame(data)):
            try:
                pixels = decode_jpeg(
                    torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
                )
            except RuntimeError as error:
                corrupt = CorruptImageError(f"cannot read image {path}: {error}")
                corrupt.__cause__ = error
                return self.source.skip(path, corrupt)
            return tv_tensors.Image(pixels)
        image = self.source(path)
        return None if image is None else tv_tensors.Image(F.pil_to_tensor(image))
