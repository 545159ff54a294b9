"""DETR's data augmentation (Carion et al. 2020, section 4 and appendix A.4) with torchvision.transforms.v2.

Every pipeline takes ``(image, target)``: a PIL image and a target of ``vtrain.data.coco.CocoDetection``
(``boxes`` a ``tv_tensors.BoundingBoxes`` in absolute XYXY pixels, so that v2 moves them with every
geometric step), and returns ``(image [3, h, w] float32 normalised, target)`` where the target's ``boxes``
are ``[N, 4]`` normalised cx, cy, w, h in [0, 1] of the transformed image, as DETR's criterion expects, and
``size`` is that image's (h, w); ``orig_size`` stays the size of the file, for the post-processor.

    train  horizontal flip (p 0.5), then with equal chance either
             a resize of the short side to a random ``scales`` entry (long side <= ``max_size``), or
             a resize to a random ``pre_crop_scales`` entry, a random crop of ``crop_min`` .. ``crop_max``
             px per side, then the multi-scale resize above;
    eval   short side to ``eval_size``, long side <= ``max_size``.

The resizes size the output as DETR does (``resized_size``), which differs by a pixel or more from
``v2.Resize(size, max_size=...)`` when the long side limits the scale.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The paper's sizes: short side 480 .. 800 in steps of 32, long side at most 1333; random crops of images
# first resized to a short side of 400 / 500 / 600.
DETR_SCALES = tuple(range(480, 801, 32))
DETR_MAX_SIZE = 1333
DETR_PRE_CROP_SCALES = (400, 500, 600)
DETR_CROP_MIN, DETR_CROP_MAX = 384, 600
DETR_EVAL_SIZE = 800


def resized_size(height: int, width: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """Output (height, width) of DETR's resize of a ``height`` x ``width`` image to short side ``size``.

    When the long side would then exceed ``max_size``, the short side becomes
    ``round(max_size * short / long)`` instead; the long side is the short side times the aspect ratio,
    truncated. An image whose short side already has the target length is left as it is.
    """
    short, long = min(height, width), max(height, width)
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if short == size:
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


class RandomShortSideResize(v2.Transform):
    """Resize so that the short side is a random entry of ``sizes``, the long side at most ``max_size``
    (see ``resized_size``); boxes are scaled with the image. Bilinear, as DETR."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        super().__init__()
        if not sizes or any(size <= 0 for size in sizes):
            raise ValueError(f"sizes must be a non-empty list of positive sides, found {list(sizes)}")
        if max_size is not None and max_size < max(sizes):
            raise ValueError(f"max_size {max_size} is smaller than the largest short side {max(sizes)}")
        self.sizes, self.max_size = list(sizes), max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        return {"size": list(resized_size(height, width, size, self.max_size))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize, inpt, size=params["size"], interpolation=InterpolationMode.BILINEAR, antialias=True
        )


class RandomSizeCrop(v2.Transform):
    """Crop a random region whose width and height are drawn uniformly from ``min_size`` .. ``max_size``
    (inclusive, and at most the image's), at a random place. Boxes are shifted and clamped to the region;
    the ones cut away become degenerate, for ``SanitizeBoundingBoxes`` to drop."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, found {min_size} and {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def _side(self, image_side: int) -> int:
        high = min(image_side, self.max_size)
        return int(torch.randint(min(self.min_size, high), high + 1, ()))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_height, crop_width = self._side(height), self._side(width)
        top = int(torch.randint(height - crop_height + 1, ()))
        left = int(torch.randint(width - crop_width + 1, ()))
        return {"top": top, "left": left, "height": crop_height, "width": crop_width}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def _per_box_fields(inputs: tuple[Any, dict]) -> tuple[torch.Tensor, ...]:
    """What ``SanitizeBoundingBoxes`` removes together with a dropped box: the target's per-box tensors."""
    target = inputs[1]
    return tuple(target[key] for key in ("labels", "area", "iscrowd") if key in target)


class NormalizeBoxes:
    """Last step: ``(image [3, h, w], target)`` -> the target's boxes as a plain ``[N, 4]`` float32 tensor
    of cx, cy, w, h divided by the image's w, h, and ``size`` = (h, w) of the image."""

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        height, width = image.shape[-2:]
        boxes = F.convert_bounding_box_format(target["boxes"], new_format=tv_tensors.BoundingBoxFormat.CXCYWH)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
        target = {
            **target,
            "boxes": boxes.as_subclass(torch.Tensor).float() / scale,
            "size": torch.tensor([height, width], device=image.device),
        }
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_detr_transforms(
    train: bool,
    scales: Sequence[int] = DETR_SCALES,
    max_size: int = DETR_MAX_SIZE,
    pre_crop_scales: Sequence[int] = DETR_PRE_CROP_SCALES,
    crop_min: int = DETR_CROP_MIN,
    crop_max: int = DETR_CROP_MAX,
    eval_size: int = DETR_EVAL_SIZE,
    hflip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """DETR's train or eval pipeline (see the module docstring); call it as ``pipeline(image, target)``.

    Args:
        train: the augmenting train pipeline, else the deterministic eval one.
        scales: short sides of the multi-scale resize, in pixels.
        max_size: longest allowed side after any resize (train and eval).
        pre_crop_scales: short sides of the resize (not limited by max_size) that precedes the random crop.
        crop_min, crop_max: range of the crop's width and height, in pixels of the pre-crop resize.
        eval_size: short side of the eval resize.
        hflip: random horizontal flips in the train pipeline.
        mean, std: per-channel statistics of images scaled to [0, 1] (the backbone's: ImageNet).
    """
    if train:
        geometric = [
            *([v2.RandomHorizontalFlip(p=0.5)] if hflip else []),
            v2.RandomChoice(
                [
                    RandomShortSideResize(scales, max_size),
                    v2.Compose(
                        [
                            RandomShortSideResize(pre_crop_scales),
                            RandomSizeCrop(crop_min, crop_max),
                            # The crop is the only step that can cut a box away. Unlike DETR, which drops
                            # boxes of zero area only, this also drops slivers under one pixel wide.
                            v2.SanitizeBoundingBoxes(labels_getter=_per_box_fields),
                            RandomShortSideResize(scales, max_size),
                        ]
                    ),
                ]
            ),
        ]
    else:
        geometric = [RandomShortSideResize([eval_size], max_size)]
    return v2.Compose(
        [
            *geometric,
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
            NormalizeBoxes(),
            v2.ToPureTensor(),
        ]
    )
