"""The MAE recipe checks (tests/recipe_checks/mae.py, mae_finetune.py) fail when the recipe item they stand
for is changed, so that a card row pointing at one cannot pass on a drifted config."""

from __future__ import annotations

import pytest

from tests.recipe_checks import load_all
from tests.test_recipe_checks_vit import _composed


@pytest.mark.parametrize(
    ("check", "override"),
    [
        ("mae_model", "model.mask_ratio=0.6"),
        ("mae_model", "model.norm_pix_loss=false"),
        ("mae_model", "+model.decoder_depth=4"),
        ("mae_train_transform", "data.crop_scale=[0.08,1.0]"),
        ("mae_train_transform", "data.hflip=false"),
        ("mae_weight_decay", "task.weight_decay=0.1"),
        ("mae_lr_rule", "global_batch.lr_reference=512"),
        ("mae_lr_rule", "task.optimizer.lr=1.0e-3"),
        ("mae_schedule", "task.scheduler.warmup_epochs=20"),
        ("mae_schedule", "task.scheduler.min_lr_ratio=0.1"),
        ("mae_no_ema", "callbacks=ema"),
    ],
)
def test_an_mae_check_fails_on_a_drifted_recipe(check, override):
    load_all()[check](_composed("mae_vit_b16_imagenet"))  # holds on the experiment as shipped
    with pytest.raises(AssertionError):
        load_all()[check](_composed("mae_vit_b16_imagenet", override))


@pytest.mark.parametrize(
    ("experiment", "check", "override"),
    [
        ("mae_vit_b16_finetune", "mae_ft_model", "model.drop_path_rate=0.2"),
        ("mae_vit_b16_finetune", "mae_ft_model", "model.global_pool=token"),
        ("mae_vit_b16_finetune", "mae_ft_model", "model.head_init_std=0.02"),
        ("mae_vit_b16_finetune", "mae_ft_layer_decay", "task.layer_decay=0.75"),
        ("mae_vit_b16_finetune", "mae_ft_lr_rule", "task.optimizer.lr=1.0e-3"),
        ("mae_vit_b16_finetune", "mae_ft_lr_rule", "task.scheduler.min_lr_ratio=0.0"),
        ("mae_vit_b16_finetune", "mae_ft_schedule", "task.scheduler.warmup_epochs=10"),
        ("mae_vit_b16_finetune", "mae_ft_train_transform", "data.timm_train.re_prob=0.0"),
        ("mae_vit_b16_finetune", "mae_ft_eval_transform", "data.crop_pct=1.0"),
        ("mae_vit_b16_linprobe", "mae_probe_model", "model.linear_probe=false"),
        ("mae_vit_b16_linprobe", "mae_probe_model", "model.global_pool=avg"),
        ("mae_vit_b16_linprobe", "mae_probe_lars", "task.optimizer.trust_coefficient=0.01"),
        ("mae_vit_b16_linprobe", "mae_probe_lr_rule", "global_batch.paper=4096"),
        ("mae_vit_b16_linprobe", "mae_probe_schedule", "task.scheduler.warmup_epochs=5"),
        ("mae_vit_b16_linprobe", "mae_probe_train_transform", "data.crop_scale=[0.2,1.0]"),
    ],
)
def test_an_mae_finetune_check_fails_on_a_drifted_recipe(experiment, check, override):
    """Only the drifted config here: tests/test_recipes.py runs every check on the experiment as shipped."""
    with pytest.raises(AssertionError):
        load_all()[check](_composed(experiment, override))
