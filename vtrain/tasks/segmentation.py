"""Semantic segmentation: per-pixel cross-entropy (label 255 ignored), mean IoU and per-class IoU from a
confusion matrix accumulated over the evaluation set (torchmetrics), whole-image or sliding-window
inference, and colour-coded overlays of the predictions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import save_image

from vtrain.tasks.common import (
    OptimizerFactory,
    SchedulerFactory,
    check_num_classes,
    configure_optimizers,
    weight_decay_groups,
)

Batch = tuple[torch.Tensor, torch.Tensor]


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class IoU ``tp / (tp + fp + fn)`` [K] from a confusion matrix [K, K] (rows: target, columns:
    prediction); NaN for a class that is neither in the targets nor in the predictions."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


@torch.no_grad()
def sliding_window_logits(
    model: nn.Module, images: torch.Tensor, window: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Logits [B, K, H, W] of ``images`` [B, 3, H, W] from overlapping ``window`` crops placed every
    ``stride`` pixels (the last crop flush with the border), averaged where they overlap. Images smaller
    than the window are padded with zeros for the model and the padding is cut off again."""
    b, _, height, width = images.shape
    win_h, win_w = window
    pad_h, pad_w = max(0, win_h - height), max(0, win_w - width)
    padded = F.pad(images, (0, pad_w, 0, pad_h))
    full_h, full_w = padded.shape[-2:]

    def starts(size: int, win: int, step: int) -> list[int]:
        last = size - win
        return sorted({*range(0, last, step), last})

    total, count = None, padded.new_zeros(1, 1, full_h, full_w)
    for top in starts(full_h, win_h, stride[0]):
        for left in starts(full_w, win_w, stride[1]):
            logits = model(padded[..., top : top + win_h, left : left + win_w])
            if total is None:
                total = padded.new_zeros(b, logits.shape[1], full_h, full_w)
            total[..., top : top + win_h, left : left + win_w] += logits
            count[..., top : top + win_h, left : left + win_w] += 1
    return (total / count)[..., :height, :width]


def colorize(labels: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Labels [H, W] (255 = ignore, drawn black) -> an RGB image [3, H, W] in [0, 1] from ``palette``
    [K, 3] uint8."""
    colours = torch.cat([palette.float() / 255, palette.new_zeros(1, 3).float()])
    index = torch.where(labels < len(palette), labels, torch.full_like(labels, len(palette)))
    return colours[index].permute(2, 0, 1)


class SegmentationTask(L.LightningModule):
    """Trains a network ``images [B, 3, H, W] -> logits [B, K, H, W]`` on ``(images, labels [B, H, W])``.

    Args:
        model: the network; checkpoints store it under the ``model.`` prefix.
        optimizer: ``functools.partial`` of a torch optimizer, called with parameter groups.
        scheduler: optional per-step schedule factory ``(optimizer, total_steps, steps_per_epoch)``.
        num_classes: K.
        ignore_index: label left out of the loss and the metrics (Cityscapes: 255).
        weight_decay: on weights; biases and norm parameters get none.
        backbone_lr: learning rate of the ResNet (``backbone.body``) parameters; None: the optimizer's.
        sliding_window: (height, width) of sliding-window evaluation crops; None evaluates whole images.
        window_stride: step between windows, (height, width); None: two thirds of the window.
        mean, std: the input normalisation, to draw the images back in colour.
        num_pictures: validation images drawn with their labels and predictions each validation (0: none).

    Logs ``{stage}/loss``, ``{stage}/mIoU`` (mean over the classes present in targets or predictions),
    ``{stage}/acc`` (pixel accuracy) and ``{stage}/IoU/<class name>``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        num_classes: int = 19,
        ignore_index: int = 255,
        weight_decay: float = 1e-4,
        backbone_lr: float | None = None,
        sliding_window: tuple[int, int] | None = None,
        window_stride: tuple[int, int] | None = None,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        num_pictures: int = 4,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.weight_decay, self.backbone_lr = weight_decay, backbone_lr
        self.sliding_window = tuple(sliding_window) if sliding_window is not None else None
        if self.sliding_window is not None and window_stride is None:
            window_stride = tuple(max(1, 2 * side // 3) for side in self.sliding_window)
        self.window_stride = tuple(window_stride) if window_stride is not None else None
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)
        self.num_pictures = num_pictures
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)

    def setup(self, stage: str) -> None:
        model_classes = getattr(self.model, "num_classes", None)
        check_num_classes(self, {"model.num_classes": model_classes, "task.num_classes": self.num_classes})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, ignore_index=self.ignore_index)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = self._loss(self.model(images), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        return loss

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Whole-image logits, or sliding-window ones when ``sliding_window`` is set."""
        if self.sliding_window is None:
            return self.model(images)
        return sliding_window_logits(self.model, images, self.sliding_window, self.window_stride)

    def _evaluate(self, batch: Batch, batch_idx: int, stage: str) -> None:
        images, labels = batch
        logits = self.predict_logits(images)
        loss = self._loss(logits, labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(images))
        predictions = logits.argmax(1)
        self.confusion.update(predictions, labels)
        if stage == "val" and batch_idx == 0 and self.num_pictures and self.trainer.is_global_zero:
            self._draw(images, labels, predictions)

    def _finish(self, stage: str) -> None:
        confusion = self.confusion.compute()  # synced over ranks
        self.confusion.reset()
        iou = iou_from_confusion(confusion)
        valid = ~iou.isnan()
        miou = iou[valid].mean() if valid.any() else torch.zeros((), dtype=iou.dtype)
        accuracy = confusion.diagonal().sum() / confusion.sum().clamp(min=1)
        self.log(f"{stage}/mIoU", miou.float(), prog_bar=True, rank_zero_only=False)
        self.log(f"{stage}/acc", accuracy.float(), rank_zero_only=False)
        names = self._class_names()
        for k in valid.nonzero().flatten().tolist():
            self.log(f"{stage}/IoU/{names[k]}", iou[k].float(), rank_zero_only=False)

    def _class_names(self) -> list[str]:
        names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None)
        return list(names) if names is not None else [str(k) for k in range(self.num_classes)]

    def _palette(self) -> torch.Tensor:
        palette = getattr(getattr(self.trainer, "datamodule", None), "palette", None)
        if palette is None:  # evenly spread hues
            generator = torch.Generator().manual_seed(0)
            return torch.randint(0, 256, (self.num_classes, 3), generator=generator, dtype=torch.uint8)
        return torch.tensor(palette, dtype=torch.uint8)

    def on_validation_epoch_start(self) -> None:
        self.confusion.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_start(self) -> None:
        self.confusion.reset()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    @torch.no_grad()
    def _draw(self, images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor) -> None:
        """For the first validation images, a row of [image, labels, prediction, prediction over the image
        (alpha 0.5)], colour-coded with the data's palette (ignored pixels black), as one PNG under
        ``<run dir>/pictures/`` and, where the logger takes images, in the logger."""
        palette = self._palette()
        tiles = []
        for i in range(min(self.num_pictures, len(images))):
            image = (images[i] * self.std + self.mean).clamp(0, 1).cpu()
            truth, predicted = colorize(labels[i].cpu(), palette), colorize(predictions[i].cpu(), palette)
            tiles += [image, truth, predicted, 0.5 * image + 0.5 * predicted]
        grid = torch.stack(tiles)
        out = Path(self.trainer.default_root_dir) / "pictures" / f"val_step{self.global_step:07d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, out, nrow=4)
        for logger in self.trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(logger, "log_image"):
                logger.log_image("val/segmentation", [str(out)], step=self.global_step)
            elif hasattr(experiment, "add_images"):
                experiment.add_images("val/segmentation", grid, self.global_step)

    def param_groups(self) -> list[dict]:
        """Weight decay on weights only; the ResNet at ``backbone_lr`` when it is set."""
        groups = weight_decay_groups(self.model, self.weight_decay)
        if self.backbone_lr is None:
            return groups
        backbone = {id(p) for n, p in self.model.named_parameters() if n.startswith("backbone.body.")}
        split = []
        for group in groups:
            for in_backbone in (False, True):
                params = [p for p in group["params"] if (id(p) in backbone) == in_backbone]
                if params:
                    extra = {"lr": self.backbone_lr} if in_backbone else {}
                    split.append({**group, "params": params, **extra})
        return split

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizers(self, self.param_groups(), self.optimizer_factory, self.scheduler_factory)
