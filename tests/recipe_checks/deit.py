"""Recipe checks of the DeiT cards (vit_s16_imagenet, deit_s16_distilled_imagenet): the model, its
initialisation, the training and evaluation transforms, repeated augmentation, the weight-decay exemptions,
Mixup / CutMix, the LR rule, and the distilled model, its teacher and its loss, each against DeiT's own code
(facebookresearch/deit at 7e160fe, built on timm 0.3.2)."""

from __future__ import annotations

import copy
import math

import timm
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from timm.data import create_transform
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms import v2

from tests.recipe_checks import assert_same_training_transform, photos, recipe_check
from vtrain.data.sampler import RepeatedAugmentationSampler
from vtrain.models.deit import DistilledVisionTransformer
from vtrain.models.vit import VisionTransformer
from vtrain.scaling import apply_batch_plan
from vtrain.tasks.classification import build_mixup
from vtrain.tasks.common import weight_decay_groups
from vtrain.tasks.distillation import Distillation

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_TRAIN_IMAGES = 1_281_167


def _model(cfg: DictConfig) -> VisionTransformer:
    torch.manual_seed(0)
    return instantiate(cfg.model)


@recipe_check("deit_model")
def deit_model(cfg: DictConfig) -> None:
    """DeiT-S (Table 1; deit models.py deit_small_patch16_224): D 384, 6 heads, 12 layers, patch 16,
    qkv bias, LayerNorm eps 1e-6, linear class head on the class token, 22M parameters, stochastic depth
    rising linearly to 0.1 at the last block."""
    model = _model(cfg)
    assert isinstance(model, VisionTransformer)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (384, 12, 6)
    assert model.patch_embed.patch_size == (16, 16) and model.img_size == (224, 224)
    assert model.blocks[0].attn.qkv.bias is not None and model.norm.eps == 1e-6
    assert model.global_pool == "token" and isinstance(model.pre_logits, nn.Identity)
    params = sum(p.numel() for p in model.parameters())
    assert 22.0e6 < params < 22.1e6, params
    assert model.blocks[-1].drop_path.drop_prob == 0.1 and isinstance(model.blocks[0].drop_path, nn.Identity)


@recipe_check("deit_init")
def deit_init(cfg: DictConfig) -> None:
    """Truncated normal, std 0.02 (section 6; timm 0.3.2 vision_transformer.py:241-252): Linear weights
    (the head too), position embedding and class token; zero biases; LayerNorm 1 / 0."""
    model = _model(cfg)
    for name, param in model.named_parameters():
        if name.startswith("patch_embed."):
            continue  # PyTorch's Conv2d default, which timm 0.3.2 leaves alone
        if name.endswith("bias"):
            assert torch.count_nonzero(param) == 0, name
        elif "norm" in name:
            assert torch.all(param == 1), name
        else:
            assert abs(param.std().item() - 0.02) < 0.004, f"{name}: std {param.std().item():.4f}"
    bound = 1 / math.sqrt(3 * 16 * 16)  # Conv2d's default: uniform in +-1 / sqrt(fan_in)
    assert all(p.abs().max() <= bound for p in model.patch_embed.proj.parameters())


@recipe_check("deit_train_transform")
def deit_train_transform(cfg: DictConfig) -> None:
    """The training transform is timm's create_transform as deit datasets.py:82-91 calls it with main.py's
    defaults (random-resized crop 224 bicubic, flip, rand-m9-mstd0.5-inc1, erasing 0.25 pixel x 1): the
    same image with the same seeds gives the same tensor."""
    data = instantiate(cfg.data)
    deit = create_transform(
        input_size=224,
        is_training=True,
        color_jitter=0.4,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    )
    assert_same_training_transform(data.train_transform, deit)


@recipe_check("deit_eval_transform")
def deit_eval_transform(cfg: DictConfig) -> None:
    """Evaluation as deit datasets.py:99-108: resize the short side to int(224 / 0.875) = 256 (bicubic),
    center crop 224, ImageNet mean / std."""
    data = instantiate(cfg.data)
    deit = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )
    for image in photos(2):
        torch.testing.assert_close(data.eval_transform(image), deit(image))


class _ImageNetSized(Dataset):
    def __len__(self) -> int:
        return IMAGENET_TRAIN_IMAGES

    def __getitem__(self, index: int):
        raise NotImplementedError


@recipe_check("deit_repeated_aug")
def deit_repeated_aug(cfg: DictConfig) -> None:
    """The train loader repeats each image 3 times (deit samplers.py RASampler, main.py:215-218), and on
    the paper's 8 x 128 an epoch is DeiT's: 1,281,167 images rounded down to a multiple of 256, i.e.
    160,128 per rank (1251 steps of 128)."""
    data = instantiate(cfg.data, num_workers=0)
    loader = data._loader(_ImageNetSized(), data.batch_size, train=True)
    assert isinstance(loader.sampler, RepeatedAugmentationSampler) and loader.sampler.repeats == 3
    ranks = RepeatedAugmentationSampler(_ImageNetSized(), repeats=3, num_replicas=8, rank=0)
    assert len(ranks) == 160_128 and len(ranks) // data.batch_size == 1251


@recipe_check("deit_weight_decay")
def deit_weight_decay(cfg: DictConfig) -> None:
    """0.05 on weight matrices only: timm 0.3.2 optim_factory.py:25-37 exempts 1-D parameters, biases and
    the model's no_weight_decay() (pos_embed, cls_token)."""
    model = _model(cfg)
    decay, no_decay = weight_decay_groups(model, cfg.task.weight_decay)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    exempt = {
        name
        for name, p in model.named_parameters()
        if p.ndim == 1 or name.endswith(".bias") or name in {"pos_embed", "cls_token"}
    }
    names = {id(p): name for name, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == exempt


@recipe_check("deit_mixup")
def deit_mixup(cfg: DictConfig) -> None:
    """Mixup alpha 0.8 or CutMix alpha 1.0 on every batch, one of the two with probability 0.5 each
    (main.py:128-137: --mixup-prob 1.0, --mixup-switch-prob 0.5)."""
    mix = build_mixup(cfg.data.num_classes, **cfg.task.mixup)
    assert isinstance(mix, v2.RandomChoice) and mix.p == [0.5, 0.5]
    mixup, cutmix = mix.transforms
    assert isinstance(mixup, v2.MixUp) and isinstance(cutmix, v2.CutMix)
    assert (mixup.alpha, cutmix.alpha) == (0.8, 1.0)


@recipe_check("deit_lr_rule")
def deit_lr_rule(cfg: DictConfig) -> None:
    """lr = 5e-4 x global batch / 512 (main.py:349-351): 1e-3 on 8 x 128, 2e-3 on 16 x 128; min LR 1e-5 at
    the paper's batch (main.py:81)."""
    for devices, lr in ((8, 1e-3), (16, 2e-3)):
        scaled = copy.deepcopy(cfg)
        plan = apply_batch_plan(scaled, world_size=devices)
        assert plan.global_batch == 128 * devices
        assert math.isclose(scaled.task.optimizer.lr, lr, rel_tol=1e-9), scaled.task.optimizer.lr
        if devices == 8:
            assert math.isclose(lr * scaled.task.scheduler.min_lr_ratio, 1e-5, rel_tol=1e-9)


@recipe_check("deit_no_ema")
def deit_no_ema(cfg: DictConfig) -> None:
    """No weight averaging among the callbacks: the model DeiT evaluates and reports is the trained one
    (main.py:447 evaluates `model`, not the `model_ema` it keeps by default)."""
    targets = [str(c.get("_target_", "")) for c in cfg.callbacks.values() if c is not None]
    assert not [t for t in targets if "WeightAveraging" in t or "EMA" in t.upper()], targets


@recipe_check("deit_distilled_model")
def deit_distilled_model(cfg: DictConfig) -> None:
    """DeiT-S distilled (deit models.py:123-126, :20-59): DeiT-S plus the distillation token (position
    embedding over 2 + 196 tokens) and its head; timm's deit_small_distilled_patch16_224 count, 22,436,432
    parameters; both heads' logits in training, their mean in eval (models.py:55-59)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert isinstance(model, DistilledVisionTransformer)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (384, 12, 6)
    assert model.pos_embed.shape == (1, 2 + 196, 384) and model.num_prefix_tokens == 2
    assert sum(p.numel() for p in model.parameters()) == 22_436_432
    assert model.blocks[-1].drop_path.drop_prob == 0.1
    small = DistilledVisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, logits_dist = small.train()(x)
        torch.testing.assert_close(small.eval()(x), (logits + logits_dist) / 2)


@recipe_check("deit_teacher")
def deit_teacher(cfg: DictConfig) -> None:
    """The teacher is timm's regnety_160 as main.py:374-379 builds it (pretrained=False, 1000 classes,
    global_pool 'avg'): RegNetY-16GF, 84M parameters (section 5.2)."""
    teacher = cfg.task.distillation.teacher
    with torch.device("meta"):
        model = timm.create_model(
            teacher.arch, pretrained=False, num_classes=cfg.data.num_classes, **teacher.kwargs
        )
    params = sum(p.numel() for p in model.parameters())
    assert 83.5e6 < params < 84.5e6, params
    assert model.get_classifier().out_features == 1000


@recipe_check("deit_distillation")
def deit_distillation(cfg: DictConfig) -> None:
    """losses.py:38-69 with type 'hard', alpha 0.5: 0.5 x the base criterion on the class head + 0.5 x
    cross-entropy of the distillation head against the teacher's argmax; the teacher sees the same
    (Mixup'd) batch as the student (engine.py:37-49: one `samples` for both)."""
    distillation = Distillation.from_config(cfg.task.distillation)
    assert (distillation.type, distillation.alpha) == ("hard", 0.5)
    torch.manual_seed(0)
    base, logits_dist, teacher = torch.rand(()), torch.randn(4, 10), torch.randn(4, 10)
    expected = 0.5 * base + 0.5 * F.cross_entropy(logits_dist, teacher.argmax(dim=1))
    found = distillation.combine(base, distillation.distillation_term(logits_dist, teacher))
    torch.testing.assert_close(found, expected)
