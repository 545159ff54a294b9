"""The Trainer's checkpoint reader and writer (vtrain.checkpoint_io, wired in conf/trainer/default.yaml):
every trainer config uses it; a checkpoint that cannot be written stops the run at the first failed save,
naming the file, and an unwritable checkpoint directory stops it before training; a resumed checkpoint that
carries pickled code is refused with vtrain's message and its payload never runs."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytorch_lightning as L
import torch
from hydra.utils import instantiate
from pytorch_lightning.demos.boring_classes import BoringModel

from tests.test_checkpoint import CreatesFileWhenUnpickled, assert_refused, crafted_checkpoint
from vtrain.callbacks import ModelCheckpoint
from vtrain.checkpoint_io import AtomicCheckpointIO


class CountBatches(L.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args) -> None:
        self.batches += 1


@pytest.fixture
def trainer_from_config(make_cfg):
    """`trainer_from_config(*callbacks)`: vtrain's CPU trainer (conf/trainer/cpu.yaml), 2 steps, no logger."""

    def make(*callbacks: L.Callback, name: str = "cpu") -> L.Trainer:
        cfg = make_cfg([f"trainer={name}"])
        return instantiate(
            cfg.trainer,
            callbacks=list(callbacks),
            logger=False,
            max_steps=2,
            limit_val_batches=0,
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    return make


def _last_every_step(dirpath: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=dirpath, save_top_k=0, save_last=True, save_last_every_n_steps=1)


@pytest.mark.parametrize("name", ["cpu", "ddp_cpu", "smoke"])
def test_every_trainer_config_writes_and_reads_checkpoints_through_vtrain(trainer_from_config, name):
    assert isinstance(trainer_from_config(name=name).strategy.checkpoint_io, AtomicCheckpointIO)


def _chattr(flag: str, directory: Path) -> None:
    subprocess.run(["chattr", flag, str(directory)], check=True, capture_output=True)


@pytest.fixture
def require_chattr(tmp_path):
    """An immutable directory (chattr +i) refuses new files and renames with EPERM, also to root, for whom
    a chmod does not stop writes: the real failure of an unwritable directory. Skips where chattr +i is not
    allowed (no CAP_LINUX_IMMUTABLE, a file system without the flag)."""
    probe = tmp_path / "chattr-probe"
    probe.mkdir()
    try:
        _chattr("+i", probe)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"chattr +i is not possible in {tmp_path}")
    _chattr("-i", probe)


@contextmanager
def immutable(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    _chattr("+i", directory)
    try:
        yield directory
    finally:
        _chattr("-i", directory)


class MakeImmutableAtStart(L.Callback):
    """Makes the checkpoint directory unwritable once training has started (after the setup checks)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_train_start(self, *args) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _chattr("+i", self.directory)


def test_a_failed_save_stops_the_run_at_once_naming_the_file(trainer_from_config, tmp_path, require_chattr):
    """Lightning's writer drops this PermissionError: the run trains to the end and saves nothing."""
    ckpt_dir = tmp_path / "run" / "checkpoints"
    counter = CountBatches()
    trainer = trainer_from_config(_last_every_step(ckpt_dir), MakeImmutableAtStart(ckpt_dir), counter)
    try:
        with pytest.raises(PermissionError) as error:
            trainer.fit(BoringModel())
    finally:
        _chattr("-i", ckpt_dir)
    assert str(error.value).startswith(
        f"[Errno 1] checkpoint {ckpt_dir / 'last.ckpt'} could not be written: Operation not permitted: "
    )
    assert counter.batches == 1  # the first save, after the first step
    assert list(ckpt_dir.iterdir()) == []


def test_a_failed_rename_leaves_no_temporary_and_stops_the_run(trainer_from_config, tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "run" / "checkpoints"

    def refuse(source, target):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(
        PermissionError, match=r"checkpoint .*last\.ckpt could not be written: Permission denied"
    ):
        trainer_from_config(_last_every_step(ckpt_dir)).fit(BoringModel())
    assert list(ckpt_dir.iterdir()) == []


def test_an_unwritable_checkpoint_directory_fails_before_training(
    trainer_from_config, tmp_path, require_chattr
):
    (tmp_path / "run").write_text("a file where the run directory should be")
    ckpt_dir = tmp_path / "run" / "checkpoints"
    counter = CountBatches()
    with pytest.raises(NotADirectoryError) as error:
        trainer_from_config(_last_every_step(ckpt_dir), counter).fit(BoringModel())
    assert str(error.value) == (
        f"[Errno 20] checkpoint directory {ckpt_dir} is not writable: Not a directory: '{ckpt_dir}'"
    )
    assert counter.batches == 0

    ckpt_dir = tmp_path / "other" / "checkpoints"
    with (
        immutable(ckpt_dir),
        pytest.raises(PermissionError, match=rf"checkpoint directory {ckpt_dir} is not"),
    ):
        trainer_from_config(_last_every_step(ckpt_dir), counter).fit(BoringModel())
    assert counter.batches == 0


def test_resuming_from_a_file_with_pickled_code_is_refused(trainer_from_config, tmp_path):
    ckpt_dir = tmp_path / "run" / "checkpoints"
    trainer_from_config(_last_every_step(ckpt_dir)).fit(BoringModel())
    checkpoint = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    marker = tmp_path / "payload-ran"
    foreign = tmp_path / "foreign.ckpt"
    torch.save({**checkpoint, "callbacks": CreatesFileWhenUnpickled(marker)}, foreign)

    trainer = trainer_from_config(_last_every_step(tmp_path / "resumed" / "checkpoints"))
    with pytest.raises(ValueError) as error:
        trainer.fit(BoringModel(), ckpt_path=foreign)
    assert_refused(error, foreign, r"CreatesFileWhenUnpickled")
    assert not marker.exists(), "the payload ran"
    assert trainer.global_step == 0


def test_fsdp_resume_refuses_pickled_code_before_lightnings_unrestricted_unpickler(tmp_path, make_cfg):
    """Lightning's FSDP strategy reads full checkpoints with a plain pickle.Unpickler, which runs the
    payload; the strategy of conf/trainer/fsdp.yaml refuses the file first."""
    foreign, marker = crafted_checkpoint(tmp_path, CreatesFileWhenUnpickled, "foreign")
    strategy = instantiate(make_cfg(["trainer=fsdp"]).trainer.strategy)
    with pytest.raises(ValueError) as error:
        strategy.load_checkpoint(foreign)
    assert_refused(error, foreign, r"CreatesFileWhenUnpickled")
    assert not marker.exists(), "the payload ran"
