"""ClassificationTask: parameter groups, Mixup / CutMix targets, metrics, and a loop that learns."""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import vtrain
from tests.conftest import SMOKE
from vtrain.cli import run
from vtrain.tasks import ClassificationTask
from vtrain.tasks.classification import build_mixup
from vtrain.tasks.common import weight_decay_groups


def test_weight_decay_skips_biases_norms_position_embedding_and_class_token():
    model = vtrain.create_model("vit_ti16", num_classes=10, img_size=32, patch_size=8, depth=2)
    decay, no_decay = weight_decay_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "head.bias"} <= skipped
    assert not {names[id(p)] for p in decay["params"]} & skipped
    assert "blocks.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_mixup_and_cutmix_give_soft_targets_that_sum_to_one():
    torch.manual_seed(0)
    mix = build_mixup(10, mixup_alpha=0.8, cutmix_alpha=1.0)
    images, targets = mix(torch.randn(8, 3, 16, 16), torch.arange(8))
    assert images.shape == (8, 3, 16, 16) and targets.shape == (8, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert (targets.max(1).values < 1).any()
    assert build_mixup(10) is None


def _blobs(n: int, seed: int) -> TensorDataset:
    """Four classes of 3x8x8 images, each a noisy copy of its class's pattern."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(4, 3, 8, 8, generator=g)
    g.manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    return TensorDataset(patterns[labels] + 0.5 * torch.randn(n, 3, 8, 8, generator=g), labels)


@pytest.mark.parametrize("mixup", [None, {"mixup_alpha": 0.2, "cutmix_alpha": 0.0}])
def test_task_learns_a_separable_problem(tmp_path, mixup):
    torch.manual_seed(0)
    model = vtrain.create_model(
        "vit_ti16", num_classes=4, img_size=8, patch_size=4, embed_dim=32, depth=2, num_heads=2
    )
    task = ClassificationTask(
        model, num_classes=4, optimizer=functools.partial(torch.optim.AdamW, lr=3e-3), mixup=mixup
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    val = DataLoader(_blobs(128, seed=2), batch_size=64)
    before = trainer.validate(task, val, verbose=False)[0]
    trainer.fit(task, DataLoader(_blobs(256, seed=1), batch_size=32, shuffle=True), val)
    after = trainer.validate(task, val, verbose=False)[0]
    assert after["val/loss"] < 0.5 * before["val/loss"]
    assert after["val/acc1"] > 0.9
    assert after["val/acc5"] == 1.0  # top-5 of 4 classes is capped at top-4


def test_non_finite_loss_stops_training_with_the_step():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    task = ClassificationTask(model, num_classes=4, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    images, labels = torch.full((2, 3, 8, 8), float("nan")), torch.tensor([0, 1])
    with pytest.raises(FloatingPointError, match="step"):
        task.training_step((images, labels), 0)


def test_a_model_head_that_disagrees_with_the_data_fails_at_setup_naming_both(make_cfg):
    expected = r"model\.num_classes=20, task\.num_classes=10, data\.num_classes=10"
    with pytest.raises(ValueError, match=expected):  # not a torchmetrics shape error after a step
        run(make_cfg(["experiment=vit_cifar10_tiny", *SMOKE, "model.num_classes=20"]))
