"""DeiT's distilled ViT: Training data-efficient image transformers & distillation through attention
(Touvron et al. 2020). Its weights load through the ViT loader (official .pth, timm state dicts, vtrain
checkpoints); the distillation itself is `task.distillation` (vtrain.tasks.distillation)."""

from vtrain.models.deit.model import (
    PRESETS,
    DistilledVisionTransformer,
    deit_b16_distilled,
    deit_s16_distilled,
    deit_ti16_distilled,
)
from vtrain.models.vit.checkpoint import load_vit_checkpoint

load_pretrained = load_vit_checkpoint

__all__ = [
    "PRESETS",
    "DistilledVisionTransformer",
    "deit_b16_distilled",
    "deit_s16_distilled",
    "deit_ti16_distilled",
    "load_pretrained",
]
