"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al. 2021)."""

from __future__ import annotations

import os

from torch import nn

from vtrain.models.mae.checkpoint import convert_transformers_mae, load_mae_checkpoint
from vtrain.models.mae.classifier import (
    load_mae_encoder,
    mae_classifier,
    mae_tiny_classifier,
    mae_vit_b16_classifier,
    mae_vit_h14_classifier,
    mae_vit_l16_classifier,
)
from vtrain.models.mae.model import PRESETS as AUTOENCODERS
from vtrain.models.mae.model import MaskedAutoencoder, mae_tiny, mae_vit_b16, mae_vit_h14, mae_vit_l16

PRESETS = {
    **AUTOENCODERS,
    "mae_vit_b16_classifier": mae_vit_b16_classifier,
    "mae_vit_l16_classifier": mae_vit_l16_classifier,
    "mae_vit_h14_classifier": mae_vit_h14_classifier,
    "mae_tiny_classifier": mae_tiny_classifier,
}


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """``model.pretrained`` of the MAE presets: an autoencoder loads the whole file
    (:func:`load_mae_checkpoint`), a classifier its encoder (:func:`load_mae_encoder`)."""
    if isinstance(model, MaskedAutoencoder):
        return load_mae_checkpoint(model, path)
    return load_mae_encoder(model, path)


__all__ = [
    "PRESETS",
    "MaskedAutoencoder",
    "convert_transformers_mae",
    "load_mae_checkpoint",
    "load_mae_encoder",
    "load_pretrained",
    "mae_classifier",
    "mae_tiny",
    "mae_tiny_classifier",
    "mae_vit_b16",
    "mae_vit_b16_classifier",
    "mae_vit_h14",
    "mae_vit_h14_classifier",
    "mae_vit_l16",
    "mae_vit_l16_classifier",
]
