"""ClassificationTask: parameter groups, Mixup / CutMix targets, metrics, and a loop that learns."""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as L
import torch
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from timm.optim import param_groups_layer_decay
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import vtrain
from tests.conftest import SMOKE
from vtrain.cli import run
from vtrain.tasks import ClassificationTask
from vtrain.tasks.classification import build_mixup
from vtrain.tasks.common import layer_decay_groups, weight_decay_groups


def test_weight_decay_skips_biases_norms_position_embedding_and_class_token():
    model = vtrain.create_model("vit_ti16", num_classes=10, img_size=32, patch_size=8, depth=2)
    decay, no_decay = weight_decay_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "head.bias"} <= skipped
    assert not {names[id(p)] for p in decay["params"]} & skipped
    assert "blocks.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def _official_lr_scale(name: str, depth: int, layer_decay: float) -> float:
    """MAE's param_groups_lrd (facebookresearch/mae util/lr_decay.py:23-25, :64-76 at efb2a80), written out:
    L = depth + 1 layers; cls_token, pos_embed and patch_embed at layer 0, blocks.i at i + 1, the rest at L;
    scale layer_decay ** (L - layer)."""
    num_layers = depth + 1
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        layer = 0
    elif name.startswith("blocks"):
        layer = int(name.split(".")[1]) + 1
    else:
        layer = num_layers
    return layer_decay ** (num_layers - layer)


def _per_parameter(model: nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g.get("lr_scale", 1.0), g["weight_decay"]) for g in groups for p in g["params"]}


def test_layer_decay_gives_each_block_the_lr_of_maes_param_groups_lrd():
    depth, decay = 4, 0.65
    model = vtrain.create_model("vit_ti16", num_classes=10, img_size=32, patch_size=8, depth=depth)
    ours = _per_parameter(model, layer_decay_groups(model, 0.05, decay))
    assert ours.keys() == {n for n, _ in model.named_parameters()}
    for name, param in model.named_parameters():
        exempt = param.ndim == 1 or name in ("pos_embed", "cls_token")  # main_finetune.py:283-285
        assert ours[name] == (pytest.approx(_official_lr_scale(name, depth, decay)), 0.0 if exempt else 0.05)
    assert ours["blocks.3.mlp.fc1.weight"][0] == pytest.approx(0.65)
    assert ours["patch_embed.proj.weight"][0] == pytest.approx(0.65**5) and ours["head.weight"][0] == 1.0
    # timm's implementation of the rule, on timm's ViT of the same layout, agrees parameter by parameter but
    # for the final norm, which timm 1.0 groups with the last block and MAE's code with the head
    theirs_model = TimmVisionTransformer(
        img_size=32, patch_size=8, embed_dim=192, depth=depth, num_heads=3, num_classes=10
    )
    groups = param_groups_layer_decay(
        theirs_model, 0.05, no_weight_decay_list=theirs_model.no_weight_decay(), layer_decay=decay
    )
    theirs = {
        k: v
        for k, v in _per_parameter(theirs_model, groups).items()
        if not k.startswith(("norm.", "fc_norm."))
    }
    assert theirs.keys() == {k for k in ours if not k.startswith("norm.")}
    assert _per_parameter(theirs_model, groups)["norm.weight"][0] == pytest.approx(decay)
    for name, (scale, weight_decay) in theirs.items():
        assert ours[name] == (pytest.approx(scale), weight_decay), name


def test_layer_decay_scales_each_groups_lr_in_the_optimizer():
    model = vtrain.create_model(
        "vit_ti16", num_classes=4, img_size=8, patch_size=4, embed_dim=32, depth=2, num_heads=2
    )
    task = ClassificationTask(
        model, num_classes=4, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), layer_decay=0.5
    )
    optimizer = task.configure_optimizers()["optimizer"]
    lrs = sorted({round(g["lr"], 12) for g in optimizer.param_groups})
    assert lrs == [1e-3 * 0.5**3, 1e-3 * 0.5**2, 1e-3 * 0.5, 1e-3]
    with pytest.raises(
        ValueError, match=r"maps parameters to layers \(a `layer_id\(name\)` method.*Linear has none"
    ):
        layer_decay_groups(nn.Linear(2, 2), 0.05, 0.65)
    with pytest.raises(ValueError, match=r"task.layer_decay must be in \(0, 1\] or null, found 1.5"):
        ClassificationTask(model, num_classes=4, optimizer=torch.optim.AdamW, layer_decay=1.5)


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
