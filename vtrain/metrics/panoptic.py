"""Panoptic quality (Kirillov et al. 2019), computed the way the official panopticapi ``pq_compute`` does.

Per image, a predicted and a ground-truth segment match when they have the same category and IoU > 0.5
(unique by construction, as segments do not overlap). The union leaves out the prediction's pixels on
void ground truth (id 0). Crowd ground truth segments are never matched; an unmatched prediction is not a
false positive when more than half of it lies on void or on a crowd region of its own category; unmatched
non-crowd ground truth segments are false negatives. Per category:

    PQ = sum IoU(tp) / (TP + FP / 2 + FN / 2) = SQ x RQ,    SQ = sum IoU(tp) / TP,    RQ = TP / (TP + ...)

averaged over the categories that occur (TP + FP + FN > 0), for all, things and stuff; reported in percent,
as panopticapi prints them.

Segmentations are [H, W] integer maps of segment ids (the PNG's R + 256 G + 256^2 B); each image's segments
come as a list of dicts with ``id`` and ``category_id`` (and ``iscrowd`` for the ground truth).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

VOID = 0
OFFSET = 256 * 256 * 256  # larger than any segment id, so gt * OFFSET + pred encodes the pair
STATS = ("tp", "fp", "fn", "iou")
GROUPS = ("All", "Things", "Stuff")


def rgb2id(color: np.ndarray) -> np.ndarray:
    """Segment ids of a COCO panoptic PNG: [H, W, 3] uint8 -> [H, W] int64 ``R + 256 G + 256^2 B``."""
    color = np.asarray(color, dtype=np.int64)
    if color.ndim != 3 or color.shape[-1] != 3:
        raise ValueError(f"rgb2id: expected an [H, W, 3] RGB array, found shape {color.shape}")
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb2id`: [H, W] ids < 256^3 -> [H, W, 3] uint8."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
        raise ValueError(f"id2rgb: segment ids must lie in [0, 256^3), found {ids.min()} .. {ids.max()}")
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)


def read_segmentation(path: str | os.PathLike) -> np.ndarray:
    """[H, W] int64 segment ids of a panoptic PNG file."""
    with Image.open(path) as image:
        return rgb2id(np.asarray(image.convert("RGB")))


def pq_image_stats(
    gt: np.ndarray | torch.Tensor,
    gt_segments: list[dict],
    pred: np.ndarray | torch.Tensor,
    pred_segments: list[dict],
    categories: Iterable[int],
) -> dict[int, np.ndarray]:
    """One image's contribution: category id -> [TP, FP, FN, sum of matched IoUs] (panopticapi's
    ``pq_compute_single_core``).

    Args:
        gt, pred: [H, W] segment-id maps of the same size; 0 in ``gt`` is void.
        gt_segments: dicts with ``id``, ``category_id`` and optionally ``iscrowd``.
        pred_segments: dicts with ``id`` and ``category_id``; ids present in ``pred`` but not listed (other
            than 0) are an error, as listed segments without pixels are simply left out.
        categories: the category ids of the data set.

    Raises:
        ValueError: the maps differ in size, a segment id appears twice, a map holds an id its list lacks,
            or a segment's category is not one of ``categories``.
    """
    gt, pred = (torch.as_tensor(np.asarray(m) if not isinstance(m, torch.Tensor) else m) for m in (gt, pred))
    gt, pred = gt.long().cpu(), pred.long().cpu()
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(
            f"pq_image_stats: ground truth {tuple(gt.shape)} and prediction {tuple(pred.shape)} must be "
            "[H, W] maps of one size"
        )
    categories = set(categories)
    gt_segms, pred_segms = _segments(gt_segments, "ground truth"), _segments(pred_segments, "prediction")
    for segms, name in ((gt_segms, "ground truth"), (pred_segms, "prediction")):
        for segment in segms.values():
            if segment["category_id"] not in categories:
                raise ValueError(
                    f"pq_image_stats: {name} segment {segment['id']} has category {segment['category_id']}, "
                    f"not one of the {len(categories)} categories"
                )
    gt_area = _areas(gt, gt_segms, "ground truth", void_allowed=True)
    pred_area = _areas(pred, pred_segms, "prediction", void_allowed=True)
    pairs, counts = torch.unique(gt * OFFSET + pred, return_counts=True)
    intersections = {
        (int(p) // OFFSET, int(p) % OFFSET): int(c)
        for p, c in zip(pairs.tolist(), counts.tolist(), strict=True)
    }
    stats: dict[int, np.ndarray] = {}

    def add(category: int, column: int, value: float) -> None:
        stats.setdefault(category, np.zeros(4))[column] += value

    matched_gt, matched_pred = set(), set()
    for (gt_id, pred_id), intersection in intersections.items():
        if gt_id not in gt_area or pred_id not in pred_area:
            continue
        gt_segment, pred_segment = gt_segms[gt_id], pred_segms[pred_id]
        if gt_segment.get("iscrowd", 0) or gt_segment["category_id"] != pred_segment["category_id"]:
            continue
        union = pred_area[pred_id] + gt_area[gt_id] - intersection - intersections.get((VOID, pred_id), 0)
        iou = intersection / union
        if iou > 0.5:
            add(gt_segment["category_id"], 0, 1)
            add(gt_segment["category_id"], 3, iou)
            matched_gt.add(gt_id)
            matched_pred.add(pred_id)
    crowd_by_category = {}
    for gt_id in gt_area:
        if gt_id in matched_gt:
            continue
        if gt_segms[gt_id].get("iscrowd", 0):
            crowd_by_category[gt_segms[gt_id]["category_id"]] = gt_id
        else:
            add(gt_segms[gt_id]["category_id"], 2, 1)
    for pred_id in pred_area:
        if pred_id in matched_pred:
            continue
        category = pred_segms[pred_id]["category_id"]
        ignored = intersections.get((VOID, pred_id), 0)
        if category in crowd_by_category:
            ignored += intersections.get((crowd_by_category[category], pred_id), 0)
        if ignored / pred_area[pred_id] > 0.5:
            continue
        add(category, 1, 1)
    return stats


def _segments(segments: list[dict], name: str) -> dict[int, dict]:
    by_id = {}
    for segment in segments:
        if segment["id"] in by_id:
            raise ValueError(f"pq_image_stats: {name} segment id {segment['id']} appears twice")
        by_id[int(segment["id"])] = segment
    return by_id


def _areas(seg: torch.Tensor, segms: dict[int, dict], name: str, void_allowed: bool) -> dict[int, int]:
    """Pixel count of every listed segment present in ``seg`` (panopticapi counts areas from the PNG)."""
    ids, counts = torch.unique(seg, return_counts=True)
    areas = {}
    for segment_id, count in zip(ids.tolist(), counts.tolist(), strict=True):
        if segment_id not in segms:
            if segment_id == VOID and void_allowed:
                continue
            raise ValueError(f"pq_image_stats: {name} map holds segment id {segment_id}, which is not listed")
        areas[segment_id] = count
    return areas


def pq_summary(stats: dict[int, np.ndarray], isthing: dict[int, bool]) -> dict[str, float]:
    """PQ, SQ, RQ (percent) and the number of categories counted, for All, Things and Stuff.

    Args:
        stats: category id -> [TP, FP, FN, IoU sum], summed over images.
        isthing: category id -> thing (True) or stuff (False), for every category of the data set.

    Returns:
        ``PQ``, ``SQ``, ``RQ``, ``N`` for All, then ``PQ_th``, ``SQ_th``, ... and ``PQ_st``, ... ; 0 where
        no category of the group occurs.
    """
    out = {}
    for group, suffix in zip(GROUPS, ("", "_th", "_st"), strict=True):
        pq = sq = rq = 0.0
        n = 0
        for category, thing in isthing.items():
            if group == "Things" and not thing or group == "Stuff" and thing:
                continue
            tp, fp, fn, iou = stats.get(category, np.zeros(4))
            if tp + fp + fn == 0:
                continue
            n += 1
            pq += iou / (tp + 0.5 * fp + 0.5 * fn)
            sq += iou / tp if tp else 0.0
            rq += tp / (tp + 0.5 * fp + 0.5 * fn)
        scale = 100 / n if n else 0.0
        out |= {
            f"PQ{suffix}": float(pq * scale),
            f"SQ{suffix}": float(sq * scale),
            f"RQ{suffix}": float(rq * scale),
        }
        out[f"N{suffix}"] = float(n)
    return out


class PanopticEvaluator:
    """Accumulates panoptic predictions over an evaluation epoch against a COCO panoptic annotation file.

    Args:
        annotation_file: ``panoptic_<split>2017.json`` (its ``categories`` say which are things).
        segmentation_folder: its PNGs; defaults to the file's path without ``.json``.

    ``update(image_id, segmentation, segments_info)`` takes a prediction at the original image size;
    ``compute()`` gathers the per-image statistics over DDP ranks (an image seen twice counts once) and
    returns :func:`pq_summary`'s numbers over the images seen.
    """

    def __init__(
        self, annotation_file: str | os.PathLike, segmentation_folder: str | os.PathLike | None = None
    ) -> None:
        self.annotation_file = Path(annotation_file)
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f"COCO panoptic annotation file {self.annotation_file} does not exist")
        self.segmentation_folder = Path(segmentation_folder or self.annotation_file.with_suffix(""))
        if not self.segmentation_folder.is_dir():
            raise FileNotFoundError(
                f"COCO panoptic segmentations: {self.segmentation_folder} is not a directory (expected the "
                f"PNGs of {self.annotation_file.name} there)"
            )
        content = json.loads(self.annotation_file.read_text())
        self.isthing = {c["id"]: bool(c["isthing"]) for c in content["categories"]}
        self.ground_truth = {a["image_id"]: a for a in content["annotations"]}
        self.reset()

    def reset(self) -> None:
        self._stats: dict[int, dict[int, np.ndarray]] = {}

    def update(
        self, image_id: int, segmentation: np.ndarray | torch.Tensor, segments_info: list[dict]
    ) -> None:
        """Score one image's prediction: ``segmentation`` [H, W] segment ids at the file's size, 0 = none."""
        image_id = int(image_id)
        if image_id not in self.ground_truth:
            raise KeyError(f"{self.annotation_file}: no annotation for image {image_id}")
        annotation = self.ground_truth[image_id]
        gt = read_segmentation(self.segmentation_folder / annotation["file_name"])
        self._stats[image_id] = pq_image_stats(
            gt, annotation["segments_info"], segmentation, segments_info, self.isthing
        )

    def compute(self) -> dict[str, float]:
        per_image = self._stats
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[dict] = [{} for _ in range(dist.get_world_size())]
            dist.all_gather_object(parts, self._stats)
            per_image = {}
            for part in parts:
                for image_id, stats in part.items():
                    per_image.setdefault(image_id, stats)
        total: dict[int, np.ndarray] = {}
        for stats in per_image.values():
            for category, values in stats.items():
                total[category] = total.get(category, np.zeros(4)) + values
        return pq_summary(total, self.isthing)


def pq_compute(
    gt_json: str | os.PathLike,
    pred_json: str | os.PathLike,
    gt_folder: str | os.PathLike | None = None,
    pred_folder: str | os.PathLike | None = None,
) -> dict[str, float]:
    """PQ of a prediction file pair in the COCO panoptic format against the ground truth pair (panopticapi's
    ``pq_compute`` signature): the images are those of the prediction file."""
    evaluator = PanopticEvaluator(gt_json, gt_folder)
    pred_json = Path(pred_json)
    pred_folder = Path(pred_folder or pred_json.with_suffix(""))
    for annotation in json.loads(pred_json.read_text())["annotations"]:
        segmentation = read_segmentation(pred_folder / annotation["file_name"])
        evaluator.update(annotation["image_id"], segmentation, annotation["segments_info"])
    return evaluator.compute()
