"""ViT: An Image is Worth 16x16 Words (Dosovitskiy et al. 2020)."""

from vtrain.models.vit.checkpoint import load_vit_checkpoint
from vtrain.models.vit.distilled import PRESETS as DISTILLED_PRESETS
from vtrain.models.vit.distilled import (
    DistilledVisionTransformer,
    deit_b16_distilled,
    deit_s16_distilled,
    deit_ti16_distilled,
)
from vtrain.models.vit.model import PRESETS as VIT_PRESETS
from vtrain.models.vit.model import (
    VisionTransformer,
    vit_b16,
    vit_b32,
    vit_h14,
    vit_l16,
    vit_s16,
    vit_ti16,
)

PRESETS = {**VIT_PRESETS, **DISTILLED_PRESETS}
load_pretrained = load_vit_checkpoint

__all__ = [
    "PRESETS",
    "DistilledVisionTransformer",
    "VisionTransformer",
    "deit_b16_distilled",
    "deit_s16_distilled",
    "deit_ti16_distilled",
    "load_pretrained",
    "load_vit_checkpoint",
    "vit_b16",
    "vit_b32",
    "vit_h14",
    "vit_l16",
    "vit_s16",
    "vit_ti16",
]
