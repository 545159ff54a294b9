"""DETR: End-to-End Object Detection with Transformers (Carion et al. 2020)."""

# batching differently sized images with their padding mask lives with the COCO data
from vtrain.data.coco import pad_images
from vtrain.models.detr.backbone import Backbone, BackboneWithPositionEncoding
from vtrain.models.detr.checkpoint import load_detr_checkpoint
from vtrain.models.detr.criterion import SetCriterion
from vtrain.models.detr.matcher import HungarianMatcher
from vtrain.models.detr.model import (
    DETR,
    MLP,
    PRESETS,
    detr_r50,
    detr_r50_dc5,
    detr_r101,
    detr_r101_dc5,
    detr_tiny,
)
from vtrain.models.detr.panoptic_postprocess import PostProcessPanoptic
from vtrain.models.detr.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from vtrain.models.detr.postprocess import PostProcess
from vtrain.models.detr.segmentation import (
    PANOPTIC_PRESETS,
    DETRPanoptic,
    MaskHeadSmallConv,
    MHAttentionMap,
    PanopticSetCriterion,
)
from vtrain.models.detr.transformer import Transformer

load_pretrained = load_detr_checkpoint
PRESETS = {**PRESETS, **PANOPTIC_PRESETS}
# the presets require an ImageNet backbone file; a full DETR checkpoint replaces it
STARTING_WEIGHTS = ("backbone_weights",)

__all__ = [
    "DETR",
    "DETRPanoptic",
    "MHAttentionMap",
    "MLP",
    "PRESETS",
    "STARTING_WEIGHTS",
    "Backbone",
    "BackboneWithPositionEncoding",
    "HungarianMatcher",
    "MaskHeadSmallConv",
    "PanopticSetCriterion",
    "PositionEmbeddingLearned",
    "PositionEmbeddingSine",
    "PostProcess",
    "PostProcessPanoptic",
    "SetCriterion",
    "Transformer",
    "detr_r101",
    "detr_r101_dc5",
    "detr_r50",
    "detr_r50_dc5",
    "detr_tiny",
    "load_detr_checkpoint",
    "load_pretrained",
    "pad_images",
]
