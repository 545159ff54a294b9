"""DETR for panoptic segmentation (section 4.4 and figure 8 of the paper).

On top of a detection DETR, a multi-head attention map between each decoder output (object embedding) and
the encoder memory gives, per query, M heat maps at stride 32; they are concatenated to the projected
backbone features and upsampled by a small FPN-style convolutional head that adds the ResNet's stride-16,
8 and 4 features, giving one mask logit map per query at stride 4. Training adds a focal and a DICE loss on
the matched masks to DETR's set criterion (the Hungarian matching is unchanged).

Module names are the official ones (``detr.*``, ``bbox_attention.q_linear``, ``mask_head.lay1``, ...), so
the official panoptic checkpoints load without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vtrain.models.detr.criterion import SetCriterion
from vtrain.models.detr.matcher import HungarianMatcher
from vtrain.models.detr.model import DETR, detr_r50, detr_r50_dc5, detr_r101, detr_tiny

# ResNet stages whose outputs the mask head refines with, from coarse to fine (strides 16, 8, 4)
FPN_STAGES = ("layer3", "layer2", "layer1")


class MHAttentionMap(nn.Module):
    """Multi-head attention weights only (no values): for every query and head, a softmax over the H x W
    memory cells. As in the official code the softmax runs over heads and cells together.

    Args:
        query_dim: width of queries and memory (D).
        hidden_dim: width of the projections (D), split into ``num_heads`` heads.
        num_heads: M.
        dropout: on the attention weights.
        bias: projections with biases.
    """

    def __init__(
        self, query_dim: int, hidden_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"MHAttentionMap: hidden_dim {hidden_dim} is not divisible by {num_heads} heads")
        self.num_heads, self.hidden_dim = num_heads, hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.q_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        self.k_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        for linear in (self.q_linear, self.k_linear):
            nn.init.xavier_uniform_(linear.weight)
            if bias:
                nn.init.zeros_(linear.bias)
        self.normalize_fact = float(hidden_dim / num_heads) ** -0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """q: queries [B, Q, D]; k: memory [B, D, H, W]; mask: [B, H, W] True on padding
        -> weights [B, Q, M, H, W], summing to 1 over (M, H, W) for each query."""
        q = self.q_linear(q)
        k = F.conv2d(k, self.k_linear.weight[:, :, None, None], self.k_linear.bias)  # the linear, per cell
        head_dim = self.hidden_dim // self.num_heads
        qh = q.view(*q.shape[:2], self.num_heads, head_dim)
        kh = k.view(k.shape[0], self.num_heads, head_dim, *k.shape[-2:])
        weights = torch.einsum("bqnc,bnchw->bqnhw", qh * self.normalize_fact, kh)
        if mask is not None:
            weights = weights.masked_fill(mask[:, None, None], float("-inf"))
        weights = F.softmax(weights.flatten(2), dim=-1).view(weights.shape)
        return self.dropout(weights)


def _group_norm(channels: int) -> nn.GroupNorm:
    """The official 8 groups; fewer (the largest divisor of 8 that fits) for narrow CPU-sized heads."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


class MaskHeadSmallConv(nn.Module):
    """FPN-style mask head: 3x3 convolutions with GroupNorm and ReLU, upsampling (nearest) to the
    resolution of each ResNet stage and adding its features through a 1x1 adapter.

    Args:
        dim: input channels, D + M (projected features and the M attention maps).
        fpn_dims: channels of the stride-16, 8, 4 backbone features.
        context_dim: D; the widths fall to D / 2, D / 4, D / 8, D / 16 before the 1-channel output.
    """

    def __init__(self, dim: int, fpn_dims: tuple[int, int, int], context_dim: int) -> None:
        super().__init__()
        inter_dims = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = _group_norm(dim)
        self.lay2 = nn.Conv2d(dim, inter_dims[1], 3, padding=1)
        self.gn2 = _group_norm(inter_dims[1])
        self.lay3 = nn.Conv2d(inter_dims[1], inter_dims[2], 3, padding=1)
        self.gn3 = _group_norm(inter_dims[2])
        self.lay4 = nn.Conv2d(inter_dims[2], inter_dims[3], 3, padding=1)
        self.gn4 = _group_norm(inter_dims[3])
        self.lay5 = nn.Conv2d(inter_dims[3], inter_dims[4], 3, padding=1)
        self.gn5 = _group_norm(inter_dims[4])
        self.out_lay = nn.Conv2d(inter_dims[4], 1, 3, padding=1)
        self.dim = dim
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter_dims[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter_dims[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], inter_dims[3], 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, bbox_mask: torch.Tensor, fpns: list[torch.Tensor]) -> torch.Tensor:
        """Args:
            x: projected backbone features [B, D, H, W] (stride 32).
            bbox_mask: attention maps [B, Q, M, H, W].
            fpns: backbone features at strides 16, 8, 4: [B, C_i, H_i, W_i].

        Returns:
            mask logits [B * Q, 1, H_3, W_3] (stride 4), query-major within each image.
        """
        queries = bbox_mask.shape[1]
        x = torch.cat([_repeat_per_query(x, queries), bbox_mask.flatten(0, 1)], 1)
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        stages = ((self.adapter1, self.lay3, self.gn3), (self.adapter2, self.lay4, self.gn4))
        stages += ((self.adapter3, self.lay5, self.gn5),)
        for fpn, (adapter, lay, gn) in zip(fpns, stages, strict=True):
            fpn = _repeat_per_query(adapter(fpn), queries)
            x = fpn + F.interpolate(x, size=fpn.shape[-2:], mode="nearest")
            x = F.relu(gn(lay(x)))
        return self.out_lay(x)


def _repeat_per_query(x: torch.Tensor, queries: int) -> torch.Tensor:
    """[B, C, H, W] -> [B * queries, C, H, W], each image repeated for its queries."""
    return x[:, None].expand(-1, queries, -1, -1, -1).flatten(0, 1)


class DETRPanoptic(nn.Module):
    """DETR with the panoptic mask head (the official ``DETRsegm``).

    Args:
        detr: the detection model; its keys become ``detr.*``.
        freeze_detr: train the mask head only, on top of a fixed (pre-trained) DETR (the paper's second
            stage; the official ``--frozen_weights``); False trains everything together.
    """

    def __init__(self, detr: DETR, freeze_detr: bool = False) -> None:
        super().__init__()
        self.detr = detr
        if freeze_detr:
            for param in self.detr.parameters():
                param.requires_grad_(False)
        self.freeze_detr = freeze_detr
        hidden_dim, nheads = detr.transformer.d_model, detr.transformer.nhead
        body = detr.backbone[0].body
        fpn_dims = tuple(_out_channels(getattr(body, stage)) for stage in FPN_STAGES)
        self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, nheads, dropout=0.0)
        self.mask_head = MaskHeadSmallConv(hidden_dim + nheads, fpn_dims, hidden_dim)

    @property
    def num_queries(self) -> int:
        return self.detr.num_queries

    @property
    def num_classes(self) -> int:
        return self.detr.num_classes

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        """Detect and segment.

        Args:
            images: [B, 3, H, W], ImageNet-normalized, padded at the bottom and right.
            mask: [B, H, W] bool, True on padding; None means no padding.

        Returns:
            DETR's outputs (``pred_logits`` [B, Q, K + 1], ``pred_boxes`` [B, Q, 4], ``aux_outputs``) and
            ``pred_masks`` [B, Q, H / 4, W / 4]: mask logits at stride 4 of the padded batch (rounded up).
        """
        detr = self.detr
        if mask is None:
            mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        x, fpns = images, {}
        for name, stage in detr.backbone[0].body.named_children():
            x = stage(x)
            if name in FPN_STAGES:
                fpns[name] = x
        small_mask = F.interpolate(mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
        pos = detr.backbone[1](small_mask).to(x.dtype)
        src = detr.input_proj(x)
        hs, memory = detr.transformer(src, small_mask, detr.query_embed.weight, pos)
        logits = detr.class_embed(hs)
        boxes = detr.bbox_embed(hs).sigmoid()
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if detr.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        bbox_mask = self.bbox_attention(hs[-1], memory, mask=small_mask)
        masks = self.mask_head(src, bbox_mask, [fpns[stage] for stage in FPN_STAGES])
        out["pred_masks"] = masks.view(len(images), detr.num_queries, *masks.shape[-2:])
        return out


def _out_channels(stage: nn.Module) -> int:
    """Output channels of a torchvision ResNet stage (its last block's last convolution)."""
    return [m for m in stage.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


# ------------------------------------------------------------------------------------------------- losses


def sigmoid_focal_loss(
    inputs: torch.Tensor, targets: torch.Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) of per-pixel mask logits, averaged over pixels, summed over masks and
    divided by ``num_boxes``. inputs, targets: [N, P] (targets in {0, 1})."""
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_boxes


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """DICE loss (Milletari et al. 2016) ``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` of sigmoid(inputs), summed
    over masks and divided by ``num_boxes``. inputs, targets: [N, P]."""
    prob = inputs.sigmoid()
    numerator = 2 * (prob * targets).sum(1)
    denominator = prob.sum(1) + targets.sum(1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_boxes


class PanopticSetCriterion(SetCriterion):
    """DETR's set criterion plus ``loss_mask`` (focal) and ``loss_dice`` on the matched masks of the final
    decoder layer (the auxiliary outputs have no masks, as in the official code).

    Args:
        mask_loss_coef, dice_loss_coef: their weights in :attr:`weight_dict` (1 and 1 in DETR).
        Others: as :class:`~vtrain.models.detr.SetCriterion`.

    Targets also need ``masks`` [M_b, h_b, w_b] bool at the size of their (unpadded) image; the predicted
    masks are upsampled (bilinear) from stride 4 to the padded batch size and compared there.
    """

    def __init__(
        self,
        num_classes: int = 250,
        matcher: HungarianMatcher | None = None,
        eos_coef: float = 0.1,
        ce_loss_coef: float = 1,
        bbox_loss_coef: float = 5,
        giou_loss_coef: float = 2,
        mask_loss_coef: float = 1,
        dice_loss_coef: float = 1,
        dec_layers: int = 6,
    ) -> None:
        super().__init__(
            num_classes, matcher, eos_coef, ce_loss_coef, bbox_loss_coef, giou_loss_coef, dec_layers
        )
        self.weight_dict |= {"loss_mask": mask_loss_coef, "loss_dice": dice_loss_coef}

    def loss_masks(
        self,
        outputs: dict,
        targets: list[dict],
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        num_boxes: float,
    ) -> dict[str, torch.Tensor]:
        """``loss_mask`` and ``loss_dice`` of the matched pairs (see the class docstring)."""
        batch_idx, pred_idx = self._matched_predictions(indices)
        pred_masks = outputs["pred_masks"][batch_idx, pred_idx]  # [N, h, w]
        height = max(t["masks"].shape[-2] for t in targets)
        width = max(t["masks"].shape[-1] for t in targets)
        target_masks = [
            F.pad(t["masks"][j].float(), (0, width - t["masks"].shape[-1], 0, height - t["masks"].shape[-2]))
            for t, (_, j) in zip(targets, indices, strict=True)
        ]
        target_masks = torch.cat(target_masks).to(pred_masks.dtype)
        # the batch is padded to its largest image, which the stride-4 predictions cover (rounded up)
        pred_masks = F.interpolate(
            pred_masks[:, None], size=(height, width), mode="bilinear", align_corners=False
        )
        pred_masks, target_masks = pred_masks[:, 0].flatten(1), target_masks.flatten(1)
        return {
            "loss_mask": sigmoid_focal_loss(pred_masks, target_masks, num_boxes),
            "loss_dice": dice_loss(pred_masks, target_masks, num_boxes),
        }

    def _losses(
        self, outputs: dict, targets: list[dict], num_boxes: float, class_weight: float
    ) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        device = outputs["pred_logits"].device
        indices = [(i.to(device), j.to(device)) for i, j in indices]
        losses = {
            **self.loss_labels(outputs, targets, indices, class_weight),
            **self.loss_boxes(outputs, targets, indices, num_boxes),
            **self.loss_cardinality(outputs, targets),
        }
        if "pred_masks" in outputs:
            losses |= self.loss_masks(outputs, targets, indices, num_boxes)
        return losses


# ------------------------------------------------------------------------------------------------ presets


def _panoptic(detr_preset, overrides: dict) -> DETRPanoptic:
    """``overrides``: ``freeze_detr`` and any DETR constructor argument; 250 classes unless given."""
    freeze_detr = overrides.pop("freeze_detr", False)
    return DETRPanoptic(detr_preset(**{"num_classes": 250, **overrides}), freeze_detr=freeze_detr)


def detr_r50_panoptic(**overrides) -> DETRPanoptic:
    """DETR R50 panoptic (paper table 5): 43.4 PQ on COCO val; 250 classes as the official model."""
    return _panoptic(detr_r50, overrides)


def detr_r50_dc5_panoptic(**overrides) -> DETRPanoptic:
    """DETR-DC5 R50 panoptic: 44.6 PQ (official model zoo)."""
    return _panoptic(detr_r50_dc5, overrides)


def detr_r101_panoptic(**overrides) -> DETRPanoptic:
    """DETR R101 panoptic: 45.1 PQ."""
    return _panoptic(detr_r101, overrides)


def detr_tiny_panoptic(**overrides) -> DETRPanoptic:
    """CPU-sized panoptic DETR (``detr_tiny`` plus the mask head), not from the paper."""
    return _panoptic(detr_tiny, overrides)


PANOPTIC_PRESETS = {
    "detr_r50_panoptic": detr_r50_panoptic,
    "detr_r50_dc5_panoptic": detr_r50_dc5_panoptic,
    "detr_r101_panoptic": detr_r101_panoptic,
    "detr_tiny_panoptic": detr_tiny_panoptic,
}
