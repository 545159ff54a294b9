"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al. 2021)."""

from vtrain.models.mae.checkpoint import convert_transformers_mae, load_mae_checkpoint
from vtrain.models.mae.model import (
    PRESETS,
    MaskedAutoencoder,
    mae_tiny,
    mae_vit_b16,
    mae_vit_h14,
    mae_vit_l16,
)

load_pretrained = load_mae_checkpoint

__all__ = [
    "PRESETS",
    "MaskedAutoencoder",
    "convert_transformers_mae",
    "load_mae_checkpoint",
    "load_pretrained",
    "mae_tiny",
    "mae_vit_b16",
    "mae_vit_h14",
    "mae_vit_l16",
]
