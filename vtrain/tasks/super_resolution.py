"""Reference-based super-resolution (TTSR): reconstruction, perceptual, transferal perceptual and WGAN-GP
losses with Lightning's manual optimisation (the critic steps ``gan_k`` times per generator step), a
warm-up of reconstruction-only epochs, validation on the official schedule (every N epochs counted after
the warm-up), PSNR / SSIM per reference level and side-by-side pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.aggregation import MeanMetric
from torchvision.utils import save_image

from vtrain.metrics.sr import sr_metrics
from vtrain.models.pretrained import optional_weights, require_weights
from vtrain.models.ttsr.losses import (
    PerceptualLoss,
    critic_loss,
    generator_adversarial_loss,
    reconstruction_loss,
    transferal_perceptual_loss,
)
from vtrain.models.ttsr.model import VGG19_EXPECTED
from vtrain.tasks.common import OptimizerFactory

Batch = dict[str, Any]
METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")


class SuperResolutionTask(L.LightningModule):
    """Trains a TTSR-style network ``model(lr, lr_up, ref, ref_down_up) -> (sr, S, T_lv3, T_lv2, T_lv1)``
    with ``model.texture_features(sr)`` and parameters split into ``LTE`` and the rest.

    Args:
        model: the network; checkpoints store it under the ``model.`` prefix.
        optimizer: ``functools.partial`` of the generator optimizer (paper: Adam (0.9, 0.999), 1e-4).
        lte_lr: learning rate of the texture extractor's parameters (paper: 1e-5); 0 freezes it (no
            gradient is computed through it then, which saves most of a CPU step).
        rec_weight, per_weight, tpl_weight, adv_weight: loss weights (TTSR: 1, 1e-2, 1e-2, 1e-3;
            TTSR-rec: 1, 0, 0, 0).
        warmup_epochs: first epochs trained with the reconstruction loss only (paper: 2).
        discriminator: the WGAN-GP critic, needed when ``adv_weight > 0``.
        discriminator_optimizer: ``functools.partial`` of its optimizer (paper: Adam (0, 0.9), 1e-4).
        gan_k: critic updates per generator update (paper: 2).
        gp_weight: gradient penalty weight (paper: 10).
        tpl_use_soft_attention, tpl_kind: transferal perceptual loss options (official: False, "l2").
        vgg_weights: torchvision VGG19 ImageNet file for the perceptual loss; required for training with
            ``per_weight > 0`` (``"scratch"``: a random VGG19), not for evaluation.
        lr_decay_epochs, lr_decay_gamma: multiply both learning rates of the generator by ``gamma`` every
            ``lr_decay_epochs`` epochs after the warm-up (official: no decay, None).
        val_every_epochs: validate after every ``val_every_epochs``-th epoch counted after the warm-up, as
            the official ``main.py`` does (``val_every`` 10 after 2 warm-up epochs: epochs 12, 22, ... 52);
            needs ``trainer.check_val_every_n_epoch=1``, which it then overrides epoch by epoch. None: the
            trainer's ``check_val_every_n_epoch`` decides.
        y_border, rgb_border: pixels cropped on each side for the Y and RGB metrics (paper: Y, 0).
        num_pictures: validation images saved side by side (bicubic, output, ground truth, reference)
            each validation, under ``<run dir>/pictures/`` and in the logger (0: none).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        lte_lr: float = 1e-5,
        rec_weight: float = 1.0,
        per_weight: float = 0.0,
        tpl_weight: float = 0.0,
        adv_weight: float = 0.0,
        warmup_epochs: int = 0,
        discriminator: nn.Module | None = None,
        discriminator_optimizer: OptimizerFactory | None = None,
        gan_k: int = 2,
        gp_weight: float = 10.0,
        tpl_use_soft_attention: bool = False,
        tpl_kind: str = "l2",
        vgg_weights: str | None = None,
        lr_decay_epochs: int | None = None,
        lr_decay_gamma: float = 0.5,
        val_every_epochs: int | None = None,
        y_border: int = 0,
        rgb_border: int = 4,
        num_pictures: int = 4,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        if adv_weight > 0 and (discriminator is None or discriminator_optimizer is None):
            raise ValueError("SuperResolutionTask: adv_weight > 0 needs a discriminator and its optimizer")
        self.model = model
        if lte_lr == 0:
            model.LTE.requires_grad_(False)
        self.optimizer_factory, self.lte_lr = optimizer, lte_lr
        self.rec_weight, self.per_weight, self.tpl_weight, self.adv_weight = (
            rec_weight,
            per_weight,
            tpl_weight,
            adv_weight,
        )
        self.warmup_epochs = warmup_epochs
        self.discriminator = discriminator if adv_weight > 0 else None
        self.discriminator_optimizer = discriminator_optimizer
        self.gan_k, self.gp_weight = gan_k, gp_weight
        self.tpl_use_soft_attention, self.tpl_kind = tpl_use_soft_attention, tpl_kind
        # The perceptual loss compares ImageNet VGG19 features: training requires the file (checked in
        # `setup`, so that evaluation, which never computes the loss, does not).
        self.vgg_weights = vgg_weights
        self.perceptual = PerceptualLoss(optional_weights(vgg_weights)) if per_weight > 0 else None
        self.lr_decay_epochs, self.lr_decay_gamma = lr_decay_epochs, lr_decay_gamma
        if val_every_epochs is not None and val_every_epochs < 1:
            raise ValueError(
                f"SuperResolutionTask: val_every_epochs must be >= 1 or None, got {val_every_epochs}"
            )
        self.val_every_epochs = val_every_epochs
        self.y_border, self.rgb_border = y_border, rgb_border
        self.num_pictures = num_pictures
        # running means of the evaluation metrics, keyed by logged name (created as levels appear)
        self._means: dict[str, MeanMetric] = {}

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.perceptual is not None:
            require_weights(self.vgg_weights, "task.vgg_weights", f"{VGG19_EXPECTED} for the perceptual loss")
        attached = self._trainer is not None and self.val_every_epochs is not None
        every = self.trainer.check_val_every_n_epoch if attached else 1
        if stage == "fit" and every != 1:
            raise ValueError(
                f"task.val_every_epochs={self.val_every_epochs} chooses the validation epochs: set "
                f"trainer.check_val_every_n_epoch=1 (found {every})"
            )

    def validates_after(self, epoch: int) -> bool:
        """Whether validation runs after (0-based) training epoch ``epoch`` under ``val_every_epochs``: the
        official trainer counts its ``val_every`` epochs after the warm-up (researchmm/TTSR main.py:42-47)."""
        after_warmup = epoch + 1 - self.warmup_epochs
        return after_warmup > 0 and after_warmup % self.val_every_epochs == 0

    def on_train_epoch_start(self) -> None:
        if self.val_every_epochs is None:
            return
        # Lightning validates after epoch e when (e + 1) % check_val_every_n_epoch == 0: 1 validates this
        # epoch, e + 2 skips it
        epoch = self.current_epoch
        self.trainer.check_val_every_n_epoch = 1 if self.validates_after(epoch) else epoch + 2

    def forward(self, batch: Batch) -> Any:
        """The model's output (``TTSROutput``) for a batch of ``lr``, ``lr_up``, ``ref``, ``ref_down_up``."""
        return self.model(batch["lr"], batch["lr_up"], batch["ref"], batch["ref_down_up"])

    def in_warmup(self) -> bool:
        return self.current_epoch < self.warmup_epochs

    def _optimizers(self) -> tuple[Any, Any | None]:
        optimizers = self.optimizers()
        if isinstance(optimizers, list):
            return optimizers[0], optimizers[1]
        return optimizers, None

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        opt_g, opt_d = self._optimizers()
        hr, n = batch["hr"], len(batch["hr"])
        out = self(batch)
        sr = out.sr
        losses = {"rec_loss": self.rec_weight * reconstruction_loss(sr, hr)}
        if not self.in_warmup():
            if self.perceptual is not None:
                losses["per_loss"] = self.per_weight * self.perceptual(sr, hr)
            if self.tpl_weight > 0:
                textures = self.model.texture_features(sr)
                tpl = transferal_perceptual_loss(
                    textures,
                    out.S,
                    out.T_lv3,
                    out.T_lv2,
                    out.T_lv1,
                    self.tpl_use_soft_attention,
                    self.tpl_kind,
                )
                losses["tpl_loss"] = self.tpl_weight * tpl
            if self.discriminator is not None:
                self.discriminator.requires_grad_(True)
                for _ in range(self.gan_k):
                    d_loss, penalty = critic_loss(self.discriminator, sr, hr, self.gp_weight)
                    opt_d.zero_grad(set_to_none=True)
                    self.manual_backward(d_loss)
                    opt_d.step()
                self.log("train/d_loss", d_loss.detach(), on_step=True, on_epoch=True, batch_size=n)
                self.log(
                    "train/gradient_penalty", penalty.detach(), on_step=True, on_epoch=True, batch_size=n
                )
                self.discriminator.requires_grad_(False)  # the generator's loss trains the generator only
                losses["adv_loss"] = self.adv_weight * generator_adversarial_loss(self.discriminator, sr)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}")
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_g.step()
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=True, batch_size=n)
        return loss.detach()

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is not None and not self.in_warmup():
            (schedulers[0] if isinstance(schedulers, list) else schedulers).step()

    def _accumulate(self, key: str, values: torch.Tensor) -> None:
        if key not in self._means:
            self._means[key] = MeanMetric().to(self.device)
        self._means[key].update(values.float())

    def _evaluate(self, batch: Batch, batch_idx: int, stage: str, dataloader_idx: int = 0) -> None:
        sr = self(batch).sr
        hr = batch["hr"]
        suffix = "" if stage == "val" else f"_ref{batch['ref_level'][0]}"
        for name, values in sr_metrics(sr, hr, self.y_border, self.rgb_border).items():
            self._accumulate(f"{stage}/{name}{suffix}", values)
        if dataloader_idx == 0:  # bicubic upsampling, the baseline to beat, once per image
            for name, values in sr_metrics(batch["lr_up"], hr, self.y_border, self.rgb_border).items():
                self._accumulate(f"{stage}/bicubic_{name}", values)
        if stage == "val" and batch_idx < self.num_pictures and self.trainer.is_global_zero:
            self._picture(batch, sr, batch_idx)

    def _log_means(self) -> None:
        """Per-image means of every metric, each reference level under its own name, logged once at the
        end so that every level reaches the results (several test loaders log different names)."""
        for key, mean in sorted(self._means.items()):
            self.log(key, mean.compute(), prog_bar=key == "val/psnr_y", add_dataloader_idx=False)
        self._means = {}

    def on_validation_epoch_start(self) -> None:
        self._means = {}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_means()

    def on_test_epoch_start(self) -> None:
        self._means = {}

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, batch_idx, "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._log_means()

    @torch.no_grad()
    def _picture(self, batch: Batch, sr: torch.Tensor, index: int) -> None:
        """Bicubic, output, ground truth and the reference (resized to the same height) side by side, as
        a PNG under ``<run dir>/pictures/`` and, where the logger takes images, in the logger."""
        hr = batch["hr"][0]
        ref = batch["ref"][:1]
        height = hr.shape[-2]
        width = max(1, round(ref.shape[-1] * height / ref.shape[-2]))
        ref = F.interpolate(ref, size=(height, width), mode="bilinear", align_corners=False)[0]
        row = torch.cat([batch["lr_up"][0], sr[0], hr, ref], dim=-1)
        row = ((row + 1) / 2).clamp(0, 1).float().cpu()
        name = batch["name"][0] if "name" in batch else str(index)
        out = Path(self.trainer.default_root_dir) / "pictures" / f"val_step{self.global_step:07d}_{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(row, out)
        tag = f"val/bicubic_output_gt_ref/{name}"
        for logger in self.trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(logger, "log_image"):
                logger.log_image(tag, [str(out)], step=self.global_step)
            elif hasattr(experiment, "add_image"):
                experiment.add_image(tag, row, self.global_step)

    def configure_optimizers(self) -> Any:
        lte = [p for p in self.model.LTE.parameters() if p.requires_grad]
        lte_ids = {id(p) for p in lte}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in lte_ids]
        groups = [{"params": rest}]
        if lte:
            groups.append({"params": lte, "lr": self.lte_lr})
        opt_g = self.optimizer_factory(groups)
        optimizers = [opt_g]
        if self.discriminator is not None:
            optimizers.append(self.discriminator_optimizer(self.discriminator.parameters()))
        if self.lr_decay_epochs is None:
            return optimizers
        scheduler = torch.optim.lr_scheduler.StepLR(opt_g, self.lr_decay_epochs, self.lr_decay_gamma)
        return optimizers, [scheduler]
