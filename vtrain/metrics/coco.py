"""COCO box AP the official way: detections as a COCO results list, scored by COCOeval against the
annotation file itself (so crowd regions, areas and ignored images are exactly the official ones)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist

# The 12 numbers COCOeval.summarize() prints for bbox, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("pycocotools", "faster_coco_eval")


def _coco_api(backend: str):
    """(COCO, COCOeval) classes of the backend."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError as err:
            raise ImportError("backend 'faster_coco_eval' needs `pip install faster-coco-eval`") from err
        return COCO, COCOeval_faster
    raise ValueError(f"backend must be one of {BACKENDS}, found {backend!r}")


def to_coco_results(
    image_id: int, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor
) -> list[dict]:
    """One image's detections (boxes [N, 4] absolute x1, y1, x2, y2 pixels; scores [N]; labels [N] category
    ids) as COCO result records with [x, y, w, h] boxes."""
    boxes = boxes.detach().float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    return [
        {"image_id": int(image_id), "category_id": int(label), "bbox": box, "score": float(score)}
        for box, score, label in zip(xywh, scores.tolist(), labels.tolist(), strict=True)
    ]


class CocoEvaluator:
    """Accumulates detections over an evaluation epoch and scores them with COCOeval.

    Args:
        annotation_file: the split's `instances_*.json`.
        backend: "pycocotools" (the reference) or "faster_coco_eval" (same numbers, faster C++).
        iou_type: "bbox".

    Under DDP every rank adds the detections of its images; `compute` gathers them on all ranks (images
    that a DistributedSampler repeated to even out the ranks are counted once) and evaluates over exactly
    the images that were seen, as the official DETR evaluation does.
    """

    def __init__(
        self, annotation_file: str | os.PathLike, backend: str = "pycocotools", iou_type: str = "bbox"
    ):
        self.annotation_file = Path(annotation_file)
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f"COCO annotation file {self.annotation_file} does not exist")
        self.backend, self.iou_type = backend, iou_type
        self._coco_cls, self._eval_cls = _coco_api(backend)
        self._gt = None
        self.reset()

    @property
    def ground_truth(self):
        """The annotation file loaded by the backend's COCO class (loaded once, quietly)."""
        if self._gt is None:
            with contextlib.redirect_stdout(io.StringIO()):
                self._gt = self._coco_cls(str(self.annotation_file))
        return self._gt

    def reset(self) -> None:
        self._results: dict[int, list[dict]] = {}

    def update(self, detections: Iterable[dict]) -> None:
        """`detections`: per image a dict with `image_id` and `boxes` (xyxy pixels), `scores`, `labels`."""
        for det in detections:
            image_id = int(det["image_id"])
            self._results[image_id] = to_coco_results(image_id, det["boxes"], det["scores"], det["labels"])

    def _gathered(self) -> dict[int, list[dict]]:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self._results
        parts: list[dict[int, list[dict]]] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(parts, self._results)
        merged: dict[int, list[dict]] = {}
        for part in parts:
            for image_id, records in part.items():
                merged.setdefault(image_id, records)
        return merged

    def compute(self) -> dict[str, float]:
        """COCOeval over the images seen so far: {"AP": ..., "AP50": ..., ...} in [0, 1]; -1 where COCOeval
        has nothing to score (no ground truth of that size)."""
        results = self._gathered()
        if not results:
            return {name: 0.0 for name in STAT_NAMES}
        records = [r for image_records in results.values() for r in image_records]
        gt = self.ground_truth
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(records) if records else self._coco_cls()
            evaluator = self._eval_cls(gt, dt, self.iou_type)
            evaluator.params.imgIds = sorted(results)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats, strict=False)}
