"""Recipe checks of the iGPT cards (docs/recipes.md): the pixel pipelines the data module builds, where the
palette comes from, the batch a multi-device run gets, and what the model leaves out (dropout, EMA)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.transforms import v2

from tests.recipe_checks import recipe_check
from vtrain.data.pixels import PixelDataModule, build_pixel_transform
from vtrain.models.igpt import ImageGPT
from vtrain.scaling import plan_batch


def _transforms(cfg: DictConfig, train: bool) -> list[v2.Transform]:
    data = cfg.data
    pipeline = build_pixel_transform(
        data.image_size,
        data.dataset,
        train,
        data.hflip,
        data.get("pad", 0),
        data.get("short_side_range"),
        data.get("crop_size"),
    )
    return list(pipeline.transforms)


def _random_steps(steps: list[v2.Transform]) -> list[str]:
    random = (v2.RandomCrop, v2.RandomHorizontalFlip, v2.RandomShortestSize, v2.RandomResizedCrop)
    return [type(step).__name__ for step in steps if isinstance(step, random)]


def _output_shape(cfg: DictConfig, train: bool, height: int, width: int) -> tuple[int, ...]:
    pipeline = v2.Compose(_transforms(cfg, train))
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    return tuple(pipeline(image).shape)


@recipe_check("igpt_imagenet_augmentation")
def imagenet_augmentation(cfg: DictConfig) -> None:
    """iGPT section 3.1: a random short side in [256, 384], a random 224 crop, no flip, then 32 x 32;
    evaluation: short side 224, the central 224 crop, then 32 x 32."""
    train = _transforms(cfg, train=True)
    short = [step for step in train if isinstance(step, v2.RandomShortestSize)]
    assert short and list(short[0].min_size) == list(range(256, 385)), f"short side: {short}"
    crops = [step for step in train if isinstance(step, v2.RandomCrop)]
    assert crops and tuple(crops[0].size) == (224, 224), f"crop: {crops}"
    assert _random_steps(train) == ["RandomShortestSize", "RandomCrop"], _random_steps(train)
    evaluation = _transforms(cfg, train=False)
    assert not _random_steps(evaluation)
    assert [type(step).__name__ for step in evaluation] == ["ToImage", "Resize", "CenterCrop", "Resize"]
    assert evaluation[2].size == [224, 224] or tuple(evaluation[2].size) == (224, 224)
    size = cfg.data.image_size
    assert _output_shape(cfg, True, 300, 500) == (3, size, size)
    assert _output_shape(cfg, False, 300, 500) == (3, size, size)


@recipe_check("igpt_cifar_no_augmentation")
def cifar_no_augmentation(cfg: DictConfig) -> None:
    """Pretraining and probes read CIFAR images as they are: no crop, no flip."""
    assert not _random_steps(_transforms(cfg, train=True)), _random_steps(_transforms(cfg, train=True))
    assert _output_shape(cfg, True, 32, 32) == (3, cfg.data.image_size, cfg.data.image_size)


@recipe_check("igpt_cifar_finetune_augmentation")
def cifar_finetune_augmentation(cfg: DictConfig) -> None:
    """iGPT section 3.1 (after Wide ResNets): 4 pixels reflection-padded on each side, a random 32 x 32 crop,
    random horizontal flips; evaluation unaugmented."""
    train = _transforms(cfg, train=True)
    crops = [step for step in train if isinstance(step, v2.RandomCrop)]
    assert crops, f"no random crop in {train}"
    crop = crops[0]
    assert tuple(crop.size) == (32, 32) and crop.padding_mode == "reflect", crop
    assert list(crop.padding) in ([4], [4, 4, 4, 4]), crop.padding
    assert _random_steps(train) == ["RandomCrop", "RandomHorizontalFlip"], _random_steps(train)
    assert not _random_steps(_transforms(cfg, train=False))
    # a padded crop moves the image: two draws differ, and the output keeps the size
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    pipeline = v2.Compose(train)
    torch.manual_seed(0)
    draws = {pipeline(image).numpy().tobytes() for _ in range(8)}
    assert len(draws) > 1 and pipeline(image).shape == (3, 32, 32)


@recipe_check("igpt_palette_from_weights")
def palette_from_weights(cfg: DictConfig) -> None:
    """The data module reads the palette of the weights the model loads, and refuses to fit one for them."""
    node = OmegaConf.to_container(cfg.data, resolve=False)
    assert node.get("pretrained") == "${model.pretrained}", f"data.pretrained is {node.get('pretrained')!r}"
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "pytorch_model.bin"
        weights.write_bytes(b"")
        try:
            PixelDataModule(cfg.data.dataset, folder, cfg.data.num_classes, pretrained=str(weights))
        except ValueError as error:
            assert "has no palette next to it" in str(error) and "data.palette_path" in str(error), error
        else:
            raise AssertionError("weights without a palette were accepted: a palette would be fitted")


@recipe_check("igpt_fitted_palette")
def fitted_palette(cfg: DictConfig) -> None:
    """Pretraining from scratch fits its own 512-colour palette on the training pixels (section 3.2)."""
    assert cfg.data.pretrained is None and cfg.data.palette_path is None
    with tempfile.TemporaryDirectory() as folder:
        module = PixelDataModule(cfg.data.dataset, folder, cfg.data.num_classes, palette_size=512)
        assert module.may_fit_palette and module.palette_path.parent == Path(folder)


@recipe_check("igpt_sequence_1024")
def sequence_1024(cfg: DictConfig) -> None:
    """Model resolution 32^2 (section 3.2): 1024 tokens per image, every one attended (dense attention)."""
    assert cfg.model.img_size == cfg.data.image_size == 32
    assert cfg.model.img_size**2 == 1024


@recipe_check("igpt_global_batch_128")
def global_batch_128(cfg: DictConfig) -> None:
    """A run on 8 devices splits the paper's 128 (8 x 16) instead of multiplying a per-device 128."""
    assert cfg.data.batch_size is None
    for devices in (1, 8):
        plan = plan_batch(None, devices, 1, cfg.global_batch.paper, cfg.global_batch.lr_rule)
        assert plan.global_batch == 128 and plan.lr_factor == 1.0, plan


@recipe_check("igpt_no_dropout")
def no_dropout(cfg: DictConfig) -> None:
    """No dropout (sections 3.4): the model has none to switch on."""
    model = ImageGPT(vocab_size=8, img_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=2)
    assert not any(isinstance(module, nn.Dropout) for module in model.modules())


@recipe_check("igpt_no_ema")
def no_ema(cfg: DictConfig) -> None:
    """The paper keeps no moving average of the weights."""
    callbacks = cfg.get("callbacks") or {}
    targets = [str((node or {}).get("_target_", "")) for node in callbacks.values()]
    assert "ema" not in callbacks and not any("WeightAveraging" in t for t in targets), targets


@recipe_check("igpt_no_paper_number")
def no_paper_number(cfg: DictConfig) -> None:
    """The paper reports no number for this run (see the card's expected-number row)."""
    assert not cfg.get("paper"), cfg.get("paper")
