"""`mode=eval model.pretrained=FILE`: official weights (random values in each family's official layout)
evaluated on data in the official on-disk format, the numbers printed once and written to metrics.json."""

from __future__ import annotations

import json
import re
from argparse import Namespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import SMOKE
from tests.models.test_ttsr import official_keys as ttsr_official_keys
from tests.models.test_vit import _jax_vit_arrays
from vtrain.cli import run


def _evaluate(make_cfg, capsys, tmp_path, overrides: list[str]) -> tuple[dict, str]:
    out = tmp_path / "eval"
    run(make_cfg([*overrides, *SMOKE, "mode=eval"], output_dir=out))
    return json.loads((out / "metrics.json").read_text()), capsys.readouterr().out


def _printed_once(output: str, metric: str) -> bool:
    return len(re.findall(rf"(?m)^.*\b{re.escape(metric)}\s+│", output)) == 1


def test_official_detr_pth_on_coco_format_data(make_cfg, capsys, tmp_path):
    shrink = ["data=coco_tiny", "data.batch_size=1", "model.enc_layers=1", "model.dec_layers=1"]
    source = instantiate(make_cfg(["experiment=detr_coco", "model.backbone_weights=scratch", *shrink]).model)
    path = tmp_path / "detr-r50-e632da11.pth"  # main.py's checkpoint: model, optimizer, epoch, args
    torch.save({"model": source.state_dict(), "epoch": 299, "args": Namespace(lr=1e-4)}, path)
    metrics, output = _evaluate(
        make_cfg, capsys, tmp_path, ["experiment=detr_coco", f"model.pretrained={path}", *shrink]
    )
    assert -1.0 <= metrics["test/AP"] <= 1.0 and not any(k.startswith("val/") for k in metrics)
    assert _printed_once(output, "test/AP")
    assert metrics["paper"]["results"]["test/AP"] == pytest.approx(0.406)  # beside the measured number
    assert metrics["run"]["tested_checkpoint"] == f"model.pretrained={path}"


def test_official_vit_npz_on_an_imagenet_folder(make_cfg, capsys, tmp_path):
    # the ImageNet-1k pretraining's layout, with its pre-logits layer (vit_b16_imagenet has one)
    arrays = _jax_vit_arrays(
        depth=1, dim=768, heads=12, patch=16, grid=14, num_classes=1000, representation_size=768
    )
    path = tmp_path / "ViT-B_16.npz"
    np.savez(path, **arrays)
    overrides = ["experiment=vit_b16_imagenet", "data=imagenet_tiny", "+model.depth=1", "data.batch_size=2"]
    metrics, output = _evaluate(make_cfg, capsys, tmp_path, [*overrides, f"model.pretrained={path}"])
    assert 0.0 <= metrics["test/acc1"] <= 1.0
    assert _printed_once(output, "test/acc1")


def test_official_vit_imagenet_fine_tuned_npz_in_vit_b16_imagenet_ft384(make_cfg, capsys, tmp_path):
    # imagenet21k+imagenet2012/ViT-B_16.npz's layout: no pre-logits layer, a 1000-way head, a 24 x 24 grid
    arrays = _jax_vit_arrays(depth=1, dim=768, heads=12, patch=16, grid=24, num_classes=1000)
    path = tmp_path / "ViT-B_16.npz"
    np.savez(path, **arrays)
    overrides = [
        "experiment=vit_b16_imagenet_ft384",
        "data=imagenet_tiny",
        "data.image_size=384",
        "+model.depth=1",
        "data.batch_size=2",
    ]
    metrics, output = _evaluate(make_cfg, capsys, tmp_path, [*overrides, f"model.pretrained={path}"])
    assert 0.0 <= metrics["test/acc1"] <= 1.0 and _printed_once(output, "test/acc1")
    assert metrics["paper"]["results"]["test/acc1"] == pytest.approx(0.7791)


def test_official_ttsr_pt_on_cufed5_layout_data(make_cfg, capsys, tmp_path):
    generator = torch.Generator().manual_seed(0)
    official = {
        k: 0.01 * torch.randn(shape, generator=generator)
        for k, shape in ttsr_official_keys((1, 1, 1, 1)).items()
    }
    path = tmp_path / "TTSR.pt"
    torch.save(official, path)
    overrides = ["experiment=ttsr_rec_cufed", "data=cufed_tiny", "model.num_res_blocks=[1,1,1,1]"]
    metrics, output = _evaluate(make_cfg, capsys, tmp_path, [*overrides, f"model.pretrained={path}"])
    assert np.isfinite(metrics["test/psnr_y_ref1"])
    assert _printed_once(output, "test/psnr_y_ref1")


def test_hugging_face_imagegpt_on_cifar_batches(make_cfg, capsys, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ImageGPTConfig(vocab_size=513, n_positions=1024, n_embd=512, n_layer=1, n_head=8)
    path = tmp_path / "pytorch_model.bin"
    torch.save(transformers.ImageGPTForCausalImageModeling(config).state_dict(), path)
    # the palette the weights were trained with, beside them as the official kmeans_centers.npy
    centers = np.random.default_rng(0).uniform(-1, 1, (512, 3)).astype(np.float32)
    np.save(tmp_path / "kmeans_centers.npy", centers)
    # CIFAR-10 batches (the tiny set) at iGPT-S's 32 x 32 and 512 colours; no linear probe here
    data = ["data=cifar10_pixels_tiny", "data.image_size=32", "data.palette_size=512", "data.batch_size=4"]
    overrides = ["experiment=igpt_s_cifar10", *data, "+model.depth=1", "task.probe=null"]
    metrics, output = _evaluate(make_cfg, capsys, tmp_path, [*overrides, f"model.pretrained={path}"])
    assert metrics["test/nll"] > 0
    assert _printed_once(output, "test/nll")
