"""Callbacks the configs use besides Lightning's own."""

from __future__ import annotations

import pytorch_lightning as L
from pytorch_lightning.callbacks import ModelCheckpoint as _LightningModelCheckpoint


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ModelCheckpoint, except that `last.ckpt` is rewritten at every save point.

    Since Lightning 2.5 `save_last=True` writes `last.ckpt` only when a top-k checkpoint was written at the
    same step, so after an epoch that did not improve the monitored metric `last.ckpt` is stale and a
    resumed run would repeat work. Resuming needs the latest state, always.
    """

    def _save_last_if_stale(self, trainer: L.Trainer) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(
            trainer
        ):
            self._save_last_if_stale(trainer)
