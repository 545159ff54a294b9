"""FPT: Feature Pyramid Transformer (Zhang et al., ECCV 2020) with the detectors and the semantic
segmentation model it is evaluated in; see ``vtrain/models/fpt/fpt.py`` and docs/fpt.md."""

from vtrain.models.fpt.backbone import BackboneWithFPT
from vtrain.models.fpt.checkpoint import load_fpt_checkpoint
from vtrain.models.fpt.fpt import (
    FeaturePyramidTransformer,
    GroundingTransformer,
    MixtureOfSoftmaxes,
    RenderingTransformer,
    SelfTransformer,
)
from vtrain.models.fpt.maskrcnn import RCNN_PRESETS, build_rcnn
from vtrain.models.fpt.segmentation import SEGMENTATION_PRESETS, FPTSegmentation, SemanticFPNHead

PRESETS = {**RCNN_PRESETS, **SEGMENTATION_PRESETS}
load_pretrained = load_fpt_checkpoint
# the presets require an ImageNet backbone file; a full checkpoint replaces it
STARTING_WEIGHTS = ("backbone_weights",)

__all__ = [
    "PRESETS",
    "STARTING_WEIGHTS",
    "BackboneWithFPT",
    "FPTSegmentation",
    "FeaturePyramidTransformer",
    "GroundingTransformer",
    "MixtureOfSoftmaxes",
    "RenderingTransformer",
    "SelfTransformer",
    "SemanticFPNHead",
    "build_rcnn",
    "load_fpt_checkpoint",
    "load_pretrained",
]
