"""Recipe checks of the MAE card (mae_vit_b16_imagenet): the model, its initialisation, the training
transform, the weight-decay exemptions, the LR rule and the schedule, each against the official code
(facebookresearch/mae at efb2a80: models_mae.py, main_pretrain.py, util/lr_sched.py)."""

from __future__ import annotations

import copy
import math

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torchvision import transforms

from tests.recipe_checks import assert_same_training_transform, recipe_check
from vtrain.layers import sincos_2d_pos_embed
from vtrain.models.mae import MaskedAutoencoder
from vtrain.scaling import apply_batch_plan
from vtrain.tasks.common import weight_decay_groups

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


def _model(cfg: DictConfig, **overrides) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return instantiate(cfg.model, **overrides)


@recipe_check("mae_model")
def mae_model(cfg: DictConfig) -> None:
    """mae_vit_base_patch16_dec512d8b (models_mae.py:223-228): a ViT-B/16 encoder (D 768, 12 blocks, 12
    heads, MLP 4D, qkv bias, LayerNorm eps 1e-6) on the visible 25 % of 196 patches, a decoder of 8 blocks,
    width 512, 16 heads, predicting 16 x 16 x 3 values per patch; fixed sine-cosine position tables;
    111,655,680 trainable parameters."""
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert isinstance(model, MaskedAutoencoder)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (768, 12, 12)
    assert model.patch_embed.patch_size == (16, 16) and model.num_patches == 196
    assert model.blocks[0].attn.qkv.bias is not None and model.norm.eps == 1e-6
    assert model.blocks[0].mlp.fc1.out_features == 4 * 768
    assert (len(model.decoder_blocks), model.decoder_embed.out_features) == (8, 512)
    assert model.decoder_blocks[0].attn.num_heads == 16 and model.decoder_pred.out_features == 768
    assert model.mask_ratio == 0.75 and model.norm_pix_loss
    assert int(model.num_patches * (1 - model.mask_ratio)) == 49
    assert sum(p.numel() for p in model.parameters()) == 111_655_680
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


@recipe_check("mae_init")
def mae_init(cfg: DictConfig) -> None:
    """models_mae.py:65-93: sine-cosine position tables (util/pos_embed.py) with a zero class-token row;
    Xavier-uniform for every Linear (the whole qkv matrix) and for the patch projection as a matrix; zero
    biases; class and mask tokens normal(0.02)."""
    model = _model(cfg, depth=2, decoder_depth=1)
    assert torch.equal(model.pos_embed[0], sincos_2d_pos_embed(768, 14, cls_token=True))
    assert torch.equal(model.decoder_pos_embed[0], sincos_2d_pos_embed(512, 14, cls_token=True))
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in linears:
        fan_out, fan_in = linear.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.9 * bound, name
        assert torch.count_nonzero(linear.bias) == 0, name
    proj = model.patch_embed.proj.weight
    assert proj.abs().max() <= math.sqrt(6 / (768 + 3 * 16 * 16))
    for token in (model.cls_token, model.mask_token):
        assert abs(token.std().item() - 0.02) < 0.004


@recipe_check("mae_train_transform")
def mae_train_transform(cfg: DictConfig) -> None:
    """main_pretrain.py:123-127: RandomResizedCrop(224, scale=(0.2, 1.0), bicubic), RandomHorizontalFlip,
    ToTensor, ImageNet mean / std; the same seed gives the same tensor (up to float rounding)."""
    data = instantiate(cfg.data)
    official = transforms.Compose(
        [
            transforms.RandomResizedCrop(
                224, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC
            ),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )
    assert_same_training_transform(data.train_transform, official, atol=1e-5)


@recipe_check("mae_weight_decay")
def mae_weight_decay(cfg: DictConfig) -> None:
    """0.05 on everything but 1-D parameters and biases (timm 0.3.2 add_weight_decay, main_pretrain.py:179,
    with no skip list: MaskedAutoencoderViT has no no_weight_decay()): the class and mask tokens are decayed;
    the position tables are fixed, not parameters."""
    model = _model(cfg, depth=1, decoder_depth=1)
    decay, no_decay = weight_decay_groups(model, cfg.task.weight_decay)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): name for name, p in model.named_parameters()}
    exempt = {name for name, p in model.named_parameters() if p.ndim == 1 or name.endswith(".bias")}
    assert {names[id(p)] for p in no_decay["params"]} == exempt
    assert {"cls_token", "mask_token"} <= {names[id(p)] for p in decay["params"]}


@recipe_check("mae_lr_rule")
def mae_lr_rule(cfg: DictConfig) -> None:
    """lr = blr x effective batch / 256 (main_pretrain.py:163-166): 2.4e-3 at the paper's 4096, derived as
    512 per device on 8 devices or 64 on 64 (PRETRAIN.md:9-18)."""
    for devices, per_device in ((8, 512), (64, 64)):
        scaled = copy.deepcopy(cfg)
        plan = apply_batch_plan(scaled, world_size=devices)
        assert plan.global_batch == 4096 and scaled.data.batch_size == per_device
        assert math.isclose(scaled.task.optimizer.lr, 2.4e-3, rel_tol=1e-9), scaled.task.optimizer.lr
    half = copy.deepcopy(cfg)
    half.data.batch_size = 256
    apply_batch_plan(half, world_size=8)
    assert math.isclose(half.task.optimizer.lr, 1.2e-3, rel_tol=1e-9)


@recipe_check("mae_schedule")
def mae_schedule(cfg: DictConfig) -> None:
    """util/lr_sched.py:9-15, set every iteration at the fractional epoch (engine_pretrain.py:41-43): linear
    warm-up over 40 epochs, then a half-cycle cosine to min_lr 0 at epoch 800. vtrain's per-step schedule
    (its warm-up reaches step k at (k + 1) / warm-up steps, one step ahead) stays within one warm-up step of
    it."""
    steps_per_epoch, epochs, warmup = 10, 800, 40  # PRETRAIN.md:13-14
    assert cfg.trainer.max_epochs == epochs
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = instantiate(cfg.task.scheduler)(
        optimizer, total_steps=steps_per_epoch * epochs, steps_per_epoch=steps_per_epoch
    )
    for step in range(0, steps_per_epoch * epochs, 7):
        epoch = step / steps_per_epoch
        if epoch < warmup:
            official = epoch / warmup
        else:
            official = 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))
        assert abs(scheduler.lr_lambdas[0](step) - official) <= 1.0 / (warmup * steps_per_epoch) + 1e-9, step


@recipe_check("mae_no_ema")
def mae_no_ema(cfg: DictConfig) -> None:
    """No weight averaging: main_pretrain.py trains and saves the model itself."""
    targets = [str(c.get("_target_", "")) for c in cfg.callbacks.values() if c is not None]
    assert not [t for t in targets if "WeightAveraging" in t or "EMA" in t.upper()], targets
