"""MAE fine-tuning and linear probing through the classification task: the probe trains its head only, the
mae_tiny_finetune experiment runs from an MAE file, and (slow) fine-tuning a pretrained mae_tiny beats the
same recipe from scratch on the tiny CIFAR-10-format set."""

from __future__ import annotations

import json
import time
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import SMOKE
from vtrain.cli import run
from vtrain.models import create_model
from vtrain.models.mae import MaskedAutoencoder
from vtrain.optim import LARS
from vtrain.tasks import ClassificationTask


def test_linear_probe_trains_the_head_only_and_its_batch_norm_statistics():
    torch.manual_seed(0)
    model = create_model(
        "mae_tiny_classifier", num_classes=10, img_size=32, global_pool="token", linear_probe=True,
        head_init_std=0.01,
    )  # fmt: skip
    task = ClassificationTask(model, num_classes=10, optimizer=partial(LARS, lr=0.5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = task.configure_optimizers()["optimizer"]
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(model.head[1].weight), id(model.head[1].bias)}
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(task(images), labels).backward()
        optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.0.running_mean", "head.0.running_var", "head.0.num_batches_tracked"} | {
        "head.1.weight", "head.1.bias"
    }  # fmt: skip


def test_mae_tiny_finetune_runs_from_an_mae_tiny_checkpoint(make_cfg, tmp_path):
    """A mae_tiny state dict (as a vtrain run saves it, under ``state_dict`` with ``model.``) fine-tuned for
    the smoke steps at CIFAR's own 32 x 32, which interpolates the 8 x 8 position grid to 4 x 4."""
    torch.manual_seed(0)
    mae = create_model("mae_tiny")
    path = tmp_path / "mae_tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in mae.state_dict().items()}}, path)
    out = tmp_path / "run"
    overrides = ["experiment=mae_tiny_finetune", f"model.pretrained={path}", "data.image_size=32", *SMOKE]
    run(make_cfg(overrides, output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc1"] <= 1.0 and metrics["test/loss"] > 0


def _accuracy(make_cfg, out, pretrained: str) -> tuple[float, float]:
    start = time.perf_counter()
    overrides = ["experiment=mae_tiny_finetune", f"model.pretrained={pretrained}", "~callbacks.progress_bar"]
    run(make_cfg(overrides, output_dir=out))
    return json.loads((out / "metrics.json").read_text())["test/acc1"], time.perf_counter() - start


@pytest.mark.slow
def test_fine_tuning_a_pretrained_mae_tiny_beats_the_same_recipe_from_scratch(make_cfg, tmp_path):
    """MAE's protocol at CPU size: mae_tiny_cifar10 pretrains on the tiny CIFAR-10-format set's training
    images (labels unused), then mae_tiny_finetune from its last checkpoint and from scratch, seed 0.
    Measured: held-out reconstruction loss 0.205 against the patch-mean's 0.995; test accuracy 0.63 from
    the MAE against 0.11 from scratch with the commands of docs/mae.md; in this test 0.57 against 0.09
    (7 min 41 s on 2 shared cores)."""
    pretrain = tmp_path / "pretrain"
    run(make_cfg(["experiment=mae_tiny_cifar10", "~callbacks.progress_bar"], output_dir=pretrain))
    metrics = json.loads((pretrain / "metrics.json").read_text())
    assert metrics["val/loss"] < 0.5 * metrics["val/patch_mean_loss"], metrics
    checkpoint = pretrain / "checkpoints" / "last.ckpt"
    assert isinstance(create_model("mae_tiny", pretrained=checkpoint), MaskedAutoencoder)
    from_mae, _ = _accuracy(make_cfg, tmp_path / "from_mae", str(checkpoint))
    from_scratch, _ = _accuracy(make_cfg, tmp_path / "from_scratch", "scratch")
    assert from_mae > 0.4 and from_mae > from_scratch + 0.25, (from_mae, from_scratch)
