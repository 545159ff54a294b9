"""The Trainer's checkpoint reader and writer (``plugins`` in conf/trainer/default.yaml).

Every checkpoint Lightning writes (top-k, last.ckpt, the mid-epoch saves, ``trainer.save_checkpoint``, an
FSDP full state dict) and the file ``fit(ckpt_path=...)`` reads go through it. Lightning's own
``TorchCheckpointIO`` instead

* writes into a temporary in $TMPDIR and moves it (``fsspec`` transaction): with $TMPDIR on another file
  system the move is a copy over the target, so a kill leaves a truncated ``last.ckpt``, and a temporary
  as large as the checkpoint in $TMPDIR;
* drops a ``PermissionError`` on the floor (``lightning_fabric.utilities.cloud_io._atomic_save``): with an
  unwritable checkpoint directory a run trains to the end and saves nothing;
* reads resumed checkpoints with torch's message when a file carries pickled code, which advises switching
  the check off.

Lightning's FSDP strategy reads a full checkpoint on resume without the CheckpointIO, with an unrestricted
unpickler (``lightning_fabric.utilities.load._lazy_load``) that runs whatever code the file pickles; vtrain's
:class:`FSDPStrategy` (conf/trainer/fsdp.yaml) checks the file with ``load_checkpoint`` first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from pytorch_lightning.strategies import FSDPStrategy as _LightningFSDPStrategy

from vtrain.checkpoint import load_checkpoint
from vtrain.io import atomic_torch_save, os_error


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints with :func:`vtrain.io.atomic_torch_save` (a temporary in the destination
    directory, fsynced, then renamed) and raises on the first failed write, naming the file; reads them with
    :func:`vtrain.checkpoint.load_checkpoint` (``weights_only=True``, onto the CPU: Lightning moves the
    states to the device). Remote paths (``s3://``...) are left to Lightning's writer, whose object stores
    put a file whole."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as e:
            raise os_error(e, f"checkpoint {path} could not be written") from e

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(
                f"{path}: vtrain reads checkpoints with weights_only=True only (tensors and plain containers)"
            )
        if not _is_local_file_protocol(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return load_checkpoint(path)


class FSDPStrategy(_LightningFSDPStrategy):
    """Lightning's FSDPStrategy, except that a full (single-file) checkpoint to resume from is first read
    with :func:`vtrain.checkpoint.load_checkpoint` (``weights_only=True``, tensors memory-mapped, so the
    check reads little): a file that carries pickled code is refused before Lightning's own reader, which
    would run it."""

    def load_checkpoint(
        self, checkpoint_path: str | os.PathLike, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if Path(checkpoint_path).is_file():
            load_checkpoint(checkpoint_path, mmap=True)
        return super().load_checkpoint(checkpoint_path, weights_only)
