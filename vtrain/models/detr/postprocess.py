"""Turning DETR's outputs into detections in image coordinates (the COCO API's format)."""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert


class PostProcess(nn.Module):
    """Every query becomes one detection: its most likely real class (no-object dropped), that class's
    probability as the score, and its box in absolute x0, y0, x1, y1 pixels. No threshold, no NMS."""

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Args:
            outputs: ``pred_logits`` [B, Q, K + 1] and ``pred_boxes`` [B, Q, 4] normalized cx, cy, w, h.
            target_sizes: [B, 2] (height, width) to scale boxes to: the original image size for evaluation,
                the size after augmentation but before padding for visualisation.

        Returns:
            B dicts: ``scores`` [Q], ``labels`` [Q] int64 in [0, K), ``boxes`` [Q, 4] x0, y0, x1, y1.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if target_sizes.ndim != 2 or target_sizes.shape != (len(logits), 2):
            raise ValueError(
                f"PostProcess: target_sizes must be [B, 2] (height, width) with B = {len(logits)}, "
                f"found shape {tuple(target_sizes.shape)}"
            )
        scores, labels = F.softmax(logits, -1)[..., :-1].max(-1)
        height, width = target_sizes.unbind(1)
        scale = torch.stack([width, height, width, height], dim=1)
        boxes = box_convert(boxes, "cxcywh", "xyxy") * scale[:, None, :]
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes, strict=True)]
