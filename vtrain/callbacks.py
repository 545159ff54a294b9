"""Callbacks the configs use besides Lightning's own."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import pytorch_lightning as L
import torch
import torch.distributed as dist
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from pytorch_lightning.callbacks import ModelCheckpoint as _LightningModelCheckpoint

from vtrain.io import check_writable, remove_stale_temporaries

log = logging.getLogger(__name__)


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ModelCheckpoint, except that `last.ckpt` is rewritten at every save point, and also
    every `save_last_every_n_steps` optimizer steps in the middle of an epoch, and that the checkpoint
    directory is checked writable (and cleared of a killed writer's temporaries) before training.

    Since Lightning 2.5 `save_last=True` writes `last.ckpt` only when a top-k checkpoint was written at the
    same step, so after an epoch that did not improve the monitored metric `last.ckpt` is stale and a
    resumed run would repeat work. Resuming needs the latest state, always. The mid-epoch saves bound the
    work a preempted job loses; they do not touch the top-k checkpoints, whose metric is a validation one.
    """

    def __init__(self, *args: Any, save_last_every_n_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if save_last_every_n_steps is not None and save_last_every_n_steps < 1:
            raise ValueError(f"save_last_every_n_steps must be >= 1 or None, got {save_last_every_n_steps}")
        self.save_last_every_n_steps = save_last_every_n_steps

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit" or not self.dirpath or not _is_local_file_protocol(self.dirpath):
            return
        # only rank 0 writes checkpoints; every rank raises, so that none waits for it at a barrier
        problem = None
        if trainer.is_global_zero:
            try:
                check_writable(self.dirpath, "checkpoint directory")
            except OSError as e:
                problem = e
            else:
                for path in remove_stale_temporaries(self.dirpath):
                    log.info("removed %s, left by a checkpoint writer that was killed", path)
        problem = trainer.strategy.broadcast(problem)
        if problem is not None:
            raise problem

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        n = self.save_last_every_n_steps
        if (
            n
            and self.save_last
            and trainer.global_step % n == 0
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            self._save_last_if_stale(trainer)

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


class ExactResume(L.Callback):
    """What a run resumed from a mid-epoch checkpoint needs, beyond Lightning's own state, to continue
    exactly as the run that was never interrupted.

    * Random states: the Python, NumPy and torch (CPU and CUDA) generators of every rank are saved in each
      checkpoint and put back just before the first training batch after the restore (not when the
      checkpoint is read: setting up the loaders and the sanity validation happen in between), so
      dropout, drop path, Mixup / CutMix continue where they were. The data pipeline does not draw from
      them (see :mod:`vtrain.data.sampler`).
    * The train loader's position: Lightning stores a ``StatefulDataLoader``'s state in checkpoints, but
      drops it on resume when ``configure_optimizers`` has asked for ``trainer.estimated_stepping_batches``
      (which builds the loader before the restore; Lightning issue #20550, open in 2.6). Every vtrain task
      asks for it, to size its schedule, so the pending state is loaded here at the start of training and
      the loader iterated anew, after setting the sampler's epoch.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @staticmethod
    def _capture() -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def _apply(state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = self._capture()
        if dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)  # every rank dumps the checkpoint, rank 0 writes it
        else:
            states = [state]
        checkpoint["vtrain_random_state"] = states

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("vtrain_random_state")
        if not states:
            log.warning("the checkpoint has no random states: a resumed run will not repeat the original's")
            return
        if len(states) != trainer.world_size:
            log.warning(
                "the checkpoint holds random states of %d ranks, this run has %d: restoring rank 0's",
                len(states),
                trainer.world_size,
            )
        self._pending = states[trainer.global_rank] if len(states) == trainer.world_size else states[0]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit_loop = trainer.fit_loop
        if (
            not getattr(fit_loop, "_combined_loader_states_to_load", None)
            or fit_loop._combined_loader is None
        ):
            return  # nothing pending: a fresh run, or a Lightning that already restored the loader
        for loader in fit_loop._combined_loader.flattened:
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(fit_loop.epoch_progress.current.processed)
        fit_loop._load_combined_loader_states()
        iter(fit_loop._data_fetcher)  # the iterator made before the restore would start the epoch anew

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._pending is not None:
            self._apply(self._pending)
            self._pending = None
