"""The ViT recipe checks (tests/recipe_checks/vit.py) fail when the recipe item they stand for is changed,
so that a card row pointing at one cannot pass on a drifted config."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.recipe_checks import load_all
from vtrain.config import config_dir, register_resolvers


def _composed(experiment: str, *overrides: str):
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name="train", overrides=[f"experiment={experiment}", *overrides])
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("check", "experiment", "override", "message"),
    [
        ("vit_inception_crop_train", "vit_b16_cifar10", "data.recipe=finetune", "train pipeline"),
        ("vit_inception_crop_train", "vit_b16_imagenet", "data.recipe=imagenet", "crop area"),
        ("vit_whole_image_eval", "vit_b16_imagenet", "data.recipe=imagenet", "eval pipeline"),
        ("vit_no_ema", "vit_b16_imagenet_ft384", "callbacks=ema", "weight averaging"),
        ("vit_from_scratch", "vit_b16_imagenet", "model.pretrained=x.npz", "model.pretrained"),
        ("vit_sgd_momentum", "vit_b16_cifar10", "task.optimizer.momentum=0.0", None),
        ("vit_adam_betas", "vit_b16_imagenet", "task.optimizer._target_=torch.optim.Adam", "Adam"),
        ("vit_finetune_start", "vit_b16_cifar10", "model.representation_size=768", "pre-logits"),
    ],
)
def test_a_vit_check_fails_on_a_drifted_recipe(check, experiment, override, message):
    load_all()[check](_composed(experiment))  # holds on the experiment as shipped
    with pytest.raises(AssertionError, match=message):
        load_all()[check](_composed(experiment, override))
