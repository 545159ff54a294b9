"""DeiT's distilled ViT against timm's VisionTransformerDistilled (the same model as facebookresearch/deit
models.py DistilledVisionTransformer): key names, strict loading of timm and official-format files, both
heads in training and their mean in eval, parameter counts of the presets, initialisation."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.deit import VisionTransformerDistilled

from tests.numerics import assert_close_to_scale
from vtrain.models import create_model
from vtrain.models.deit import DistilledVisionTransformer

# 32 x 32 images, 8 x 8 patches -> 16 patch tokens + class and distillation tokens
SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, so that no parameter (zero token, zero bias) is inert in the comparison."""
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            param.normal_(1.0, 0.1)
        else:
            param.normal_(0.0, 0.2)
    return model


def _timm_small() -> VisionTransformerDistilled:
    theirs = _randomize(VisionTransformerDistilled(**SMALL))
    theirs.set_distilled_training(True)  # timm returns the mean in training too unless told otherwise
    return theirs


@pytest.mark.parametrize("wrapped", [False, True], ids=["timm-state-dict", "official-deit-pth"])
def test_timm_and_official_files_load_strict_and_give_timms_outputs(tmp_path, wrapped):
    theirs = _timm_small()
    path = tmp_path / "deit.pth"
    # the official deit_*_distilled_patch16_224-*.pth keep the state dict under 'model' (deit models.py:118)
    torch.save({"model": theirs.state_dict()} if wrapped else theirs.state_dict(), path)
    ours = create_model("deit_s16_distilled", pretrained=path, **SMALL)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert ours.pos_embed.shape == (1, 2 + 16, 64) and ours.num_prefix_tokens == 2
    x = torch.randn(3, 3, 32, 32)
    ours.train()
    theirs.train()
    with torch.no_grad():
        logits, logits_dist = ours(x)
        expected, expected_dist = theirs(x)
    assert_close_to_scale(logits, expected)
    assert_close_to_scale(logits_dist, expected_dist)
    assert not torch.allclose(logits, logits_dist)  # two heads, two answers
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        mean = ours(x)
        assert_close_to_scale(mean, theirs(x))
        assert_close_to_scale(mean, (logits + logits_dist) / 2)
        features = ours.forward_head(ours.forward_features(x), pre_logits=True)
        assert_close_to_scale(features, theirs.forward_head(theirs.forward_features(x), pre_logits=True))


@pytest.mark.parametrize(
    ("ours", "theirs", "count"),
    [
        ("deit_ti16_distilled", "deit_tiny_distilled_patch16_224", 5_910_800),
        ("deit_s16_distilled", "deit_small_distilled_patch16_224", 22_436_432),
        ("deit_b16_distilled", "deit_base_distilled_patch16_224", 87_338_192),
    ],
)
def test_presets_have_timms_parameters(ours, theirs, count):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = create_model(ours)
        reference = timm.create_model(theirs, pretrained=False)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert sum(p.numel() for p in model.parameters()) == count


def test_deit_initialisation_of_the_distillation_token_and_head():
    """deit models.py:28-30: dist_token and head_dist drawn as the class token and head (std 0.02), and
    no_weight_decay() stays timm 0.3.2's {pos_embed, cls_token}: the official run decays dist_token."""
    torch.manual_seed(0)
    model = DistilledVisionTransformer(img_size=32, patch_size=4, embed_dim=384, depth=1, num_heads=6)
    for name in ("dist_token", "head_dist.weight", "head.weight", "pos_embed"):
        std = model.get_parameter(name).std().item()
        assert abs(std - 0.02) < 0.003, (name, std)
    assert torch.count_nonzero(model.head_dist.bias) == 0
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    jax = DistilledVisionTransformer(weight_init="jax", **SMALL)
    assert torch.count_nonzero(jax.head_dist.weight) == 0 and jax.dist_token.std() > 0


def test_set_img_size_keeps_both_prefix_tokens():
    model = _randomize(DistilledVisionTransformer(**SMALL))
    prefix = model.pos_embed[:, :2].detach().clone()
    model.set_img_size(48)
    assert model.pos_embed.shape == (1, 2 + 36, 64)
    assert torch.equal(model.pos_embed[:, :2], prefix)
    assert model.eval()(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_only_class_token_pooling():
    with pytest.raises(ValueError, match="global_pool must be 'token'"):
        DistilledVisionTransformer(global_pool="avg", **SMALL)
