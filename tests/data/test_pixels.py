"""iGPT's pixel pipelines (vtrain.data.pixels): the paper's ImageNet and CIFAR fine-tuning augmentations,
and the linear probe's class-stratified training sample."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from vtrain.data.pixels import PixelDataModule, build_pixel_transform


def _image(height: int, width: int) -> torch.Tensor:
    return torch.randint(
        0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def test_imagenet_crops_a_random_224_square_of_a_random_short_side_then_downsamples():
    train = build_pixel_transform(32, "imagenet", True, short_side_range=(256, 384), crop_size=224)
    evaluation = build_pixel_transform(32, "imagenet", False, short_side_range=(256, 384), crop_size=224)
    image = _image(300, 450)
    assert train(image).shape == (3, 32, 32) and evaluation(image).shape == (3, 32, 32)
    torch.manual_seed(0)
    assert len({train(image).numpy().tobytes() for _ in range(6)}) > 1
    assert torch.equal(evaluation(image), evaluation(image))
    # evaluation: short side 224, the central 224 square, then 32 x 32: a square image is just downsampled
    square = _image(224, 224)
    direct = build_pixel_transform(32, "cifar10", False)
    assert torch.equal(evaluation(square), direct(square))


def test_cifar_fine_tuning_pads_by_reflection_and_crops():
    train = build_pixel_transform(32, "cifar10", True, pad=4)
    image = _image(32, 32)
    torch.manual_seed(0)
    outputs = [train(image) for _ in range(20)]
    assert all(out.shape == (3, 32, 32) for out in outputs)
    # each output is a 32 x 32 window of the reflection-padded image
    padded = torch.nn.functional.pad(image[None].float(), (4, 4, 4, 4), mode="reflect")[0].to(torch.uint8)
    windows = {padded[:, y : y + 32, x : x + 32].numpy().tobytes() for y in range(9) for x in range(9)}
    assert all(out.numpy().tobytes() in windows for out in outputs)
    assert len({out.numpy().tobytes() for out in outputs}) > 1
    assert torch.equal(build_pixel_transform(32, "cifar10", False, pad=4)(image), image)


def test_the_probe_samples_every_class_of_a_class_sorted_training_list(data_dir):
    kwargs = dict(image_size=8, palette_size=4, palette_images=30, palette_steps=5, tiny="imagenet_tiny",
                  num_workers=0, probe_train_size=50)  # fmt: skip
    dm = PixelDataModule("imagenet", str(data_dir / "imagenet_tiny"), 1000, **kwargs)
    dm.prepare_data()
    dm.setup("test")
    images = dm.probe_train_set.dataset.images
    labels = np.asarray(images.targets)
    assert (np.diff(labels) >= 0).all(), "the tiny ImageNet training list is expected class-sorted"
    picked = labels[dm.probe_train_set.indices]
    # the first 50 would be 2 of the 10 classes; the sample takes 5 of each
    assert Counter(picked.tolist()) == dict.fromkeys(set(labels.tolist()), 5)
    again = PixelDataModule("imagenet", str(data_dir / "imagenet_tiny"), 1000, **kwargs)
    again.setup("test")
    assert again.probe_train_set.indices == dm.probe_train_set.indices
    other = PixelDataModule("imagenet", str(data_dir / "imagenet_tiny"), 1000, probe_seed=1, **kwargs)
    other.setup("test")
    assert other.probe_train_set.indices != dm.probe_train_set.indices
