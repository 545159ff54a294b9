"""The MAE recipe checks (tests/recipe_checks/mae.py) fail when the recipe item they stand for is changed,
so that a card row pointing at one cannot pass on a drifted config."""

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
