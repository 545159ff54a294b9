"""Turning panoptic DETR's outputs into non-overlapping segments (the official ``PostProcessPanoptic``) and
into scored instance masks (``PostProcessSegm``, for mask AP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _upsampled_masks(
    mask_logits: torch.Tensor, padded_size: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """[N, h4, w4] stride-4 logits of the padded batch -> [N, h, w] bilinear logits of the unpadded image."""
    up = F.interpolate(mask_logits[:, None], size=padded_size, mode="bilinear", align_corners=False)
    return up[:, 0, : size[0], : size[1]]


def _resize_nearest(ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[h, w] integer map -> [H, W] (nearest)."""
    return F.interpolate(ids[None, None].float(), size=size, mode="nearest")[0, 0].long()


class PostProcessPanoptic(nn.Module):
    """Per image: keep the queries whose most likely class is a real one scored above ``threshold``, give
    every pixel to the kept query with the largest mask logit, merge the queries of one stuff class into one
    segment, then drop segments of at most ``min_area`` pixels (at the output size) and reassign their pixels
    until none is left that small.

    Args:
        is_thing: category id -> thing or stuff; queries whose class is not in it are dropped (the model's
            spare classes). None: COCO's rule, ids up to 90 are things (the official ``is_thing_map``).
        threshold: minimum class probability (0.85 in DETR).
        min_area: segments this small or smaller are removed (4 in DETR).
    """

    def __init__(self, is_thing: dict[int, bool] | None = None, threshold: float = 0.85, min_area: int = 4):
        super().__init__()
        self.is_thing, self.threshold, self.min_area = is_thing, threshold, min_area

    def _thing(self, label: int) -> bool:
        return label <= 90 if self.is_thing is None else self.is_thing[label]

    @torch.no_grad()
    def forward(
        self,
        outputs: dict,
        processed_sizes: torch.Tensor,
        target_sizes: torch.Tensor | None = None,
        padded_size: tuple[int, int] | None = None,
    ) -> list[dict]:
        """Args:
            outputs: ``pred_logits`` [B, Q, K + 1] and ``pred_masks`` [B, Q, h4, w4] (stride 4 of the batch).
            processed_sizes: [B, 2] (h, w) of each image as the model saw it, before padding.
            target_sizes: [B, 2] (H, W) to give the segmentation (the original image size); default the
                processed sizes.
            padded_size: (H, W) of the padded batch; default the largest processed size.

        Returns:
            B dicts: ``segmentation`` [H, W] int64 segment ids (1 .. S; 0 only when no query is kept) and
            ``segments_info``: per segment ``id``, ``category_id``, ``isthing``, ``area`` (pixels at the
            target size) and ``score`` (class probability; of the first query of a merged stuff class).
        """
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        if target_sizes is None:
            target_sizes = processed_sizes
        if padded_size is None:
            padded_size = tuple(int(s) for s in processed_sizes.max(0).values)
        results = []
        probs = logits.softmax(-1)
        for prob, mask, size, target_size in zip(probs, masks, processed_sizes, target_sizes, strict=True):
            size, target_size = tuple(int(s) for s in size), tuple(int(s) for s in target_size)
            scores, labels = prob[:, :-1].max(-1)
            known = torch.tensor(
                [self.is_thing is None or int(c) in self.is_thing for c in labels], device=labels.device
            )
            keep = (prob.argmax(-1) != prob.shape[-1] - 1) & (scores > self.threshold) & known
            scores, labels = scores[keep], labels[keep]
            mask = _upsampled_masks(mask[keep], padded_size, size).flatten(1)  # [n, h * w]
            while True:
                ids, area = self._assign(mask, labels, size, target_size)
                small = area <= self.min_area
                if not small.any():
                    break
                scores, labels, mask = scores[~small], labels[~small], mask[~small]
            segments_info = [
                {"id": i + 1, "category_id": c, "isthing": self._thing(c), "area": int(a), "score": s}
                for i, (c, s, a) in enumerate(
                    zip(labels.tolist(), scores.tolist(), area.tolist(), strict=True)
                )
            ]
            results.append({"segmentation": ids, "segments_info": segments_info})
        return results

    def _assign(
        self, mask: torch.Tensor, labels: torch.Tensor, size: tuple[int, int], target_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment ids (query index + 1) of every pixel at ``target_size`` and every query's area."""
        if not len(labels):
            return torch.zeros(target_size, dtype=torch.int64, device=mask.device), torch.zeros(0)
        index = mask.argmax(0)
        first_of_class: dict[int, int] = {}
        for k, label in enumerate(labels.tolist()):
            if not self._thing(label):
                first = first_of_class.setdefault(label, k)
                index[index == k] = first
        ids = _resize_nearest(index.view(size) + 1, target_size)
        area = torch.bincount(ids.flatten(), minlength=len(labels) + 1)[1:].cpu()
        return ids, area


class PostProcessSegm(nn.Module):
    """Every query's mask at the original image size, binarised at ``threshold`` after the sigmoid (the
    official ``PostProcessSegm``), to go with :class:`~vtrain.models.detr.PostProcess`'s boxes and scores."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    @torch.no_grad()
    def forward(
        self,
        outputs: dict,
        processed_sizes: torch.Tensor,
        target_sizes: torch.Tensor,
        padded_size: tuple[int, int] | None = None,
    ) -> list[torch.Tensor]:
        """``pred_masks`` [B, Q, h4, w4] -> B bool tensors [Q, H, W] at ``target_sizes`` (see
        :class:`PostProcessPanoptic` for the sizes)."""
        if padded_size is None:
            padded_size = tuple(int(s) for s in processed_sizes.max(0).values)
        results = []
        for mask, size, target_size in zip(outputs["pred_masks"], processed_sizes, target_sizes, strict=True):
            size, target_size = tuple(int(s) for s in size), tuple(int(s) for s in target_size)
            binary = (_upsampled_masks(mask, padded_size, size).sigmoid() > self.threshold).float()
            results.append(F.interpolate(binary[:, None], size=target_size, mode="nearest")[:, 0].bool())
        return results
