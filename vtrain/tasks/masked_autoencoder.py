"""Masked-autoencoder pretraining (MAE): the reconstruction loss on the removed patches, a context-free
baseline beside it, and pictures of masked input / reconstruction / original.

``val/loss`` is the model's loss on the validation images, each masked by noise drawn from a generator
seeded with the batch index, so every evaluation scores the same masks. ``val/patch_mean_loss`` is the loss
of the trivial predictor that fills each removed patch with that patch's own mean value (of the targets:
with ``norm_pix_loss`` the targets are zero-mean, so this is the loss of predicting 0); a model that learned
something from the visible patches scores below it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from torch import nn
from torchvision.utils import save_image

from vtrain.tasks.common import OptimizerFactory, SchedulerFactory, configure_optimizers, weight_decay_groups

log = logging.getLogger(__name__)


class MaskedAutoencoderTask(L.LightningModule):
    """Pretrains a ``vtrain.models.mae.MaskedAutoencoder`` on batches ``(images [B, 3, H, W], labels)``; the
    labels are not used.

    Args:
        model: the autoencoder; ``model(images, noise=None, generator=None)`` returns (loss, pred, mask).
        optimizer: ``functools.partial`` of a torch optimizer, called with parameter groups.
        scheduler: optional factory ``(optimizer, total_steps, steps_per_epoch) -> LRScheduler``, per step.
        weight_decay: on every parameter of more than one dimension (the class and mask tokens too); biases
            and LayerNorms are exempt, as timm's ``add_weight_decay`` that the official main_pretrain.py:179
            calls.
        mean, std: the data's normalisation, to draw the pictures in colour.
        num_pictures: validation images drawn each validation epoch (0: none), as one PNG per epoch under
            ``<run dir>/pictures/``: rows of masked input, reconstruction and original. As the paper's
            Figure 2, the reconstruction is the model's output everywhere, the visible patches not pasted
            over it (no loss is computed on them, so they come out worse).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float = 0.05,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        num_pictures: int = 4,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.weight_decay, self.num_pictures = weight_decay, num_pictures
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model(images)

    def training_step(self, batch: tuple[torch.Tensor, Any], batch_idx: int) -> torch.Tensor:
        images = batch[0]
        loss, _, _ = self.model(images)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        return loss

    def patch_mean_loss(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The loss of filling each removed patch with its own mean target value."""
        target = self.model.targets(images)
        per_patch = target.var(dim=-1, unbiased=False)  # mean squared distance to the patch's mean
        return (per_patch * mask).sum() / mask.sum()

    def _evaluate(self, batch: tuple[torch.Tensor, Any], batch_idx: int, stage: str) -> None:
        images = batch[0]
        generator = torch.Generator(images.device).manual_seed(batch_idx)
        loss, pred, mask = self.model(images, generator=generator)
        n = len(images)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, prog_bar=True, batch_size=n)
        baseline = self.patch_mean_loss(images, mask)
        self.log(f"{stage}/patch_mean_loss", baseline, on_epoch=True, sync_dist=True, batch_size=n)
        if stage == "val" and batch_idx == 0 and self._draws():
            self.save_pictures(images, pred, mask)

    def validation_step(self, batch: tuple[torch.Tensor, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: tuple[torch.Tensor, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _draws(self) -> bool:
        trainer = self._trainer
        return (
            bool(self.num_pictures)
            and trainer is not None
            and not trainer.sanity_checking
            and (trainer.is_global_zero)
        )

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """The prediction [B, N, P * P * C] as normalised images [B, C, H, W]. With ``norm_pix_loss`` each
        predicted patch is mapped back to pixels with the mean and variance of the original patch."""
        if self.model.norm_pix_loss:
            patches = self.model.patchify(images)
            mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
            pred = pred * (var + 1.0e-6) ** 0.5 + mean
        return self.model.unpatchify(pred)

    @torch.no_grad()
    def picture_grid(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[3 * k, C, H, W] in [0, 1] for k = num_pictures images spread evenly over the batch (whose
        images are often sorted by class): masked inputs (removed patches grey), reconstructions,
        originals, one row each."""
        k = min(self.num_pictures, len(images))
        pick = torch.linspace(0, len(images) - 1, k, device=images.device).round().long()
        images, pred, mask = images[pick], pred[pick], mask[pick]
        p = self.model.patch_embed.patch_size[0]
        removed = self.model.unpatchify(mask[..., None].expand(-1, -1, p * p * images.shape[1]))

        def pixels(x: torch.Tensor) -> torch.Tensor:
            return (x * self.std + self.mean).clamp(0, 1)

        masked = torch.where(removed.bool(), torch.full_like(images, 0.5), pixels(images))
        return torch.cat([masked, pixels(self.reconstruct(images, pred)), pixels(images)])

    def save_pictures(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> Path:
        grid = self.picture_grid(images, pred, mask).float().cpu()
        out = Path(self.trainer.default_root_dir) / "pictures" / f"val_epoch{self.current_epoch:03d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, out, nrow=len(grid) // 3, padding=1, pad_value=1.0)
        for logger in self.trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(logger, "log_image"):  # wandb
                logger.log_image("val/reconstructions", [str(out)], step=self.global_step)
            elif hasattr(experiment, "add_images"):  # tensorboard
                experiment.add_images("val/reconstructions", grid, self.global_step)
        log.info("pictures: %s (masked input; reconstruction; original)", out)
        return out

    def configure_optimizers(self) -> dict[str, Any]:
        groups = weight_decay_groups(self.model, self.weight_decay)
        return configure_optimizers(self, groups, self.optimizer_factory, self.scheduler_factory)
