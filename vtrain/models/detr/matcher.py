"""Bipartite matching between predictions and ground truth (DETR section 3.1, eq. 1).

Each image's N predictions are matched one-to-one to its M <= N ground-truth objects by the Hungarian
algorithm, minimising a pairwise cost that mixes class probability, L1 box distance and generalized IoU;
unmatched predictions are trained to predict "no object".
"""

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of predictions to targets, per image.

    The cost of matching prediction i to target j is
    ``cost_class * -p_i(c_j) + cost_bbox * ||b_i - b_j||_1 - cost_giou * GIoU(b_i, b_j)``, where p_i is the
    softmax over classes and boxes are normalized cx, cy, w, h (GIoU on their xyxy corners). The
    probability stands in for the log-likelihood of the loss, as in the paper.

    Args:
        cost_class: weight of the class term (1 in DETR).
        cost_bbox: weight of the L1 box term (5).
        cost_giou: weight of the GIoU term (2).
    """

    def __init__(self, cost_class: float = 1, cost_bbox: float = 5, cost_giou: float = 2) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all three costs are 0, every assignment would be optimal")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match every image of the batch.

        Args:
            outputs: ``pred_logits`` [B, Q, K + 1] and ``pred_boxes`` [B, Q, 4] (normalized cx, cy, w, h).
            targets: B dicts with ``labels`` [M_b] int64 and ``boxes`` [M_b, 4] (normalized cx, cy, w, h).

        Returns:
            B pairs ``(pred_idx, target_idx)`` of int64 CPU tensors of length min(Q, M_b): prediction
            ``pred_idx[k]`` is matched to target ``target_idx[k]``; ``pred_idx`` is sorted.
        """
        batch, num_queries = outputs["pred_logits"].shape[:2]
        if len(targets) != batch:
            raise ValueError(
                f"HungarianMatcher: {batch} images of predictions but {len(targets)} target dicts"
            )
        # one cost matrix for the whole batch [B * Q, sum M_b], cut per image afterwards: one transfer
        # to the CPU instead of one per image; float32 even under mixed precision
        prob = outputs["pred_logits"].flatten(0, 1).float().softmax(-1)
        pred_boxes = outputs["pred_boxes"].flatten(0, 1).float()
        target_labels = torch.cat([t["labels"] for t in targets])
        target_boxes = torch.cat([t["boxes"] for t in targets]).float()

        cost_class = -prob[:, target_labels]
        cost_bbox = torch.cdist(pred_boxes, target_boxes, p=1)
        cost_giou = -generalized_box_iou(
            box_convert(pred_boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
        )
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        cost = cost.view(batch, num_queries, -1).cpu()
        if not torch.isfinite(cost).all():
            raise ValueError(
                "HungarianMatcher: the matching cost has NaN or inf entries; check pred_boxes and the target "
                "boxes (normalized cx, cy, w, h with w, h >= 0) for NaN or degenerate values"
            )

        sizes = [len(t["boxes"]) for t in targets]
        indices = [linear_sum_assignment(c[b]) for b, c in enumerate(cost.split(sizes, -1))]
        return [
            (torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices
        ]
