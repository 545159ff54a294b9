"""Set-prediction object detection (DETR): Hungarian-matched losses for training, COCO box AP against the
annotation file for evaluation, and pictures of the predicted boxes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from torch import nn
from torchvision.utils import draw_bounding_boxes, save_image

from vtrain.metrics.coco import CocoEvaluator
from vtrain.tasks.common import (
    OptimizerFactory,
    SchedulerFactory,
    check_num_classes,
    configure_optimizers,
    label_names,
)

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]


class DetectionTask(L.LightningModule):
    """Trains a set-prediction detector.

    Args:
        model: `(images [B, 3, H, W], mask [B, H, W] True on padding) -> {"pred_logits", "pred_boxes",
            "aux_outputs"}`; checkpoints store it under the `model.` prefix.
        criterion: `(outputs, targets) -> dict of losses` with a `weight_dict` (DETR's SetCriterion).
        postprocess: `(outputs, target_sizes [B, 2] (h, w)) -> per image {"scores", "labels", "boxes"}` with
            boxes in pixels of the original image.
        optimizer: `functools.partial` of a torch optimizer, called with parameter groups.
        scheduler: optional per-step schedule factory `(optimizer, total_steps, steps_per_epoch)`.
        backbone_lr: learning rate of the parameters whose name contains "backbone" (DETR: 1e-5, ten
            times below the transformer's); None trains them at the optimizer's rate.
        weight_decay: applied to every parameter, as in the DETR recipe.
        eval_backend: COCOeval implementation, "pycocotools" or "faster_coco_eval".
        mean, std: the input normalisation, to draw the images back in colour.
        eval_unpadded: evaluate every image alone at its own size (as with one image per batch) while still
            loading batches: DETR's predictions change with the padding a batch adds (see docs/detr.md).
        num_pictures: validation images drawn with their predicted boxes each validation (0: none).
        picture_score: boxes scored below this are not drawn.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        postprocess: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        backbone_lr: float | None = 1e-5,
        weight_decay: float = 1e-4,
        eval_backend: str = "pycocotools",
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        eval_unpadded: bool = False,
        num_pictures: int = 4,
        picture_score: float = 0.5,
    ) -> None:
        super().__init__()
        self.model, self.criterion, self.postprocess = model, criterion, postprocess
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.backbone_lr, self.weight_decay = backbone_lr, weight_decay
        self.eval_backend = eval_backend
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)
        self.eval_unpadded = eval_unpadded
        self.num_pictures, self.picture_score = num_pictures, picture_score
        self.evaluator: CocoEvaluator | None = None

    def setup(self, stage: str) -> None:
        sizes = {
            "model.num_classes": getattr(self.model, "num_classes", None),
            "task.criterion.num_classes": getattr(self.criterion, "num_classes", None),
        }
        check_num_classes(self, sizes)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict:
        return self.model(images, mask)

    def _forward(self, images: torch.Tensor, mask: torch.Tensor, unpadded: bool) -> dict:
        """The model's outputs for a padded batch; with `unpadded`, each image goes through alone, cut to its
        own size, so that its predictions do not depend on what it was batched with."""
        if not unpadded:
            return self.model(images, mask)
        singles = []
        for image, image_mask in zip(images, mask, strict=True):
            h, w = int((~image_mask).sum(0).max()), int((~image_mask).sum(1).max())
            singles.append(self.model(image[None, :, :h, :w], image_mask[None, :h, :w]))
        return _concat_outputs(singles)

    def _losses(self, batch: Batch, stage: str) -> tuple[torch.Tensor, dict]:
        images, mask, targets = batch
        outputs = self._forward(images, mask, unpadded=stage != "train" and self.eval_unpadded)
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        loss = sum(losses[k] * w for k, w in weights.items() if k in losses)
        n = len(targets)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            sync_dist=not on_step,
            batch_size=n,
        )
        for key in ("loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error"):
            self.log(
                f"{stage}/{key}",
                losses[key],
                on_step=on_step,
                on_epoch=True,
                sync_dist=not on_step,
                batch_size=n,
            )
        return loss, outputs

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, _ = self._losses(batch, "train")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}")
        return loss

    def _start_evaluation(self, stage: str) -> None:
        """A COCO evaluator on the annotation file of ``stage``'s images ("val" / "test"): with a
        hold-out, validation and test read different files."""
        datamodule = self.trainer.datamodule
        annotation_file = getattr(datamodule, f"{stage}_annotation_file", None)
        if annotation_file is None:
            raise ValueError(
                "DetectionTask evaluates against a COCO annotation file: the data module must "
                f"expose `{stage}_annotation_file`"
            )
        if self.evaluator is None or self.evaluator.annotation_file != Path(annotation_file):
            self.evaluator = CocoEvaluator(annotation_file, backend=self.eval_backend)
        self.evaluator.reset()

    def _evaluate(self, batch: Batch, batch_idx: int, stage: str) -> None:
        _, outputs = self._losses(batch, stage)
        images, mask, targets = batch
        orig_sizes = torch.stack([torch.as_tensor(t["orig_size"], device=self.device) for t in targets])
        detections = self.postprocess(outputs, orig_sizes)
        self.evaluator.update(
            {"image_id": int(t["image_id"]), **d} for t, d in zip(targets, detections, strict=True)
        )
        if stage == "val" and batch_idx == 0 and self.num_pictures and self.trainer.is_global_zero:
            self._draw(images, mask, targets, outputs)

    def _finish_evaluation(self, stage: str) -> None:
        stats = self.evaluator.compute()  # gathered over ranks: every rank gets the same numbers
        for name, value in stats.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "AP", rank_zero_only=False)

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
    def _draw(self, images: torch.Tensor, mask: torch.Tensor, targets: list[dict], outputs: dict) -> None:
        """Predicted boxes (score >= picture_score) on the first validation images, as one PNG grid under
        `<run dir>/pictures/` and, where the logger takes images, in the logger."""
        pictures = []
        for i in range(min(self.num_pictures, len(targets))):
            h, w = (~mask[i]).sum(0).max().item(), (~mask[i]).sum(1).max().item()
            image = (images[i, :, :h, :w] * self.std + self.mean).clamp(0, 1)
            size = torch.tensor([[h, w]], device=self.device)
            single = {
                "pred_logits": outputs["pred_logits"][i : i + 1],
                "pred_boxes": outputs["pred_boxes"][i : i + 1],
            }
            det = self.postprocess(single, size)[0]
            keep = det["scores"] >= self.picture_score
            labels = label_names(self, det["labels"][keep].tolist())
            drawn = draw_bounding_boxes(
                (image * 255).to(torch.uint8).cpu(), det["boxes"][keep].cpu(), labels, colors="red", width=2
            )
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
        """The transformer and heads at the optimizer's LR, the (trainable part of the) backbone at
        `backbone_lr`; weight decay on everything, as in the DETR recipe."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        backbone = [p for n, p in named if "backbone" in n]
        rest = [p for n, p in named if "backbone" not in n]
        groups = [{"params": rest, "weight_decay": self.weight_decay}]
        if backbone:
            group = {"params": backbone, "weight_decay": self.weight_decay}
            if self.backbone_lr is not None:
                group["lr"] = self.backbone_lr
            groups.append(group)
        return groups

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizers(self, self.param_groups(), self.optimizer_factory, self.scheduler_factory)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip a fused optimizer's gradients where no gradient scaler is involved. Lightning refuses any
        optimizer that unscales inside its step (the fused AdamW of conf/task/detection.yaml) under every
        mixed precision, bf16-mixed included, which has no scaler: the gradients are the true ones and are
        clipped here. Under 16-mixed (a scaler) Lightning's own refusal stands."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if gradient_clip_val and scaler is None and getattr(optimizer, "_step_supports_amp_scaling", False):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if str(getattr(gradient_clip_algorithm, "value", gradient_clip_algorithm)) == "value":
                nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def _concat_outputs(outputs: list[dict]) -> dict:
    """Stack per-image DETR outputs (each with batch size 1) into one batch, auxiliary outputs included."""
    merged = {key: torch.cat([o[key] for o in outputs]) for key in ("pred_logits", "pred_boxes")}
    if "aux_outputs" in outputs[0]:
        merged["aux_outputs"] = [
            {
                key: torch.cat([o["aux_outputs"][i][key] for o in outputs])
                for key in ("pred_logits", "pred_boxes")
            }
            for i in range(len(outputs[0]["aux_outputs"]))
        ]
    return merged
