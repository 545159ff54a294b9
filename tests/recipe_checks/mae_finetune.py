"""Recipe checks of the MAE fine-tuning and linear-probe cards (mae_vit_b16_finetune, mae_vit_b16_linprobe):
the classifier and its head, the layer-wise LR decay groups, LARS, the LR rules, the schedules and the
transforms, each against the official code (facebookresearch/mae at efb2a80: models_vit.py, main_finetune.py,
main_linprobe.py, util/lr_decay.py, util/lars.py, util/lr_sched.py, util/datasets.py)."""

from __future__ import annotations

import copy
import math

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from timm.data import create_transform
from torch import nn
from torchvision import transforms

from tests.recipe_checks import assert_same_training_transform, photos, recipe_check
from vtrain.models.vit import VisionTransformer
from vtrain.optim import LARS
from vtrain.scaling import apply_batch_plan
from vtrain.tasks.common import layer_decay_groups

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
BICUBIC = transforms.InterpolationMode.BICUBIC


def _classifier(cfg: DictConfig, **overrides) -> VisionTransformer:
    """The experiment's model as it starts before the pretrained file is loaded (``scratch``)."""
    torch.manual_seed(0)
    return instantiate(cfg.model, pretrained="scratch", **overrides)


def _lr_at(cfg: DictConfig, devices: int) -> tuple[int, float]:
    scaled = copy.deepcopy(cfg)
    plan = apply_batch_plan(scaled, world_size=devices)
    return plan.global_batch, scaled.task.optimizer.lr


def _check_schedule(cfg: DictConfig, epochs: int, warmup: int, min_lr_ratio: float) -> None:
    """util/lr_sched.py:9-15 at the fractional epoch (engine_finetune.py:44-45): linear warm-up, then a
    half-cycle cosine from the peak to min_lr; vtrain's per-step warm-up is one step ahead."""
    steps_per_epoch = 10
    assert cfg.trainer.max_epochs == epochs
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = instantiate(cfg.task.scheduler)(
        optimizer, total_steps=steps_per_epoch * epochs, steps_per_epoch=steps_per_epoch
    )
    for step in range(0, steps_per_epoch * epochs, 3):
        epoch = step / steps_per_epoch
        if epoch < warmup:
            official = epoch / warmup
        else:
            cosine = 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))
            official = min_lr_ratio + (1.0 - min_lr_ratio) * cosine
        found = scheduler.lr_lambdas[0](step)
        assert abs(found - official) <= 1.0 / (warmup * steps_per_epoch) + 1e-9, (step, found, official)


def _eval_transform(cfg: DictConfig) -> None:
    """Resize the short side to 256 (bicubic), center crop 224, ImageNet mean / std (util/datasets.py:52-64,
    main_linprobe.py:137-141)."""
    data = instantiate(cfg.data)
    official = transforms.Compose(
        [
            transforms.Resize(256, interpolation=BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )
    for image in photos(2):
        torch.testing.assert_close(data.eval_transform(image), official(image))


# ------------------------------------------------------------------------------------------- fine-tuning


@recipe_check("mae_ft_model")
def mae_ft_model(cfg: DictConfig) -> None:
    """models_vit.py vit_base_patch16 with global_pool (main_finetune.py:114-115, :227-231): ViT-B/16, mean
    of the patch tokens then fc_norm (LayerNorm eps 1e-6, no final norm), drop path rising linearly to 0.1,
    the head drawn with std 2e-5 and a zero bias (main_finetune.py:257); 86,567,656 parameters."""
    with torch.device("meta"):
        meta = instantiate(cfg.model, pretrained="scratch")
    assert sum(p.numel() for p in meta.parameters()) == 86_567_656
    model = _classifier(cfg, depth=2)
    assert (
        isinstance(model, VisionTransformer)
        and model.embed_dim == 768
        and model.blocks[0].attn.num_heads == 12
    )
    assert model.patch_embed.patch_size == (16, 16) and model.global_pool == "avg"
    assert isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.LayerNorm)
    assert model.fc_norm.eps == 1e-6 and model.blocks[0].attn.qkv.bias is not None
    assert model.blocks[-1].drop_path.drop_prob == 0.1 and isinstance(model.blocks[0].drop_path, nn.Identity)
    assert abs(model.head.weight.std().item() - 2e-5) < 2e-6 and not model.head.bias.any()
    assert all(p.requires_grad for p in model.parameters())


@recipe_check("mae_ft_layer_decay")
def mae_ft_layer_decay(cfg: DictConfig) -> None:
    """util/lr_decay.py:15-76 (param_groups_lrd with get_layer_id_for_vit) written out: of 12 blocks,
    cls_token / pos_embed / patch_embed at 0.65^13, block i at 0.65^(12 - i), fc_norm and head at 1; weight
    decay 0.05 except on 1-D parameters, pos_embed and cls_token (timm's no_weight_decay)."""
    with torch.device("meta"):  # names and shapes only
        model = instantiate(cfg.model, pretrained="scratch")
    groups = layer_decay_groups(model, cfg.task.weight_decay, cfg.task.layer_decay)
    found = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    num_layers = 12 + 1
    for name, param in model.named_parameters():
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = num_layers
        decay = 0.0 if param.ndim == 1 or name in ("pos_embed", "cls_token") else 0.05
        scale, weight_decay = found[id(param)]
        assert math.isclose(scale, 0.65 ** (num_layers - layer), rel_tol=1e-12), name
        assert weight_decay == decay, name


@recipe_check("mae_ft_lr_rule")
def mae_ft_lr_rule(cfg: DictConfig) -> None:
    """lr = blr x effective batch / 256 (main_finetune.py:267-270): 2e-3 at 8 x 128 = 1024; min_lr 1e-6
    absolute there (main_finetune.py:73), i.e. min_lr_ratio x the scaled LR."""
    batch, lr = _lr_at(cfg, devices=8)
    assert batch == 1024 and math.isclose(lr, 2e-3, rel_tol=1e-9), (batch, lr)
    assert math.isclose(lr * cfg.task.scheduler.min_lr_ratio, 1e-6, rel_tol=1e-9)


@recipe_check("mae_ft_schedule")
def mae_ft_schedule(cfg: DictConfig) -> None:
    """5 warm-up epochs, then a half-cycle cosine to min_lr 1e-6 (of 2e-3) at epoch 100."""
    _check_schedule(cfg, epochs=100, warmup=5, min_lr_ratio=1e-6 / 2e-3)


@recipe_check("mae_ft_train_transform")
def mae_ft_train_transform(cfg: DictConfig) -> None:
    """timm's create_transform as util/datasets.py:37-48 calls it with main_finetune.py's defaults and
    FINETUNE.md's --reprob 0.25: the same image with the same seeds gives the same tensor."""
    data = instantiate(cfg.data)
    official = create_transform(
        input_size=224,
        is_training=True,
        color_jitter=None,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    )
    assert_same_training_transform(data.train_transform, official)


@recipe_check("mae_ft_eval_transform")
def mae_ft_eval_transform(cfg: DictConfig) -> None:
    """util/datasets.py:52-64: crop_pct 224 / 256 at input size 224."""
    _eval_transform(cfg)


# ------------------------------------------------------------------------------------------ linear probe


@recipe_check("mae_probe_model")
def mae_probe_model(cfg: DictConfig) -> None:
    """main_linprobe.py:189-227 with --cls_token: ViT-B/16, the class token after the final norm,
    BatchNorm1d(768, affine=False, eps=1e-6) then the linear head (weight std 0.01, bias 0), every other
    parameter frozen, no drop path."""
    model = _classifier(cfg, depth=2)
    assert model.global_pool == "token" and isinstance(model.norm, nn.LayerNorm)
    assert isinstance(model.fc_norm, nn.Identity)
    assert isinstance(model.head, nn.Sequential) and len(model.head) == 2, model.head
    bn, linear = model.head
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6 and bn.num_features == 768
    assert isinstance(linear, nn.Linear) and linear.out_features == 1000
    assert abs(linear.weight.std().item() - 0.01) < 5e-4 and not linear.bias.any()
    trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trained == ["head.1.bias", "head.1.weight"], trained
    assert all(isinstance(b.drop_path, nn.Identity) for b in model.blocks)


@recipe_check("mae_probe_lars")
def mae_probe_lars(cfg: DictConfig) -> None:
    """main_linprobe.py:252 LARS(head parameters, lr, weight_decay=0) of util/lars.py (momentum 0.9, trust
    coefficient 0.001): two steps of the configured optimizer against the official update written out."""
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(6, 4))
    bias = nn.Parameter(torch.randn(6))
    optimizer = instantiate(cfg.task.optimizer)([{"params": [weight, bias], "weight_decay": 0.0}])
    assert isinstance(optimizer, LARS)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["trust_coefficient"], group["weight_decay"]) == (0.9, 0.001, 0.0)
    lr = group["lr"]
    w, b, mu_w, mu_b = weight.detach().clone(), bias.detach().clone(), 0.0, 0.0
    for _ in range(2):
        grad_w, grad_b = torch.randn(6, 4), torch.randn(6)
        weight.grad, bias.grad = grad_w.clone(), grad_b.clone()
        optimizer.step()
        mu_w = 0.9 * mu_w + grad_w * (0.001 * w.norm() / grad_w.norm())
        mu_b = 0.9 * mu_b + grad_b  # 1-D: neither decayed nor scaled
        w, b = w - lr * mu_w, b - lr * mu_b
    torch.testing.assert_close(weight.detach(), w, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bias.detach(), b, rtol=1e-6, atol=1e-7)


@recipe_check("mae_probe_lr_rule")
def mae_probe_lr_rule(cfg: DictConfig) -> None:
    """lr = blr x effective batch / 256 (main_linprobe.py:237-240): 6.4 at the paper's 16384, derived as
    2048 per device on 8 devices or 512 on 32 (FINETUNE.md:142-150)."""
    for devices, per_device in ((8, 2048), (32, 512)):
        scaled = copy.deepcopy(cfg)
        plan = apply_batch_plan(scaled, world_size=devices)
        assert plan.global_batch == 16384 and scaled.data.batch_size == per_device
        assert math.isclose(scaled.task.optimizer.lr, 6.4, rel_tol=1e-9), scaled.task.optimizer.lr


@recipe_check("mae_probe_schedule")
def mae_probe_schedule(cfg: DictConfig) -> None:
    """10 warm-up epochs, then a half-cycle cosine to min_lr 0 at epoch 90 (main_linprobe.py:46, :63-67)."""
    _check_schedule(cfg, epochs=90, warmup=10, min_lr_ratio=0.0)


@recipe_check("mae_probe_train_transform")
def mae_probe_train_transform(cfg: DictConfig) -> None:
    """main_linprobe.py:132-136: RandomResizedCrop(224, bicubic) with torchvision's default area 0.08-1,
    flip, ImageNet mean / std; the same seed gives the same tensor (up to float rounding)."""
    data = instantiate(cfg.data)
    official = transforms.Compose(
        [
            transforms.RandomResizedCrop(224, interpolation=BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )
    assert_same_training_transform(data.train_transform, official, atol=1e-5)


@recipe_check("mae_probe_eval_transform")
def mae_probe_eval_transform(cfg: DictConfig) -> None:
    """main_linprobe.py:137-141: Resize(256, bicubic), CenterCrop(224)."""
    _eval_transform(cfg)
