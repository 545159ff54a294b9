"""Image classification (ViT, DeiT, LambdaResNets, iGPT fine-tuning): cross-entropy, Mixup / CutMix, DeiT
distillation from a teacher, top-1 / top-5 accuracy synced across ranks."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from vtrain.tasks.common import (
    OptimizerFactory,
    SchedulerFactory,
    check_num_classes,
    configure_optimizers,
    layer_decay_groups,
    weight_decay_groups,
)
from vtrain.tasks.distillation import Distillation


def build_mixup(num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0):
    """Batch-level Mixup and / or CutMix (torchvision.transforms.v2); one of the two is picked per batch
    with equal probability when both alphas are set, and the pair is applied with probability `prob`.
    Returns None when both alphas are 0."""
    choices = []
    if mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not choices:
        return None
    mix = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
    return mix if prob >= 1.0 else v2.RandomApply([mix], p=prob)


class ClassificationTask(L.LightningModule):
    """Trains `model` (images [B, 3, H, W] -> logits [B, num_classes]) with `loss`.

    Args:
        model: the network, a plain `nn.Module`; checkpoints store it under the `model.` prefix.
        num_classes: size of the label space (1000 for ImageNet even on a subset of its classes).
        optimizer: `functools.partial` of a torch optimizer, called with parameter groups.
        scheduler: optional factory `(optimizer, total_steps, steps_per_epoch) -> LRScheduler`,
            stepped once per optimizer step.
        loss: training loss; accepts class indices or soft targets (Mixup). Default: cross-entropy.
        weight_decay: applied to weight matrices only (see `weight_decay_groups`).
        mixup: keyword arguments of `build_mixup` (mixup_alpha, cutmix_alpha, prob) or None.
        layer_decay: layer-wise LR decay for fine-tuning a ViT-style model (facebookresearch/mae
            FINETUNE.md:72, :91: 0.65 for ViT-B, 0.75 for L and H): of D blocks, block i (from 0) trains at
            `layer_decay ** (D - i)` times the LR, the embeddings at `layer_decay ** (D + 1)`, the final norm
            and head at the LR (see `layer_decay_groups`); None: one LR for all.
        distillation: DeiT's distillation for a model with a distillation token (`deit_*_distilled`),
            `{teacher: {source: timm | torchvision, arch, path, kwargs}, type: hard | soft, alpha, tau}`
            (see `vtrain.tasks.distillation.Distillation`); the teacher file is read when training starts
            (evaluation needs none). None: a distilled model's class head alone learns from the labels, as
            deit main.py's --distillation-type none.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        loss: nn.Module | None = None,
        weight_decay: float = 0.0,
        mixup: dict[str, float] | None = None,
        layer_decay: float | None = None,
        distillation: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.loss = loss if loss is not None else nn.CrossEntropyLoss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.weight_decay = weight_decay
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(
                f"ClassificationTask: task.layer_decay must be in (0, 1] or null, found {layer_decay}"
            )
        self.layer_decay = layer_decay
        self.mixup = build_mixup(num_classes, **mixup) if mixup else None
        self.distillation = Distillation.from_config(distillation) if distillation else None
        if self.distillation is not None and not hasattr(model, "head_dist"):
            raise ValueError(
                "task.distillation needs a model with a distillation token and head (a deit_*_distilled "
                f"preset such as model=deit_s16_distilled); {type(model).__name__} has no head_dist"
            )
        if self.distillation is None and hasattr(model, "head_dist"):
            # nothing reaches the distillation head without a teacher (deit main.py's --distillation-type
            # none); frozen, DDP does not wait for its gradients, which never come
            model.head_dist.requires_grad_(False)
        top5 = min(5, num_classes)
        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")

    def setup(self, stage: str) -> None:
        model_classes = getattr(self.model, "num_classes", None)
        check_num_classes(self, {"model.num_classes": model_classes, "task.num_classes": self.num_classes})
        if stage == "fit" and self.distillation is not None:
            self.distillation.load_teacher(self.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        outputs = self.model(images)
        # a distilled model (deit_*_distilled) gives (class head, distillation head) in training
        logits, logits_dist = outputs if isinstance(outputs, tuple) else (outputs, None)
        loss = self.loss(logits, targets)
        if self.distillation is not None:
            distillation_loss = self.distillation.distillation_term(
                logits_dist, self.distillation.teacher_logits(images)
            )
            self.log("train/loss_cls", loss, on_step=True, on_epoch=True, batch_size=len(labels))
            self.log(
                "train/loss_dist", distillation_loss, on_step=True, on_epoch=True, batch_size=len(labels)
            )
            loss = self.distillation.combine(loss, distillation_loss)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels))
        if self.mixup is None:  # accuracy against mixed targets means nothing
            self.train_acc1(logits.detach(), labels)
            self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        acc1, acc5 = getattr(self, f"{stage}_acc1"), getattr(self, f"{stage}_acc5")
        acc1(logits, labels)
        acc5(logits, labels)
        n = len(labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=n)
        self.log(f"{stage}/acc1", acc1, on_epoch=True, prog_bar=True, batch_size=n)
        self.log(f"{stage}/acc5", acc5, on_epoch=True, batch_size=n)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        if self.layer_decay is not None:
            groups = layer_decay_groups(self.model, self.weight_decay, self.layer_decay)
        else:
            groups = weight_decay_groups(self.model, self.weight_decay)
        return configure_optimizers(self, groups, self.optimizer_factory, self.scheduler_factory)
