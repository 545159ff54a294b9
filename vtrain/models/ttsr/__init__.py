"""TTSR: Learning Texture Transformer Network for Image Super-Resolution (Yang et al. 2020)."""

from vtrain.models.ttsr.discriminator import Discriminator
from vtrain.models.ttsr.lte import LTE, MeanShift, VGG19Relu51
from vtrain.models.ttsr.main_net import CSFI2, CSFI3, SFE, MainNet, MergeTail, ResBlock
from vtrain.models.ttsr.model import (
    PRESETS,
    STARTING_WEIGHTS,
    TTSR,
    TTSROutput,
    load_ttsr_checkpoint,
    ttsr,
    ttsr_tiny,
)
from vtrain.models.ttsr.search_transfer import SearchTransfer

load_pretrained = load_ttsr_checkpoint

__all__ = [
    "CSFI2",
    "CSFI3",
    "LTE",
    "PRESETS",
    "SFE",
    "STARTING_WEIGHTS",
    "TTSR",
    "Discriminator",
    "MainNet",
    "MeanShift",
    "MergeTail",
    "ResBlock",
    "SearchTransfer",
    "TTSROutput",
    "VGG19Relu51",
    "load_pretrained",
    "load_ttsr_checkpoint",
    "ttsr",
    "ttsr_tiny",
]
