import math

import numpy as np
import pytest
import scipy.ndimage
import timm.layers
import torch

from tests.numerics import assert_close_to_scale
from vtrain.layers import Attention, DropPath, Mlp, drop_path, resample_abs_pos_embed


def test_drop_path_is_identity_in_eval_and_at_zero_rate():
    x = torch.randn(8, 5, 3)
    layer = DropPath(0.5).eval()
    assert layer(x) is x
    assert drop_path(x, 0.0, training=True) is x


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    drop_prob = 0.25
    layer = DropPath(drop_prob).train()
    out = layer(torch.ones(20_000, 3, 4))
    per_sample = out.flatten(1)
    # every sample is either dropped entirely or kept and scaled by 1 / keep_prob
    assert torch.all((per_sample == 0).all(dim=1) | (per_sample == 1 / (1 - drop_prob)).all(dim=1))
    dropped = (per_sample[:, 0] == 0).float().mean().item()
    assert dropped == pytest.approx(drop_prob, abs=0.015)
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)


def _reference_attention(layer: Attention, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V written out head by head."""
    B, N, D = x.shape
    heads, d = layer.num_heads, D // layer.num_heads
    q, k, v = (x @ layer.qkv.weight.T + layer.qkv.bias).split(D, dim=-1)
    outputs = []
    for h in range(heads):
        qh, kh, vh = (t[..., h * d : (h + 1) * d] for t in (q, k, v))
        logits = qh @ kh.transpose(-1, -2) / math.sqrt(d)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        outputs.append(torch.softmax(logits, dim=-1) @ vh)
    return torch.cat(outputs, dim=-1) @ layer.proj.weight.T + layer.proj.bias


def test_attention_equals_manual_softmax_attention():
    torch.manual_seed(0)
    layer = Attention(32, num_heads=4, attn_drop=0.3, proj_drop=0.3).eval()
    torch.nn.init.normal_(layer.qkv.bias)
    x = torch.randn(2, 7, 32)
    assert_close_to_scale(layer(x), _reference_attention(layer, x), 1e-5)

    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    assert_close_to_scale(layer(x, is_causal=True), _reference_attention(layer, x, causal), 1e-5)
    assert_close_to_scale(layer(x, attn_mask=causal), _reference_attention(layer, x, causal), 1e-5)


def test_attention_state_dict_and_output_match_timm():
    torch.manual_seed(0)
    ours = Attention(48, num_heads=6, qkv_bias=True).eval()
    theirs = timm.layers.Attention(48, num_heads=6, qkv_bias=True).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 5, 48)
    assert_close_to_scale(ours(x), theirs(x), 1e-6)


def test_attention_rejects_indivisible_width():
    with pytest.raises(ValueError, match="not divisible"):
        Attention(30, num_heads=4)


def test_mlp_uses_exact_gelu_and_dropout_only_in_training():
    torch.manual_seed(0)
    mlp = Mlp(16, hidden_features=64, out_features=8, drop=0.5).eval()
    x = 3 * torch.randn(4, 16)
    hidden = x @ mlp.fc1.weight.T + mlp.fc1.bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # erf GELU, not the tanh approximation
    expected = hidden @ mlp.fc2.weight.T + mlp.fc2.bias
    assert_close_to_scale(mlp(x), expected, 1e-5)
    assert not torch.allclose(mlp.train()(x), expected)


@pytest.mark.parametrize(
    ("old_grid", "new_grid", "num_prefix_tokens", "mode", "pass_old_grid"),
    [
        ((14, 14), (24, 24), 1, "bicubic", False),  # 224 -> 384 at patch 16
        ((24, 24), (14, 14), 1, "bicubic", False),  # downsampling, where antialiasing matters
        ((4, 6), (8, 3), 1, "bicubic", True),
        ((7, 7), (10, 5), 0, "bilinear", False),
        ((5, 5), (9, 9), 2, "bicubic", False),
    ],
)
def test_resample_abs_pos_embed_equals_timm(old_grid, new_grid, num_prefix_tokens, mode, pass_old_grid):
    torch.manual_seed(0)
    pos_embed = torch.randn(1, num_prefix_tokens + old_grid[0] * old_grid[1], 16)
    ours = resample_abs_pos_embed(
        pos_embed,
        new_grid,
        old_grid if pass_old_grid else None,
        num_prefix_tokens=num_prefix_tokens,
        mode=mode,
    )
    theirs = timm.layers.resample_abs_pos_embed(
        pos_embed,
        list(new_grid),
        list(old_grid) if pass_old_grid else None,
        num_prefix_tokens=num_prefix_tokens,
        interpolation=mode,
    )
    assert ours.shape == (1, num_prefix_tokens + new_grid[0] * new_grid[1], 16)
    assert_close_to_scale(ours, theirs, 1e-6)
    assert torch.equal(ours[:, :num_prefix_tokens], pos_embed[:, :num_prefix_tokens])


@pytest.mark.parametrize(("old_side", "new_side"), [(14, 24), (24, 14), (7, 12), (12, 7)])
def test_bilinear_aligned_corners_is_scipy_zoom_order_1(old_side, new_side):
    # the official ViT code's resize: scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1)
    grid = np.random.default_rng(0).standard_normal((old_side, old_side, 16)).astype(np.float32)
    zoom = new_side / old_side
    expected = scipy.ndimage.zoom(grid, (zoom, zoom, 1), order=1).reshape(1, new_side * new_side, 16)
    pos_embed = torch.cat([torch.ones(1, 1, 16), torch.from_numpy(grid).reshape(1, -1, 16)], dim=1)
    ours = resample_abs_pos_embed(
        pos_embed, (new_side, new_side), mode="bilinear", antialias=False, align_corners=True
    )
    assert_close_to_scale(ours[:, 1:], torch.from_numpy(expected), 1e-5)
    assert torch.equal(ours[:, :1], pos_embed[:, :1])


def test_resample_abs_pos_embed_keeps_table_on_same_grid_and_rejects_non_square():
    pos_embed = torch.randn(1, 1 + 16, 8)
    assert resample_abs_pos_embed(pos_embed, (4, 4)) is pos_embed
    with pytest.raises(ValueError, match="not a square grid"):
        resample_abs_pos_embed(torch.randn(1, 1 + 12, 8), (4, 4))
    with pytest.raises(ValueError, match="old_grid"):
        resample_abs_pos_embed(pos_embed, (4, 4), old_grid=(3, 4))
