"""iGPT: Generative Pretraining from Pixels (Chen et al. 2020)."""

from vtrain.models.igpt.checkpoint import convert_hf_imagegpt, load_igpt_checkpoint
from vtrain.models.igpt.model import (
    PRESETS,
    ImageGPT,
    KVCache,
    gelu2,
    igpt_l,
    igpt_m,
    igpt_s,
    igpt_tiny,
    igpt_xl,
)

load_pretrained = load_igpt_checkpoint

__all__ = [
    "PRESETS",
    "ImageGPT",
    "KVCache",
    "convert_hf_imagegpt",
    "gelu2",
    "igpt_l",
    "igpt_m",
    "igpt_s",
    "igpt_tiny",
    "igpt_xl",
    "load_igpt_checkpoint",
    "load_pretrained",
]
