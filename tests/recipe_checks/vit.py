"""Recipe checks of the ViT cards (vit_b16_imagenet, vit_b16_imagenet_ft384, vit_b16_cifar10): the official
input pipeline the data module builds, the weights the model starts from, the optimizer's constants, the
parameters weight decay skips and the LR sweep presets. References: google-research/vision_transformer at
c6de1e5 (vit_jax/input_pipeline.py, checkpoint.py, configs/) and the ViT paper (arXiv 2010.11929)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchvision import tv_tensors
from torchvision.transforms import v2

from tests.recipe_checks import recipe_check
from vtrain.config import config_dir
from vtrain.models import create_model
from vtrain.tasks.common import weight_decay_groups

# the steps of a transform pipeline that only convert and normalise
_CONVERSIONS = (v2.ToImage, v2.ToDtype, v2.Normalize, v2.ToPureTensor)


def _steps(transform: v2.Compose) -> list[v2.Transform]:
    return [step for step in transform.transforms if not isinstance(step, _CONVERSIONS)]


def _small_model(cfg: DictConfig, **values) -> torch.nn.Module:
    """The experiment's model with one block (the checks look at the embeddings and the head) and
    ``values`` set in its config."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    return instantiate({**model, "depth": 1, **values})


@recipe_check("vit_inception_crop_train")
def inception_crop_train(cfg: DictConfig) -> None:
    """Training images: a random crop of 5-100 % of the area, aspect 3/4-4/3, resized to image_size x
    image_size, then a random flip, and nothing else (input_pipeline.py:197-211)."""
    steps = _steps(instantiate(cfg.data).train_transform)
    kinds = [type(step).__name__ for step in steps]
    assert kinds == ["RandomResizedCrop", "RandomHorizontalFlip"], f"train pipeline {kinds}"
    crop, flip = steps
    size = cfg.data.image_size
    assert tuple(crop.size) == (size, size), f"crop resized to {crop.size}, expected {size} x {size}"
    assert crop.scale == (0.05, 1.0), f"crop area {crop.scale}, expected (0.05, 1.0)"
    assert np.allclose(crop.ratio, (3 / 4, 4 / 3)), f"crop aspect ratio {crop.ratio}"
    assert flip.p == 0.5


@recipe_check("vit_whole_image_eval")
def whole_image_eval(cfg: DictConfig) -> None:
    """Evaluation: the whole image resized to image_size x image_size, no center crop, (x - 127.5) / 127.5
    (input_pipeline.py:212-214)."""
    datamodule = instantiate(cfg.data)
    steps = _steps(datamodule.eval_transform)
    size = cfg.data.image_size
    assert len(steps) == 1 and isinstance(steps[0], v2.Resize), f"eval pipeline {steps}"
    assert tuple(steps[0].size) == (size, size), f"eval resize to {steps[0].size}, expected {size} x {size}"
    image = tv_tensors.Image(torch.full((3, 40, 80), 255, dtype=torch.uint8))
    image[:, :, :40] = 0  # left half black: a center crop would lose the black-white proportion
    out = datamodule.eval_transform(image)
    assert out.shape == (3, size, size)
    assert math.isclose(float(out.mean()), 0.0, abs_tol=2e-2), "the whole image (half black) is not kept"
    assert float(out.min()) == -1.0 and float(out.max()) == 1.0, "normalisation is not (x - 127.5) / 127.5"


@recipe_check("vit_no_ema")
def no_ema(cfg: DictConfig) -> None:
    """No averaging of the weights (Table 5's caption: without Polyak averaging)."""
    averaging = [name for name, node in cfg.callbacks.items() if "Averag" in str(node.get("_target_", ""))]
    assert not averaging, f"weight averaging callbacks {averaging}"


@recipe_check("vit_from_scratch")
def from_scratch(cfg: DictConfig) -> None:
    """Trained from a random initialisation: no weights file asked for or given."""
    assert cfg.model.get("pretrained") is None, f"model.pretrained is {cfg.model.pretrained!r}"
    assert cfg.model.get("requires_pretrained") is None, "model.requires_pretrained is set"


@recipe_check("vit_adam_betas")
def adam_betas(cfg: DictConfig) -> None:
    """Adam with beta1 = 0.9, beta2 = 0.999 (section 4.1), decoupled weight decay."""
    optimizer = instantiate(cfg.task.optimizer)([torch.nn.Parameter(torch.zeros(2, 2))])
    assert isinstance(optimizer, torch.optim.AdamW), type(optimizer).__name__
    assert optimizer.defaults["betas"] == (0.9, 0.999), optimizer.defaults["betas"]


@recipe_check("vit_sgd_momentum")
def sgd_momentum(cfg: DictConfig) -> None:
    """SGD with momentum 0.9, not Nesterov, no weight decay (train.py:138-145)."""
    optimizer = instantiate(cfg.task.optimizer)([torch.nn.Parameter(torch.zeros(2, 2))])
    assert isinstance(optimizer, torch.optim.SGD), type(optimizer).__name__
    assert optimizer.defaults["momentum"] == 0.9 and not optimizer.defaults["nesterov"]
    assert cfg.task.weight_decay == 0.0 and optimizer.defaults["weight_decay"] == 0.0


@recipe_check("vit_weight_decay_exempt")
def weight_decay_exempt(cfg: DictConfig) -> None:
    """Weight decay on the weight matrices and kernels only: biases, LayerNorms, position embeddings and
    the class token are exempt."""
    model = _small_model(cfg, pretrained=None, requires_pretrained=None)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, exempt = weight_decay_groups(model, cfg.task.weight_decay)
    exempt_names = {names[id(p)] for p in exempt["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "blocks.0.attn.qkv.bias"} <= exempt_names
    assert all(p.ndim >= 2 for p in decayed["params"]) and decayed["weight_decay"] == cfg.task.weight_decay


@recipe_check("vit_finetune_start")
def finetune_start(cfg: DictConfig) -> None:
    """A 224 px checkpoint with a pre-logits layer (the ImageNet-21k files, vit_b16_imagenet's run) loads
    as the official fine-tuning does: the 14 x 14 position grid zoomed to the model's by
    scipy.ndimage.zoom(order=1) with the class token kept (checkpoint.py:192-238), the pre-logits layer
    dropped and the head zero-initialised (checkpoint.py:185-190; paper section 3.2)."""
    assert cfg.model.pretrained is None and cfg.model.requires_pretrained, "model.pretrained not required"
    assert cfg.model.representation_size is None, "fine-tuning keeps a pre-logits layer"
    source = create_model("vit_b16", depth=1, img_size=224, representation_size=768, num_classes=1000)
    with torch.no_grad():
        for i, parameter in enumerate(source.parameters()):
            parameter.normal_(0, 0.02, generator=torch.Generator().manual_seed(i))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "vit_b16_224.pth"
        torch.save(source.state_dict(), path)
        model = _small_model(cfg, pretrained=str(path))
    side = cfg.data.image_size // 16
    old = source.pos_embed.detach().numpy()
    zoom = side / 14
    grid = scipy.ndimage.zoom(old[0, 1:].reshape(14, 14, -1), (zoom, zoom, 1), order=1)
    expected = np.concatenate([old[:, :1], grid.reshape(1, side * side, -1)], axis=1)
    found = model.pos_embed.detach().numpy()
    assert found.shape == expected.shape, f"pos_embed {found.shape}, expected {expected.shape}"
    assert np.abs(found - expected).max() <= 1e-5 * np.abs(expected).max(), "pos_embed not zoomed officially"
    assert isinstance(model.pre_logits, torch.nn.Identity)
    assert torch.count_nonzero(model.head.weight) == torch.count_nonzero(model.head.bias) == 0


def _sweep(experiment: str, preset: str) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            overrides = [f"experiment={experiment}", f"hparams_search={preset}"]
            return compose(config_name="train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _check_sweep(experiment: str, preset: str, grid: list[float], holdout: float) -> None:
    sweep = _sweep(experiment, preset)
    assert sweep.hydra.mode == RunMode.MULTIRUN, sweep.hydra.mode
    lrs = [float(lr) for lr in str(sweep.hydra.sweeper.params["task.optimizer.lr"]).split(",")]
    assert lrs == grid, f"{preset}: LR grid {lrs}, expected {grid}"
    assert sweep.data.holdout == holdout, f"{preset}: data.holdout {sweep.data.holdout}, expected {holdout}"
    assert sweep.test is False, f"{preset}: the sweep's jobs test on the test split"
    assert sweep.monitor == "val/acc1", sweep.monitor


@recipe_check("vit_cifar10_lr_sweep")
def cifar10_lr_sweep(cfg: DictConfig) -> None:
    """hparams_search=vit_cifar10_lr: Table 4's grid, ranked on a 2 % dev split of the training set."""
    _check_sweep(cfg.name, "vit_cifar10_lr", [0.001, 0.003, 0.01, 0.03], 0.02)


@recipe_check("vit_imagenet_ft384_lr_sweep")
def imagenet_ft384_lr_sweep(cfg: DictConfig) -> None:
    """hparams_search=vit_imagenet_ft384_lr: Table 4's grid, ranked on a 1 % dev split."""
    _check_sweep(cfg.name, "vit_imagenet_ft384_lr", [0.003, 0.01, 0.03, 0.06], 0.01)
