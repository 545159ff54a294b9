"""DETR's set prediction loss (section 3.1, eq. 2): match, then supervise each matched pair.

After the Hungarian matching, every prediction gets a class target (its matched object's class, or "no
object"), trained with cross-entropy whose no-object term is down-weighted by ``eos_coef``; matched
predictions also get an L1 and a generalized-IoU box loss, summed and divided by the number of target boxes
in the batch (averaged over distributed ranks). The same losses are applied to every decoder layer's
predictions (auxiliary losses, section 3.2), each re-matched.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from vtrain.models.detr.matcher import HungarianMatcher

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou")


def _normalizers(
    targets: list[dict], num_queries: int, eos_coef: float, device: torch.device
) -> tuple[float, float]:
    """The loss normalizers, per rank and averaged over ranks when distributed (one all-reduce):

    * the number of target boxes, at least 1 (the box losses' divisor, as in DETR);
    * the total class weight of the B x Q predictions: 1 for each matched one (min(Q, M_b) per image) and
      ``eos_coef`` for the others (the classification loss's divisor). On one process this is the divisor of
      DETR's weighted-mean cross-entropy; averaged over ranks it makes the DDP gradient equal to that of one
      process holding the whole global batch, which a per-rank weighted mean is not when ranks hold
      different numbers of boxes.
    """
    boxes = float(sum(len(t["labels"]) for t in targets))
    matched = float(sum(min(num_queries, len(t["labels"])) for t in targets))
    weight = matched + (len(targets) * num_queries - matched) * eos_coef
    totals = torch.tensor([boxes, weight], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
        totals /= dist.get_world_size()
    num_boxes, class_weight = totals.tolist()
    return max(num_boxes, 1.0), class_weight


class SetCriterion(nn.Module):
    """Hungarian-matched classification and box losses, on the final and every auxiliary output.

    Args:
        num_classes: object classes K (the logits have K + 1 entries; index K is "no object").
        matcher: the assignment; ``HungarianMatcher()`` (costs 1, 5, 2) by default.
        eos_coef: weight of the "no object" class in the cross-entropy (0.1 in DETR).
        ce_loss_coef: weight of ``loss_ce`` in :attr:`weight_dict`.
        bbox_loss_coef: weight of ``loss_bbox`` (L1) in :attr:`weight_dict`.
        giou_loss_coef: weight of ``loss_giou`` in :attr:`weight_dict`.
        dec_layers: decoder layers of the model; :attr:`weight_dict` covers the auxiliary outputs of the
            first ``dec_layers - 1``.

    Attributes:
        weight_dict: loss name -> weight, for ``loss_ce``, ``loss_bbox``, ``loss_giou`` and their ``_{i}``
            auxiliary copies; the training loss is ``sum(losses[k] * w for k, w in weight_dict.items())``.
            The other returned entries (``class_error``, ``cardinality_error``) are for logging only.
    """

    def __init__(
        self,
        num_classes: int = 91,
        matcher: HungarianMatcher | None = None,
        eos_coef: float = 0.1,
        ce_loss_coef: float = 1,
        bbox_loss_coef: float = 5,
        giou_loss_coef: float = 2,
        dec_layers: int = 6,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = HungarianMatcher() if matcher is None else matcher
        self.eos_coef = eos_coef
        weights = dict(zip(LOSS_NAMES, (ce_loss_coef, bbox_loss_coef, giou_loss_coef), strict=True))
        self.weight_dict = dict(weights)
        for i in range(dec_layers - 1):
            self.weight_dict.update({f"{k}_{i}": v for k, v in weights.items()})
        self.num_aux_outputs = dec_layers - 1
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(
        self,
        outputs: dict,
        targets: list[dict],
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        class_weight: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """``loss_ce``: weighted cross-entropy over all Q predictions, divided by ``class_weight`` (default:
        the batch's total weight, i.e. DETR's weighted mean); ``class_error``: 100 - top-1 accuracy (%) of
        the matched predictions (100 when nothing is matched), for logging."""
        logits = outputs["pred_logits"]
        batch_idx, pred_idx = self._matched_predictions(indices)
        matched_classes = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices, strict=True)])
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[batch_idx, pred_idx] = matched_classes
        weights = self.empty_weight[target_classes]
        per_prediction = F.cross_entropy(logits.transpose(1, 2), target_classes, reduction="none")
        loss_ce = (per_prediction * weights).sum() / (weights.sum() if class_weight is None else class_weight)
        with torch.no_grad():
            if matched_classes.numel():
                correct = logits[batch_idx, pred_idx].argmax(-1) == matched_classes
                accuracy = correct.float().mean() * 100
            else:
                accuracy = torch.zeros((), device=logits.device)
        return {"loss_ce": loss_ce, "class_error": 100 - accuracy}

    @torch.no_grad()
    def loss_cardinality(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """``cardinality_error``: mean absolute difference between the number of predictions whose argmax is
        not "no object" and the number of targets, per image. For logging; no gradient."""
        logits = outputs["pred_logits"]
        predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        actual = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device)
        return {"cardinality_error": F.l1_loss(predicted.float(), actual.float())}

    def loss_boxes(
        self,
        outputs: dict,
        targets: list[dict],
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        num_boxes: float,
    ) -> dict[str, torch.Tensor]:
        """``loss_bbox``: L1 over the matched cx, cy, w, h; ``loss_giou``: 1 - GIoU of the matched pairs;
        both summed and divided by ``num_boxes``."""
        batch_idx, pred_idx = self._matched_predictions(indices)
        pred_boxes = outputs["pred_boxes"][batch_idx, pred_idx]
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)])
        loss_bbox = F.l1_loss(pred_boxes, target_boxes, reduction="none")
        giou = torch.diag(
            generalized_box_iou(
                box_convert(pred_boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
            )
        )
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": (1 - giou).sum() / num_boxes}

    @staticmethod
    def _matched_predictions(
        indices: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image index, query index) of every matched prediction, image by image."""
        batch_idx = torch.cat([torch.full_like(pred, b) for b, (pred, _) in enumerate(indices)])
        pred_idx = torch.cat([pred for pred, _ in indices])
        return batch_idx, pred_idx

    def _losses(
        self, outputs: dict, targets: list[dict], num_boxes: float, class_weight: float
    ) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        device = outputs["pred_logits"].device
        indices = [(i.to(device), j.to(device)) for i, j in indices]
        return {
            **self.loss_labels(outputs, targets, indices, class_weight),
            **self.loss_boxes(outputs, targets, indices, num_boxes),
            **self.loss_cardinality(outputs, targets),
        }

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Compute the losses.

        Args:
            outputs: the model's dict: ``pred_logits`` [B, Q, K + 1], ``pred_boxes`` [B, Q, 4] and optionally
                ``aux_outputs``, a list of dicts with the same two keys.
            targets: B dicts with ``labels`` [M_b] int64 and ``boxes`` [M_b, 4] normalized cx, cy, w, h,
                on the outputs' device.

        Returns:
            ``loss_ce``, ``loss_bbox``, ``loss_giou`` (unweighted; see :attr:`weight_dict`), ``class_error``
            and ``cardinality_error``; for auxiliary output i the same keys with the suffix ``_{i}``, except
            ``class_error``.
        """
        aux_outputs = outputs.get("aux_outputs", [])
        if len(aux_outputs) > self.num_aux_outputs:
            raise ValueError(
                f"SetCriterion got {len(aux_outputs)} auxiliary outputs but its weight_dict covers "
                f"{self.num_aux_outputs} (dec_layers={self.num_aux_outputs + 1}); build it with the model's "
                "dec_layers"
            )
        logits = outputs["pred_logits"]
        num_boxes, class_weight = _normalizers(targets, logits.shape[1], self.eos_coef, logits.device)
        losses = self._losses(outputs, targets, num_boxes, class_weight)
        for i, aux in enumerate(aux_outputs):
            aux_losses = self._losses(aux, targets, num_boxes, class_weight)
            del aux_losses["class_error"]  # logged for the last layer only
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses
