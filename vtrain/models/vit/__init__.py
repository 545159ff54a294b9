"""ViT: An Image is Worth 16x16 Words (Dosovitskiy et al. 2020)."""

from vtrain.models.vit.checkpoint import load_vit_checkpoint
from vtrain.models.vit.model import (
    PRESETS,
    VisionTransformer,
    vit_b16,
    vit_b32,
    vit_h14,
    vit_l16,
    vit_s16,
    vit_ti16,
)

load_pretrained = load_vit_checkpoint

__all__ = [
    "PRESETS",
    "VisionTransformer",
    "load_pretrained",
    "load_vit_checkpoint",
    "vit_b16",
    "vit_b32",
    "vit_h14",
    "vit_l16",
    "vit_s16",
    "vit_ti16",
]
