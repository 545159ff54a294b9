"""Image-classification transforms (torchvision.transforms.v2) for the recipes of the 2020 papers.

Recipes:
    cifar     train: RandomCrop(32, padding=4) + horizontal flip (+ Resize to image_size when it is not 32);
              eval: Resize to image_size when it is not 32. The ResNet / LambdaNetworks CIFAR recipe.
    imagenet  train: RandomResizedCrop(image_size, scale=crop_scale) + flip; eval: Resize(int(image_size /
              crop_pct)) + CenterCrop(image_size). The ImageNet recipe of ViT / DeiT / LambdaNetworks (and,
              with crop_scale (0.2, 1), MAE's pretraining).
    finetune  train: Resize to image_size x image_size, RandomCrop with padding image_size // 8, flip;
              eval: Resize to image_size x image_size.
    inception_crop
              train: a random crop of 5 % to 100 % of the image's area, aspect ratio 3/4 to 4/3, resized to
              image_size x image_size, + flip; eval: the whole image resized to image_size x image_size
              (no center crop: crop fraction 1, aspect ratio not kept). The official ViT input pipeline
              (google-research/vision_transformer vit_jax/input_pipeline.py:195-213 at c6de1e5).
    timm      train: timm's own ``create_transform(is_training=True, ...)`` (random-resized crop, flip,
              RandAugment / AutoAugment or colour jitter, random erasing) with the keyword arguments in
              ``timm_train``, as DeiT builds it (facebookresearch/deit datasets.py build_transform); eval:
              as imagenet. Its draws come from Python's ``random``, NumPy and torch, all of which
              ``vtrain.data.sampler.SeededSamples`` seeds per sample.

Every pipeline takes a PIL image or a ``tv_tensors.Image`` (uint8) and returns a plain float tensor
``[3, image_size, image_size]`` normalised by mean / std. Mixup / CutMix act on batches, in the task. The
timm train pipeline built with ``tensor_images=True`` (``data.decode=tensor``) crops and flips the uint8
tensor and hands the rest of timm's steps a PIL image (:func:`tensor_front`).
"""

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as v1
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

RECIPES = ("cifar", "imagenet", "finetune", "inception_crop", "timm")
# tf.image.sample_distorted_bounding_box(area_range=(0.05, 1.0)) of vit_jax/input_pipeline.py:199-204, its
# default aspect_ratio_range (0.75, 1.33)
INCEPTION_CROP_AREA = (0.05, 1.0)
INCEPTION_CROP_RATIO = (3 / 4, 4 / 3)
# create_transform arguments that the recipe sets from the data module's own keys
TIMM_OWN_ARGS = ("input_size", "is_training", "mean", "std", "interpolation", "hflip")
INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def build_classification_transforms(
    train: bool,
    image_size: int,
    recipe: str,
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 0.875,
    randaugment_magnitude: int | None = None,
    interpolation: str = "bicubic",
    hflip: bool = True,
    random_erasing: float = 0.0,
    timm_train: Mapping[str, Any] | None = None,
    crop_scale: Sequence[float] | None = None,
    tensor_images: bool = False,
) -> v2.Compose:
    """The train or eval pipeline of ``recipe`` (see the module docstring).

    Args:
        train: the augmenting train pipeline, else the deterministic eval one.
        image_size: side of the square output, in pixels.
        mean, std: per-channel statistics for images scaled to [0, 1].
        crop_pct: imagenet eval: fraction of the resized image kept by the center crop (other recipes keep
            the whole image).
        randaugment_magnitude: adds RandAugment (2 ops) to a train pipeline, magnitude on timm's 0-10 scale
            ("rand-m9" is 9); None adds nothing.
        interpolation: "bicubic", "bilinear" or "nearest", for the resizes and crops.
        hflip: random horizontal flips in the train pipeline (off for digits and text).
        random_erasing: probability of erasing a random rectangle of a normalised train image with zeros.
        timm_train: recipe timm: keyword arguments of ``timm.data.create_transform`` besides the size,
            mean / std, interpolation and flip (which come from the arguments above), e.g. DeiT's
            ``{auto_augment: rand-m9-mstd0.5-inc1, color_jitter: 0.4, re_prob: 0.25, re_mode: pixel,
            re_count: 1}``; the torchvision RandAugment and erasing above must then stay off.
        crop_scale: imagenet train: the (min, max) fraction of the image's area RandomResizedCrop keeps;
            None: torchvision's (0.08, 1).
        tensor_images: the inputs are uint8 tensor images (``data.decode=tensor``): recipe timm's train
            pipeline then starts with :func:`tensor_front`. The transforms.v2 recipes take both kinds as
            they are.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, found {recipe!r}")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], found {crop_pct}")
    if randaugment_magnitude is not None and not 0 <= randaugment_magnitude <= 10:
        raise ValueError(f"randaugment_magnitude must be in [0, 10], found {randaugment_magnitude}")
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"random_erasing must be a probability in [0, 1], found {random_erasing}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, found {interpolation!r}")
    if crop_scale is not None and (len(crop_scale) != 2 or not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0):
        raise ValueError(f"crop_scale must be [min, max] with 0 < min <= max <= 1, found {crop_scale!r}")
    if crop_scale is not None and recipe != "imagenet":
        raise ValueError(f"crop_scale is for recipe 'imagenet' only, found it with recipe {recipe!r}")
    if recipe == "timm" and train:
        timm_steps = _timm_train(
            image_size, mean, std, interpolation, hflip, randaugment_magnitude, random_erasing, timm_train
        )
        if tensor_images:
            return v2.Compose([*tensor_front(timm_steps), v2.ToPureTensor()])
        # tensor samples (CIFAR) become PIL images, which timm's RandAugment works on
        return v2.Compose([v2.ToPILImage(), timm_steps, v2.ToPureTensor()])
    if recipe != "timm" and timm_train:
        raise ValueError(f"timm_train is for recipe 'timm' only, found it with recipe {recipe!r}")
    mode = INTERPOLATIONS[interpolation]
    square = (image_size, image_size)

    if recipe == "cifar":
        resize = [v2.Resize(square, interpolation=mode)] if image_size != 32 else []
        steps = [v2.RandomCrop(32, padding=4), *resize] if train else resize
    elif recipe in ("imagenet", "timm"):
        if train:
            scale = tuple(crop_scale) if crop_scale is not None else (0.08, 1.0)
            steps = [v2.RandomResizedCrop(image_size, scale=scale, interpolation=mode)]
        else:
            steps = [v2.Resize(int(image_size / crop_pct), interpolation=mode), v2.CenterCrop(image_size)]
    elif recipe == "inception_crop":
        if train:
            crop = v2.RandomResizedCrop(
                square, scale=INCEPTION_CROP_AREA, ratio=INCEPTION_CROP_RATIO, interpolation=mode
            )
            steps = [crop]
        else:
            steps = [v2.Resize(square, interpolation=mode)]
    else:
        steps = [v2.Resize(square, interpolation=mode)]
        if train:
            steps += [v2.RandomCrop(image_size, padding=image_size // 8)]
    if train and hflip:
        steps.append(v2.RandomHorizontalFlip())

    if train and randaugment_magnitude is not None:
        # 11 bins make magnitude m mean m / 10 of each op's maximum, as in timm's "rand-m<m>". Bilinear:
        # the rotations and shears of v2 reject bicubic on tensor images (CIFAR samples).
        randaugment = v2.RandAugment(
            num_ops=2,
            magnitude=randaugment_magnitude,
            num_magnitude_bins=11,
            interpolation=InterpolationMode.BILINEAR,
        )
        steps.append(randaugment)
    return v2.Compose(
        [
            *steps,
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
            *([v2.RandomErasing(p=random_erasing, value=0)] if train and random_erasing > 0 else []),
            v2.ToPureTensor(),
        ]
    )


def _timm_train(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str,
    hflip: bool,
    randaugment_magnitude: int | None,
    random_erasing: float,
    timm_train: Mapping[str, Any] | None,
) -> Callable:
    """timm's training pipeline (a torchvision ``Compose`` of timm transforms): PIL image -> normalised
    float tensor [3, image_size, image_size]."""
    # imported here: only this recipe needs timm, whose import takes seconds
    from timm.data import create_transform

    if randaugment_magnitude is not None or random_erasing > 0:
        raise ValueError(
            "recipe 'timm' takes RandAugment and random erasing from timm_train (auto_augment, re_prob), "
            f"found randaugment_magnitude={randaugment_magnitude}, random_erasing={random_erasing}"
        )
    arguments = dict(timm_train or {})
    own = sorted(set(arguments) & set(TIMM_OWN_ARGS))
    if own:
        raise ValueError(
            f"timm_train must not set {own}: recipe 'timm' takes them from image_size, mean, std, "
            "interpolation and hflip"
        )
    pipeline = create_transform(
        input_size=image_size,
        is_training=True,
        mean=tuple(mean),
        std=tuple(std),
        interpolation=interpolation,
        hflip=0.5 if hflip else 0.0,
        **arguments,
    )
    keep_zero_bit_posterize(pipeline)
    return pipeline


class TimmCropOnTensor:
    """timm's ``RandomResizedCropAndInterpolation`` (``crop``) for a uint8 tensor image: the crop drawn by
    timm's own ``get_params`` (and, for a random interpolation, ``random.choice``), the same draws as on a
    PIL image, resampled with torch's antialiased kernels (``v2.functional.resized_crop``), which give PIL's
    result to within a few hundredths of a grey level on average and run about 3x as fast."""

    def __init__(self, crop: Any) -> None:
        self.crop = crop

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        crop = self.crop
        top, left, height, width = crop.get_params(image, crop.scale, crop.ratio)
        interpolation = crop.interpolation
        if isinstance(interpolation, (tuple, list)):
            interpolation = random.choice(interpolation)
        size = list(crop.size)
        return F.resized_crop(
            image, top, left, height, width, size, interpolation=interpolation, antialias=True
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.crop!r})"


def tensor_front(pipeline: Any) -> list[Callable]:
    """The steps of timm's training pipeline (a ``Compose``) for a uint8 tensor image: its leading
    random-resized crop as :class:`TimmCropOnTensor` and the flips after it on the tensor (torchvision's,
    which take tensors), then a PIL image for the rest (RandAugment / colour jitter, ToTensor, Normalize,
    random erasing), as timm runs them, its ToTensor and Normalize fused into :class:`NormalizedTensor`.
    A pipeline that does not start with that crop gets its PIL image first."""
    from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation

    steps, front = list(pipeline.transforms), []
    if steps and isinstance(steps[0], RandomResizedCropAndInterpolation):
        front.append(TimmCropOnTensor(steps.pop(0)))
        while steps and isinstance(steps[0], (v1.RandomHorizontalFlip, v1.RandomVerticalFlip)):
            front.append(steps.pop(0))
    for i, (step, after) in enumerate(zip(steps, steps[1:], strict=False)):
        if isinstance(step, MaybeToTensor) and isinstance(after, v1.Normalize):
            mean, std = ([float(v) for v in values] for values in (after.mean, after.std))
            steps[i : i + 2] = [NormalizedTensor(mean, std)]
            break
    return [*front, PlanesToPIL(), *steps]


class PlanesToPIL:
    """A uint8 RGB tensor image [3, H, W] -> a PIL RGB image, its three planes merged by PIL itself: the
    same image as ``v2.ToPILImage`` in a tenth of its time (which interleaves the channels with a strided
    copy first)."""

    def __call__(self, image: torch.Tensor) -> Image.Image:
        planes = image.as_subclass(torch.Tensor).contiguous().numpy()
        size = (planes.shape[2], planes.shape[1])
        return Image.merge("RGB", [Image.frombuffer("L", size, plane, "raw", "L", 0, 1) for plane in planes])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NormalizedTensor:
    """timm's ``MaybeToTensor`` and ``Normalize(mean, std)`` in one pass over the pixels: a PIL RGB image
    -> float32 [3, H, W], ``(x / 255 - mean) / std`` to within float32 rounding (1e-6) of the two steps,
    in a third of their time (they convert, divide, clone and normalise one after another)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        # x / 255 / std - mean / std, the constants in float64 first
        mean64, std64 = (torch.tensor(v, dtype=torch.float64).view(3, 1, 1) for v in (self.mean, self.std))
        self.scale, self.shift = (1 / (255 * std64)).float(), (mean64 / std64).float()

    def __call__(self, image: Any) -> torch.Tensor:
        pixels = torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)))
        return pixels.float().mul_(self.scale).sub_(self.shift)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def posterize_any_bits(image: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize op (auto_augment.posterize) with Pillow < 13's result for 0 bits kept: every value 0.
    Pillow 13 raises ValueError for 0 bits, and DeiT's ``rand-m9-mstd0.5-inc1`` asks for them: its
    increasing-severity posterize keeps 4 - int(4 * m / 10) bits, 0 at magnitude 10, which m = 9 with
    noise of std 0.5 (clipped to 10) reaches on 2 % of the draws; a run then stops at its first such
    sample (timm's own loader too)."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return image.point(lambda _: 0)
    return ImageOps.posterize(image, bits_to_keep)


def keep_zero_bit_posterize(pipeline: Any) -> None:
    """Gives the posterize ops of the RandAugment / AutoAugment steps of a timm pipeline
    :func:`posterize_any_bits`."""
    from timm.data import auto_augment

    for step in getattr(pipeline, "transforms", []):
        for op in getattr(step, "ops", []):
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = posterize_any_bits
