"""`mode=flops`: torch's counter on models whose count is known by hand, and the mode on a tiny experiment
of every family."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vtrain.cli import run
from vtrain.models import create_model
from vtrain.modes.flops import OWN, count_flops


class LinearThenMatmul(nn.Module):
    """A Linear child and a parameter of its own used in its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.w = nn.Parameter(torch.ones(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) @ self.w


def test_a_multiply_add_counts_as_two_flops_per_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    report = count_flops(model, torch.zeros(1, 3, 8, 8))
    # conv: 4 x 6 x 6 outputs of 3 x 3 x 3 multiply-adds; linear: 2 outputs of 144 (biases are not counted)
    assert report.modules["0"].flops == 2 * 4 * 36 * 27
    assert report.modules["2"].flops == 2 * 2 * 144
    assert report.flops == 2 * (4 * 36 * 27 + 2 * 144)
    assert report.params == (4 * 27 + 4) + (144 * 2 + 2)
    assert OWN not in report.modules

    report = count_flops(LinearThenMatmul(), torch.zeros(1, 8))
    assert (report.modules["fc"].params, report.modules["fc"].flops) == (36, 2 * 32)
    assert (report.modules[OWN].params, report.modules[OWN].flops) == (12, 2 * 12)


def vit_macs(img: int, patch: int, dim: int, depth: int, mlp_ratio: float, classes: int) -> int:
    """Multiply-adds of a ViT forward by hand: patch projection, per block qkv + projection + MLP over the
    N = patches + 1 tokens and the two attention products (q k^T, attn v), the head on the class token."""
    patches = (img // patch) ** 2
    n = patches + 1
    block = n * dim * (3 * dim + dim + 2 * int(dim * mlp_ratio)) + 2 * n * n * dim
    return patches * (3 * patch * patch) * dim + depth * block + dim * classes


def test_a_vit_count_is_the_hand_computed_one_and_the_formula_gives_the_papers_vit_b16():
    model = create_model(
        "vit_ti16",
        num_classes=10,
        img_size=32,
        patch_size=4,
        embed_dim=96,
        depth=4,
        num_heads=3,
        mlp_ratio=2.0,
    ).eval()
    report = count_flops(model, torch.zeros(1, 3, 32, 32))
    assert report.flops == 2 * vit_macs(32, 4, 96, 4, 2.0, 10)
    # DeiT (Touvron et al. 2020) Table 1: ViT-B/16 at 224, 17.6 GFLOPs (multiply-adds)
    assert vit_macs(224, 16, 768, 12, 4.0, 1000) / 1e9 == pytest.approx(17.6, abs=0.05)


@pytest.mark.parametrize(
    ("experiment", "described"),
    [
        ("vit_cifar10_tiny", "images [1, 3, 32, 32]"),
        ("deit_distilled_tiny", "images [1, 3, 32, 32]"),
        ("lambda_tiny", "images [1, 3, 32, 32]"),
        ("detr_coco_tiny", "images [1, 3, 128, 200] and their padding mask [1, 128, 200]"),
        ("fpt_maskrcnn_tiny", "one image [3, 128, 200]"),
        ("fpt_tiny", "images [1, 3, 96, 192]"),
        ("igpt_tiny", "palette tokens [1, 256]"),
        ("mae_tiny", "images [1, 3, 64, 64]"),
        ("ttsr_tiny", "LR [1, 3, 24, 24] (x4: 96 x 96), reference [1, 3, 96, 96]"),
    ],
)
def test_mode_flops_runs_for_a_tiny_experiment_of_each_family(make_cfg, tmp_path, experiment, described):
    out = tmp_path / experiment
    run(make_cfg([f"experiment={experiment}", "mode=flops"], output_dir=out))
    document = json.loads((out / "flops.json").read_text())
    assert document["input"].startswith(described)
    assert document["flops"] > 0 and document["gmacs"] == pytest.approx(document["flops"] / 2e9)
    assert sum(m["params"] for m in document["modules"].values()) == document["params"]
    assert sum(m["flops"] for m in document["modules"].values()) == document["flops"]
    assert not (out / "checkpoints").exists()


def test_flops_image_size_sets_the_input(make_cfg, tmp_path):
    run(
        make_cfg(
            ["experiment=vit_cifar10_tiny", "mode=flops", "flops_image_size=[64,64]", "model.img_size=64"],
            output_dir=tmp_path,
        )
    )
    assert json.loads((tmp_path / "flops.json").read_text())["input"] == "images [1, 3, 64, 64]"


def test_a_detector_is_counted_at_its_test_scale_not_a_training_scale(make_cfg):
    from hydra.utils import instantiate

    from vtrain.modes.flops import input_size

    # the released FPT config trains at short sides 400 .. 1200 and tests at 1000 (max 1400)
    small = ["model.backbone_weights=scratch", "model.name=fpt_maskrcnn_tiny"]
    cfg = make_cfg(["experiment=fpt_maskrcnn_coco", *small])
    assert input_size(cfg, instantiate(cfg.model)) == (1000, 1400)
