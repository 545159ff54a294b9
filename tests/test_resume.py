"""Exact resumption: a run SIGKILLed in the middle of an epoch and resumed with `ckpt_path=last` ends with
the same weights, optimizer and scheduler state and evaluation metrics, bit for bit, as the run that was
never interrupted."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as L
import torch

from tests.conftest import run_cli
from vtrain.checkpoint import load_checkpoint


class KillAtStep(L.Callback):
    """SIGKILLs its own process when training is about to run optimizer step `step` (global_step == step):
    no clean-up, no atexit, as a preempted or OOM-killed job dies."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


# ViT on the tiny CIFAR set with every source of randomness switched on: random crops and flips in the
# data, dropout, drop path and Mixup / CutMix in the model and task. 2 epochs of 6 steps each; last.ckpt
# after every step.
RUN = [
    "experiment=vit_cifar10_tiny",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "callbacks.model_checkpoint.save_last_every_n_steps=1",
    "data.batch_size=16",
    "data.num_workers=0",
    "data.hflip=true",
    "model.depth=2",
    "model.drop_rate=0.1",
    "model.drop_path_rate=0.1",
    "+task.mixup={mixup_alpha: 0.8, cutmix_alpha: 1.0}",
    "logger=csv",
    # a metrics.csv row at every step, written at once: the killed run leaves rows logged after its
    # checkpoint
    "trainer.log_every_n_steps=1",
    "logger.csv.flush_logs_every_n_steps=1",
    "seed=3",
]


# DeiT's data pipeline on the same run: repeated augmentation (3 copies) and timm's RandAugment and random
# erasing, which draw from Python's `random`, NumPy and torch
DEIT_DATA = [
    "data.repeated_aug=3",
    "data.recipe=timm",
    "data.timm_train={auto_augment: rand-m9-mstd0.5-inc1, re_prob: 0.25, re_mode: pixel, re_count: 1}",
]


def _final_state(run_dir: Path) -> tuple[dict, dict]:
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    return ckpt, json.loads((run_dir / "metrics.json").read_text())


def _logged_per_step(run_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """(step, value) of every row of metrics.csv, by column, for the per-step columns (loss, LR)."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c == "train/loss_step" or c.startswith("lr-")]
    return {c: [(int(r["step"]), r[c]) for r in rows if r[c]] for c in columns}


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"weights differ at {key}"
    for group_a, group_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for pid, state in group_a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, group_b["state"][pid][name]), f"optimizer {name} of {pid} differs"
    assert a["lr_schedulers"] == b["lr_schedulers"]


# DeiT's pipeline on the tiny ImageNet-layout set with data.decode=tensor: torchvision decodes the JPEGs in
# the workers and the crop and flip run on uint8 tensors, before timm's PIL steps
DEIT_TENSOR_DATA = ["data=imagenet_tiny", "data.image_size=32", "data.decode=tensor", *DEIT_DATA]


# "shards": the same run reading the tiny set from webdataset shards (data.format=shards), whose reader is a
# map-style data set under the same samplers
@pytest.mark.parametrize(
    "data, source",
    [([], "folders"), (DEIT_DATA, "folders"), ([], "shards"), (DEIT_TENSOR_DATA, "folders")],
    ids=["default", "deit", "shards", "deit_decode_tensor"],
)
@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(
    tmp_path, data_dir, num_workers, data, source, request
):
    shards = request.getfixturevalue("cifar10_tiny_shards") if source == "shards" else []
    common = [*RUN, *data, *shards, f"data.num_workers={num_workers}", f"paths.data_dir={data_dir}"]
    reference = tmp_path / "reference"
    run_cli([*common, f"hydra.run.dir={reference}"], cwd=tmp_path)

    interrupted = tmp_path / "interrupted"
    killer = ["+callbacks.killer._target_=tests.test_resume.KillAtStep", "+callbacks.killer.step=9"]
    with pytest.raises(AssertionError, match=r"failed \(-9\)"):
        run_cli([*common, *killer, f"hydra.run.dir={interrupted}"], cwd=tmp_path)
    assert load_checkpoint(interrupted / "checkpoints" / "last.ckpt")["global_step"] == 9  # mid epoch 2
    assert not (interrupted / "metrics.json").exists()

    run_cli([*common, "ckpt_path=last", f"hydra.run.dir={interrupted}"], cwd=tmp_path)

    ref_ckpt, ref_metrics = _final_state(reference)
    res_ckpt, res_metrics = _final_state(interrupted)
    _assert_same_training_state(ref_ckpt, res_ckpt)
    # Lightning does not checkpoint its running epoch means of values logged in training_step: after the
    # resume, train/loss_epoch of the interrupted epoch averages only the batches trained since. Every
    # other metric (validation, test, learning rate, train/acc1 from a torchmetrics object) must agree.
    epoch_means = {"train/loss", "train/loss_epoch"}
    assert (
        ref_metrics.keys() == res_metrics.keys() and "val/acc1" in ref_metrics and "test/acc1" in ref_metrics
    )
    assert {k: v for k, v in res_metrics.items() if k not in epoch_means} == {
        k: v for k, v in ref_metrics.items() if k not in epoch_means
    }
    # the resumed metrics.csv holds the whole history, each step once: the rows logged after the
    # checkpoint by the killed run are replaced by the resumed run's (equal) ones
    logged = _logged_per_step(interrupted)
    assert logged == _logged_per_step(reference)
    assert [step for step, _ in logged["train/loss_step"]] == list(range(12))
