"""Instance segmentation and detection with torchvision's two-stage detectors (Mask R-CNN / Faster R-CNN,
with or without the FPT): the detector's own losses for training, COCO box AP and mask AP by COCOeval
against the annotation file for evaluation, and pictures of the predicted boxes and masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as L
import torch
from pycocotools import mask as mask_utils
from torch import nn
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, save_image

from vtrain.metrics.coco import CocoEvaluator, to_coco_results
from vtrain.tasks.common import OptimizerFactory, SchedulerFactory, configure_optimizers, label_names

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]


class CocoMaskEvaluator(CocoEvaluator):
    """``CocoEvaluator`` for COCOeval's "segm": detections carry ``masks`` [N, 1, H, W] (probabilities or
    binary, at the image's size), binarised at ``threshold`` and stored as RLE."""

    def __init__(self, annotation_file, backend: str = "pycocotools", threshold: float = 0.5) -> None:
        super().__init__(annotation_file, backend=backend, iou_type="segm")
        self.threshold = threshold

    def update(self, detections) -> None:
        for det in detections:
            image_id = int(det["image_id"])
            records = to_coco_results(image_id, det["boxes"], det["scores"], det["labels"])
            binary = (det["masks"][:, 0] >= self.threshold).cpu().numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
            for record, rle in zip(records, rles, strict=True):
                record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            self._results[image_id] = records


class InstanceSegmentationTask(L.LightningModule):
    """Trains a torchvision detector: ``model(images, targets) -> dict of losses`` in training mode,
    ``model(images) -> per image {"boxes", "labels", "scores"[, "masks"]}`` in eval mode.

    Args:
        model: the detector (``vtrain.models.fpt.build_rcnn``); checkpoints store it under ``model.``.
        optimizer: ``functools.partial`` of a torch optimizer, called with parameter groups.
        scheduler: optional per-step schedule factory ``(optimizer, total_steps, steps_per_epoch)``.
        weight_decay: on weights; biases and norm parameters get none (Detectron's recipe decays all but
            norms; the difference is small).
        backbone_lr: learning rate of the ResNet (``backbone.body``); None: the optimizer's.
        eval_backend: COCOeval implementation, "pycocotools" or "faster_coco_eval".
        masks: evaluate mask AP too (Mask R-CNN); False for Faster R-CNN.
        num_pictures: validation images drawn with their predictions each validation (0: none).
        picture_score: detections scored below this are not drawn.

    Logs ``{stage}/AP``, ``AP50`` ... (boxes) and ``{stage}/mask_AP``, ``mask_AP50`` ... (masks).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float = 1e-4,
        backbone_lr: float | None = None,
        eval_backend: str = "pycocotools",
        masks: bool = True,
        num_pictures: int = 4,
        picture_score: float = 0.5,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.weight_decay, self.backbone_lr = weight_decay, backbone_lr
        self.eval_backend, self.masks = eval_backend, masks
        self.num_pictures, self.picture_score = num_pictures, picture_score
        self.box_evaluator: CocoEvaluator | None = None
        self.mask_evaluator: CocoMaskEvaluator | None = None

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.model(images)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        targets = [{k: v for k, v in t.items() if k in ("boxes", "labels", "masks")} for t in targets]
        losses = self.model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}")
        n = len(images)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True, batch_size=n)
        return loss

    def _start_evaluation(self, stage: str) -> None:
        """COCO box / mask evaluators on the annotation file of ``stage``'s images ("val" / "test")."""
        annotation_file = getattr(self.trainer.datamodule, f"{stage}_annotation_file", None)
        if annotation_file is None:
            raise ValueError(
                "InstanceSegmentationTask evaluates against a COCO annotation file: the data module must "
                f"expose `{stage}_annotation_file`"
            )
        if self.box_evaluator is None or self.box_evaluator.annotation_file != Path(annotation_file):
            self.box_evaluator = CocoEvaluator(annotation_file, backend=self.eval_backend)
            self.mask_evaluator = CocoMaskEvaluator(annotation_file, backend=self.eval_backend)
        self.box_evaluator.reset()
        self.mask_evaluator.reset()

    def _evaluate(self, batch: Batch, batch_idx: int, stage: str) -> None:
        images, targets = batch
        detections = self.model(images)
        records = [{"image_id": int(t["image_id"]), **d} for t, d in zip(targets, detections, strict=True)]
        self.box_evaluator.update(records)
        if self.masks:
            self.mask_evaluator.update(records)
        if stage == "val" and batch_idx == 0 and self.num_pictures and self.trainer.is_global_zero:
            self._draw(images, detections)

    def _finish_evaluation(self, stage: str) -> None:
        evaluators = [("", self.box_evaluator)] + ([("mask_", self.mask_evaluator)] if self.masks else [])
        for prefix, evaluator in evaluators:
            for name, value in evaluator.compute().items():
                self.log(f"{stage}/{prefix}{name}", value, prog_bar=name == "AP", rank_zero_only=False)

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation("val")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    @torch.no_grad()
    def _draw(self, images: list[torch.Tensor], detections: list[dict]) -> None:
        """Boxes and masks (score >= picture_score) on the first validation images, one PNG grid under
        ``<run dir>/pictures/`` and, where the logger takes images, in the logger."""
        pictures = []
        for image, det in list(zip(images, detections, strict=True))[: self.num_pictures]:
            keep = det["scores"] >= self.picture_score
            drawn = (image.clamp(0, 1) * 255).to(torch.uint8).cpu()
            if "masks" in det and keep.any():
                drawn = draw_segmentation_masks(drawn, det["masks"][keep, 0].cpu() >= 0.5, alpha=0.5)
            labels = label_names(self, det["labels"][keep].tolist())
            drawn = draw_bounding_boxes(drawn, det["boxes"][keep].cpu(), labels, colors="red", width=2)
            pictures.append(drawn.float() / 255)
        if not pictures:
            return
        height, width = max(p.shape[1] for p in pictures), max(p.shape[2] for p in pictures)
        grid = torch.stack(
            [nn.functional.pad(p, (0, width - p.shape[2], 0, height - p.shape[1])) for p in pictures]
        )
        out = Path(self.trainer.default_root_dir) / "pictures" / f"val_step{self.global_step:07d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, out, nrow=len(pictures))
        for logger in self.trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(logger, "log_image"):
                logger.log_image("val/predictions", [str(out)], step=self.global_step)
            elif hasattr(experiment, "add_images"):
                experiment.add_images("val/predictions", grid, self.global_step)

    def param_groups(self) -> list[dict]:
        """Weight decay on weights only (not biases, norms); the ResNet at ``backbone_lr`` when set."""
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                key = (name.startswith("backbone.body."), param.ndim > 1)
                groups.setdefault(key, []).append(param)
        out = []
        for (in_backbone, decayed), params in groups.items():
            group = {"params": params, "weight_decay": self.weight_decay if decayed else 0.0}
            if in_backbone and self.backbone_lr is not None:
                group["lr"] = self.backbone_lr
            out.append(group)
        return out

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizers(self, self.param_groups(), self.optimizer_factory, self.scheduler_factory)
