"""Lambda layer and LambdaResNets: equal outputs to timm's and lucidrains' lambda layers with mapped weights,
the paper's parameter count, half-precision stability, masking, the hybrids, checkpoints, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import vtrain
from tests.conftest import REPO, SMOKE
from vtrain.cli import run
from vtrain.models.lambda_resnet import (
    PRESETS,
    LambdaLayer,
    LambdaResNet,
    lambda_resnet50,
    lambda_resnet50_u4,
    lambda_tiny,
    load_lambda_checkpoint,
)
from vtrain.models.lambda_resnet.presets import HYBRIDS, spaced_blocks


def _randomise_batchnorm(*modules: nn.Module) -> None:
    """Non-trivial affine parameters and running statistics, identical across the modules given in the same
    order, so that eval-mode outputs depend on every BatchNorm tensor being mapped."""
    generator = torch.Generator().manual_seed(1)
    norms = [[m for m in module.modules() if isinstance(m, nn.BatchNorm2d)] for module in modules]
    for group in zip(*norms, strict=True):
        c = group[0].num_features
        values = [torch.rand(c, generator=generator) + 0.5, torch.randn(c, generator=generator)]
        values += [torch.randn(c, generator=generator), torch.rand(c, generator=generator) + 0.5]
        for bn in group:
            tensors = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
            for tensor, value in zip(tensors, values, strict=True):
                tensor.data.copy_(value)


def paper_pool() -> nn.Module:
    """The paper's downsampling after a strided lambda layer: 3x3 average pooling, stride 2."""
    return nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)


def _layer(**kwargs) -> LambdaLayer:
    torch.manual_seed(0)
    return LambdaLayer(**kwargs)


@pytest.mark.parametrize("r, stride", [(7, 1), (5, 2), (None, 1)])
def test_matches_timm_lambda_layer(r, stride):
    timm_lambda = pytest.importorskip("timm.layers.lambda_layer")
    dim, k, heads, size = 32, 16, 4, (6, 5)
    torch.manual_seed(0)
    # timm downsamples with a 2x2 average pooling; compare with its stride-1 output pooled as the paper does
    theirs = timm_lambda.LambdaLayer(dim, dim, feat_size=size, stride=1, num_heads=heads, dim_head=k, r=r)
    theirs.pool = paper_pool() if stride == 2 else nn.Identity()
    theirs.eval()
    ours = _layer(dim=dim, dim_k=k, heads=heads, dim_u=1, r=r, feat_size=size, stride=stride).eval()
    q, kk, v = theirs.qkv.weight.split([heads * k, k, dim // heads])
    mapped = {"to_q.weight": q, "to_k.weight": kk, "to_v.weight": v}
    mapped |= {
        f"norm_{n}.{key}": t for n in "qv" for key, t in getattr(theirs, f"norm_{n}").state_dict().items()
    }
    if r is not None:
        # the paper's position lambdas have no bias; timm's lambda convolution has one
        with torch.no_grad():
            theirs.conv_lambda.bias.zero_()
        mapped["lambda_conv.weight"] = theirs.conv_lambda.weight.squeeze(
            -1
        )  # [k, 1, r, r, 1] -> [k, 1, r, r]
    else:
        mapped["rel_pos_emb"] = theirs.pos_emb.unsqueeze(-1)  # [2H-1, 2W-1, k] -> [.., k, u=1]
    ours.load_state_dict(mapped)
    _randomise_batchnorm(theirs, ours)
    x = torch.randn(3, dim, *size)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    theirs.train(), ours.train()  # batch statistics
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("r", [5, None])
def test_matches_lambda_networks_package_with_intra_depth(r):
    lambda_networks = pytest.importorskip("lambda_networks")
    dim, dim_out, k, heads, u, n = 24, 32, 8, 4, 4, 6
    torch.manual_seed(0)
    theirs = lambda_networks.LambdaLayer(dim, dim_k=k, n=n, r=r, heads=heads, dim_out=dim_out, dim_u=u).eval()
    ours = _layer(dim=dim, dim_out=dim_out, dim_k=k, heads=heads, dim_u=u, r=r, feat_size=n).eval()
    mapped = {f"to_{p}.weight": getattr(theirs, f"to_{p}").weight for p in "qkv"}
    mapped |= {
        f"norm_{p}.{key}": t for p in "qv" for key, t in getattr(theirs, f"norm_{p}").state_dict().items()
    }
    if r is not None:
        with torch.no_grad():
            theirs.pos_conv.bias.zero_()  # no bias in the paper's position lambdas
        mapped["lambda_conv.weight"] = theirs.pos_conv.weight.squeeze(2)  # [k, u, 1, r, r] -> [k, u, r, r]
    else:
        mapped["rel_pos_emb"] = theirs.rel_pos_emb
    ours.load_state_dict(mapped)
    _randomise_batchnorm(theirs, ours)
    x = torch.randn(2, dim, n, n)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_content_lambda_alone_is_softmax_keys_times_values():
    """With zero position embeddings the output is the paper's content term written out in full."""
    layer = _layer(dim=8, dim_k=4, heads=2, dim_u=2, r=3).eval()
    nn.init.zeros_(layer.lambda_conv.weight)
    x = torch.randn(2, 8, 4, 5)
    q = layer.norm_q(layer.to_q(x)).reshape(2, 2, 4, 20)  # [b, h, k, n]
    keys = layer.to_k(x).reshape(2, 2, 4, 20).softmax(-1)  # [b, u, k, m]
    values = layer.norm_v(layer.to_v(x)).reshape(2, 2, 4, 20)  # [b, u, v, m]
    expected = torch.zeros(2, 2, 4, 20)
    for b in range(2):
        lam = sum(keys[b, i] @ values[b, i].T for i in range(2))  # [k, v]
        for h in range(2):
            expected[b, h] = lam.T @ q[b, h]
    torch.testing.assert_close(layer(x), expected.reshape(2, 8, 4, 5))


def test_masked_context_is_ignored():
    layer = _layer(dim=16, dim_k=8, heads=4, r=5).eval()
    x = torch.randn(2, 16, 6, 6)
    mask = torch.ones(2, 6, 6, dtype=torch.bool)
    mask[:, :, 4:] = False  # right two columns are padding
    changed = x.clone()
    changed[:, :, :, 4:] = 100 * torch.randn(2, 16, 6, 2)
    out, out_changed = layer(x, mask), layer(changed, mask)
    torch.testing.assert_close(out[..., :4], out_changed[..., :4])
    assert not torch.allclose(layer(x)[..., :4], layer(changed)[..., :4])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_autocast_is_finite_and_close_to_float32(dtype):
    torch.manual_seed(0)
    model = lambda_tiny(num_classes=10).eval()
    x = 20 * torch.randn(4, 3, 32, 32)  # large activations: where half-precision softmax sums overflow
    reference = model(x)
    with torch.autocast("cpu", dtype=dtype):
        half = model(x)
    assert torch.isfinite(half).all()
    error = (half.float() - reference).norm() / reference.norm()
    assert error < 0.02, f"relative error {error:.4f} under {dtype} autocast"


def test_half_precision_training_step_has_finite_gradients():
    torch.manual_seed(0)
    model = lambda_tiny(num_classes=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_lambda_resnet50_has_the_papers_parameter_count():
    with torch.device("meta"):
        count = sum(p.numel() for p in lambda_resnet50().parameters())
        count_u4 = sum(p.numel() for p in lambda_resnet50_u4().parameters())
    assert count == 14_995_592
    assert abs(count / 15.0e6 - 1) < 0.02  # paper, Table 3: 15.0M
    assert abs(count_u4 / 16.0e6 - 1) < 0.02  # paper: 16.0M with |u| = 4


@pytest.mark.parametrize("depth", sorted(HYBRIDS))
def test_hybrids_put_lambda_layers_in_c5_and_a_few_c4_blocks(depth):
    layers, in_c4, _ = HYBRIDS[depth]
    with torch.device("meta"):
        model = PRESETS[f"lambda_resnet{depth}_hybrid"]()
    for stage, depth_of_stage in enumerate(layers, start=1):
        kinds = [isinstance(b.conv2, LambdaLayer) for b in getattr(model, f"layer{stage}")]
        assert len(kinds) == depth_of_stage
        expected = {1: 0, 2: 0, 3: in_c4, 4: depth_of_stage}[stage]
        assert sum(kinds) == expected, f"stage {stage}"
    assert isinstance(model.layer3[-1].conv2, LambdaLayer)


@pytest.mark.parametrize(
    "name", ["lambda_resnet50_hybrid", "lambda_resnet101_hybrid", "lambda_resnet152_hybrid"]
)
def test_hybrids_run_a_forward_pass_at_a_small_size(name):
    torch.manual_seed(0)
    model = vtrain.create_model(name, num_classes=5, img_size=64).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


def test_hybrid_trains_its_lambda_layers():
    torch.manual_seed(0)
    model = vtrain.create_model("lambda_resnet50_hybrid", num_classes=5, zero_init_residual=False)
    nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    for block in (model.layer3[-1], model.layer4[0]):
        assert block.conv2.lambda_conv.weight.grad.abs().sum() > 0
        assert block.conv2.to_k.weight.grad.abs().sum() > 0


def test_spaced_blocks_end_with_the_last_block():
    assert spaced_blocks(6, 1) == (5,)
    assert spaced_blocks(23, 3) == (7, 15, 22)
    assert len(set(spaced_blocks(87, 8))) == 8


def test_stride_two_is_the_papers_3x3_average_pooling_after_the_layer():
    strided = _layer(dim=16, dim_out=32, dim_k=8, heads=4, r=5, stride=2).eval()
    plain = _layer(dim=16, dim_out=32, dim_k=8, heads=4, r=5, stride=1).eval()
    x = torch.randn(2, 16, 9, 8)
    out = strided(x)
    assert out.shape == (2, 32, 5, 4)  # ceil(H / 2), like the strided 3x3 convolution it replaces
    expected = nn.functional.avg_pool2d(plain(x), 3, stride=2, padding=1, count_include_pad=False)
    torch.testing.assert_close(out, expected)
    # a 3x3 window, not 2x2: an output pixel depends on its centre's neighbours on both sides
    interior = plain(x)[:, :, 1:4, 1:4].mean(dim=(-2, -1))
    torch.testing.assert_close(out[:, :, 1, 1], interior)


def test_strided_lambda_block_matches_its_shortcut_at_odd_sizes():
    model = lambda_tiny(num_classes=3, img_size=40).eval()  # 20 -> 10 -> 5 -> 3 pixels
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 40, 40)).shape[-2:] == (3, 3)


def test_stride_two_pools_after_the_layer_and_relative_size_is_checked():
    layer = _layer(dim=16, dim_out=32, dim_k=8, heads=4, r=None, feat_size=(8, 6), stride=2)
    assert layer(torch.randn(1, 16, 8, 6)).shape == (1, 32, 4, 3)
    with pytest.raises(ValueError, match=r"\(8, 6\) feature map, got \(6, 8\)"):
        layer(torch.randn(1, 16, 6, 8))
    with pytest.raises(ValueError, match="must be odd"):
        LambdaLayer(16, r=4)


def test_relative_position_resnet_at_a_fixed_size():
    model = LambdaResNet(
        layers=(1, 1),
        widths=(8, 16),
        lambda_blocks=("all", "all"),
        r=None,
        img_size=32,
        num_classes=3,
        stem="cifar",
        stem_width=8,
        dim_k=4,
    )
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_checkpoint_round_trip_and_new_classifier(tmp_path):
    torch.manual_seed(0)
    model = lambda_tiny(num_classes=10).eval()
    path = tmp_path / "lambda_tiny.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    x = torch.randn(2, 3, 32, 32)
    loaded = vtrain.create_model("lambda_tiny", pretrained=path, num_classes=10).eval()
    torch.testing.assert_close(loaded(x), model(x))
    finetune = load_lambda_checkpoint(lambda_tiny(num_classes=4), path)
    torch.testing.assert_close(finetune.layer4[0].conv2.to_q.weight, model.layer4[0].conv2.to_q.weight)
    with pytest.raises(ValueError, match="does not fit"):
        load_lambda_checkpoint(lambda_tiny(widths=(8, 16, 32, 64)), path)


def test_smoke_run_of_the_lambda_tiny_experiment(make_cfg, tmp_path):
    out = tmp_path / "lambda"
    run(make_cfg(["experiment=lambda_tiny", *SMOKE], output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"train/loss_epoch", "val/acc1", "test/acc1"} <= set(metrics)


@pytest.mark.slow
def test_benchmark_writes_its_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    args = ["--sizes", "14", "--steps", "1", "--warmup", "0", "--skip-resnets", "--device", "cpu"]
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "lambda", *args, "--output", str(doc)],
        check=True,
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    text = doc.read_text()
    assert "## LambdaNetworks: lambda layer vs self-attention" in text
    assert "| 14x14 | 196 |" in text


@pytest.mark.slow
def test_lambda_tiny_learns_the_tiny_digits(make_cfg, tmp_path):
    """The full lambda_tiny experiment on CPU; chance is 10%."""
    out = tmp_path / "lambda_full"
    run(
        make_cfg(
            ["experiment=lambda_tiny", "~callbacks.progress_bar", "trainer.enable_progress_bar=false"],
            output_dir=out,
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/acc1"] > 0.6, metrics
