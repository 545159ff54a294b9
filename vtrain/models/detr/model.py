"""DETR (Carion et al. 2020, "End-to-End Object Detection with Transformers").

A CNN backbone gives a feature map, a 1x1 convolution projects it to the transformer width, the encoder
attends over its cells, and the decoder turns N learned object queries into N predictions of a class (or
"no object") and a box, in parallel. Training matches predictions to ground truth one-to-one
(:mod:`~vtrain.models.detr.matcher`, :mod:`~vtrain.models.detr.criterion`).

Module names are the official ones (facebookresearch/detr), so its checkpoints load without renaming.
"""

import itertools
import os

import torch
import torch.nn.functional as F
from torch import nn

from vtrain.models.detr.backbone import Backbone, BackboneWithPositionEncoding
from vtrain.models.detr.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from vtrain.models.detr.transformer import Transformer
from vtrain.models.pretrained import require_weights, torchvision_imagenet


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's box head, "FFN" in the paper)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in itertools.pairwise(widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., input_dim] -> [..., output_dim]"""
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class DETR(nn.Module):
    """DETR object detector.

    Arguments are named as the official ``main.py`` options.

    Args:
        num_classes: largest class id + 1 (91 for COCO, whose ids run to 90); the class head has one more
            output, the last, for "no object".
        num_queries: N, object queries = most objects detected per image (100 for COCO).
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        dilation: DC5 backbone (last stage dilated, features at stride 16).
        backbone_weights: torchvision-format ImageNet weights file for the backbone; None keeps it random
            (the presets require it: see ``_detr``).
        train_backbone: False freezes the whole backbone (with frozen_bn the stem and ``layer1`` always are).
        frozen_bn: the paper's FrozenBatchNorm2d backbone; False trains BatchNorm2d and every stage (for
            training without ImageNet weights; see :class:`Backbone`).
        position_embedding: ``sine`` (DETR) or ``learned``.
        hidden_dim: transformer width D.
        nheads: attention heads.
        enc_layers: encoder layers.
        dec_layers: decoder layers.
        dim_feedforward: FFN hidden width in the transformer.
        dropout: transformer dropout.
        pre_norm: pre-norm transformer layers instead of post-norm.
        aux_loss: also return the predictions of every decoder layer but the last, for the auxiliary losses.
        grad_checkpointing: recompute the transformer's encoder and decoder layers in the backward pass
            (less memory, the same gradients); the backbone is not checkpointed.
    """

    def __init__(
        self,
        num_classes: int = 91,
        num_queries: int = 100,
        backbone: str = "resnet50",
        dilation: bool = False,
        backbone_weights: str | os.PathLike | None = None,
        train_backbone: bool = True,
        frozen_bn: bool = True,
        position_embedding: str = "sine",
        hidden_dim: int = 256,
        nheads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        pre_norm: bool = False,
        aux_loss: bool = True,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if hidden_dim % 2:
            raise ValueError(f"DETR: hidden_dim must be even (half for y, half for x), got {hidden_dim}")
        # built in the official order, so one seed gives the official initialisation
        if position_embedding == "sine":
            position_encoding = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        elif position_embedding == "learned":
            position_encoding = PositionEmbeddingLearned(hidden_dim // 2)
        else:
            raise ValueError(
                f"DETR: position_embedding must be 'sine' or 'learned', got {position_embedding!r}"
            )
        backbone_module = BackboneWithPositionEncoding(
            Backbone(backbone, dilation, train_backbone, backbone_weights, frozen_bn), position_encoding
        )
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss
        self.transformer = Transformer(
            d_model=hidden_dim,
            nhead=nheads,
            num_encoder_layers=enc_layers,
            num_decoder_layers=dec_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            normalize_before=pre_norm,
            grad_checkpointing=grad_checkpointing,
        )
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(backbone_module.num_channels, hidden_dim, kernel_size=1)
        self.backbone = backbone_module

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        """Detect objects.

        Args:
            images: [B, 3, H, W], ImageNet-normalized, padded at the bottom and right
                (`vtrain.data.coco.pad_images`).
            mask: [B, H, W] bool, True on padding; None means no padding.

        Returns:
            ``pred_logits`` [B, Q, num_classes + 1] (last = no object), ``pred_boxes`` [B, Q, 4] normalized
            cx, cy, w, h in [0, 1] relative to each image's unpadded size, and with ``aux_loss``
            ``aux_outputs``: a list of ``{"pred_logits", "pred_boxes"}`` from decoder layers 1 .. L - 1.
        """
        if mask is None:
            mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        features, mask, pos = self.backbone(images, mask)
        hs, _ = self.transformer(self.input_proj(features), mask, self.query_embed.weight, pos)
        logits = self.class_embed(hs)  # [L, B, Q, K + 1]
        boxes = self.bbox_embed(hs).sigmoid()  # [L, B, Q, 4]
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        return out


def _detr(overrides: dict, **preset) -> DETR:
    """Build a preset; ``overrides`` may replace any constructor argument, the preset's included.

    ``backbone_weights`` is required (the paper's backbone starts from ImageNet): a torchvision ImageNet
    ResNet file, or ``"scratch"`` for a random one.
    """
    args = {**preset, **overrides}
    args["backbone_weights"] = require_weights(
        args.get("backbone_weights"),
        "model.backbone_weights",
        torchvision_imagenet(args["backbone"]),
        # a random stem and layer1 under frozen BatchNorm would never train
        scratch_note=(
            " (with model.frozen_bn=false, so that BatchNorm, the stem and layer1 train)"
            if args.get("frozen_bn", True)
            else ""
        ),
    )
    return DETR(**args)


def detr_r50(**overrides) -> DETR:
    """DETR R50; 41.5 M parameters (41.3 M trained). COCO val AP 42.0 after the paper's 500-epoch schedule
    (Table 1; the official detr-r50 checkpoint), 40.6 after the 300-epoch ablation schedule (Table 2,
    section 4.2)."""
    return _detr(overrides, backbone="resnet50")


def detr_r50_dc5(**overrides) -> DETR:
    """DETR-DC5 R50: last ResNet stage dilated; 43.3 COCO AP (Table 1, 500 epochs); 41.5 M parameters."""
    return _detr(overrides, backbone="resnet50", dilation=True)


def detr_r101(**overrides) -> DETR:
    """DETR R101: 43.5 COCO AP (Table 1, 500 epochs); 60.5 M parameters (60.2 M trained)."""
    return _detr(overrides, backbone="resnet101")


def detr_r101_dc5(**overrides) -> DETR:
    """DETR-DC5 R101: 44.9 COCO AP (Table 1, 500 epochs); 60.5 M parameters."""
    return _detr(overrides, backbone="resnet101", dilation=True)


def detr_tiny(**overrides) -> DETR:
    """A CPU-sized DETR for tests and smoke runs, not from the paper: ResNet-18, D=64, 4 heads, 2 + 2 layers,
    FFN 256, 20 queries; 11.4 M parameters (11.2 M of them the ResNet-18)."""
    return _detr(
        overrides,
        backbone="resnet18",
        hidden_dim=64,
        nheads=4,
        enc_layers=2,
        dec_layers=2,
        dim_feedforward=256,
        num_queries=20,
    )


PRESETS = {
    "detr_r50": detr_r50,
    "detr_r50_dc5": detr_r50_dc5,
    "detr_r101": detr_r101,
    "detr_r101_dc5": detr_r101_dc5,
    "detr_tiny": detr_tiny,
}
