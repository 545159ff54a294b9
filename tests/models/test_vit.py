import logging
import math

import numpy as np
import pytest
import scipy.ndimage
import timm
import timm.layers
import torch
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from timm.models.vision_transformer import _load_weights as timm_load_jax_weights

import vtrain
from tests.numerics import assert_close_to_scale
from vtrain.models import create_model, list_models
from vtrain.models.vit import PRESETS, VisionTransformer, load_pretrained, load_vit_checkpoint, vit_ti16

# a ViT small enough for CPU tests: 32 x 32 images, 8 x 8 patches -> 4 x 4 grid, 16 + 1 tokens
SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)


class NotAWeight:
    """A custom class: pickling it into a checkpoint must get the file refused."""


@torch.no_grad()
def _randomize(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (also the zero-initialised head and cls token) so no parameter is inert."""
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            param.normal_(1.0, 0.1)
        else:
            param.normal_(0.0, std)
    return model.eval()


def _assert_same_output(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = theirs(x)
        actual = ours(x)
    assert expected.std() > 0.1, "reference output is nearly constant; the comparison would prove nothing"
    assert (actual - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vit_ti16", 5_717_416),
        ("vit_s16", 22_050_664),
        ("vit_b16", 86_567_656),
        ("vit_b32", 88_224_232),
        ("vit_l16", 304_326_632),
        ("vit_h14", 632_045_800),
    ],
)
def test_preset_parameter_counts(name, expected):
    with torch.device("meta"):  # no memory, no init cost, same parameters
        model = PRESETS[name](num_classes=1000, img_size=224)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_tiny_preset_matches_timm_vit_tiny():
    theirs = _randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False), std=0.02)
    ours = vit_ti16().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    _assert_same_output(ours, theirs, torch.randn(2, 3, 224, 224))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"global_pool": "avg"},
        {"qkv_bias": False, "mlp_ratio": 2.0},
        {"img_size": (32, 48), "in_chans": 1},
        {"num_classes": 0},
    ],
    ids=["token", "avg", "no-qkv-bias", "non-square", "headless"],
)
def test_small_vit_matches_timm(overrides):
    kwargs = {**SMALL, **overrides}
    # timm moves the final norm after pooling for 'avg' unless fc_norm=False; the paper normalises first
    theirs = _randomize(TimmVisionTransformer(**kwargs, fc_norm=False))
    ours = VisionTransformer(**kwargs).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    img_size = kwargs["img_size"] if isinstance(kwargs["img_size"], tuple) else (32, 32)
    x = torch.randn(3, kwargs.get("in_chans", 3), *img_size)
    _assert_same_output(ours, theirs, x)
    with torch.no_grad():
        assert_close_to_scale(ours.forward_features(x), theirs.forward_features(x), 1e-5)


def test_fc_norm_matches_timm_avg_pooling_with_fc_norm():
    """fc_norm=True: the patch tokens are averaged, then normalised (timm's fc_norm; MAE's models_vit.py);
    the same state dict (no ``norm.*``, ``fc_norm.*`` instead) and the same logits as timm."""
    theirs = _randomize(TimmVisionTransformer(**SMALL, global_pool="avg", fc_norm=True))
    ours = VisionTransformer(**SMALL, global_pool="avg", fc_norm=True).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert "fc_norm.weight" in ours.state_dict() and "norm.weight" not in ours.state_dict()
    _assert_same_output(ours, theirs, torch.randn(3, 3, 32, 32))


def test_representation_layer_is_tanh_linear_before_head():
    # timm dropped the representation layer: its pooled features + a hand-written tanh layer are the reference
    trunk = _randomize(TimmVisionTransformer(**{**SMALL, "num_classes": 0}))
    ours = _randomize(VisionTransformer(**SMALL, representation_size=32), seed=1)
    assert ours.pre_logits.fc.weight.shape == (32, 64) and ours.head.weight.shape == (10, 32)
    ours.load_state_dict({**ours.state_dict(), **trunk.state_dict()}, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = torch.tanh(ours.pre_logits.fc(trunk(x)))
        torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True), features)
        _assert_same_output(ours, lambda x: ours.head(torch.tanh(ours.pre_logits.fc(trunk(x)))), x)


def test_shapes_and_input_size_check():
    model = VisionTransformer(**SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, 1 + 16, 64)
    assert model(x).shape == (2, 10)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 64)
    with pytest.raises(ValueError, match=r"expects 32x32 .* found 48x48"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="global_pool"):
        VisionTransformer(**SMALL, global_pool="max")


def test_set_img_size_resamples_pos_embed_like_timm():
    model = _randomize(VisionTransformer(**SMALL))
    old = model.pos_embed.detach().clone()
    model.set_img_size(48)
    expected = timm.layers.resample_abs_pos_embed(old, [6, 6], num_prefix_tokens=1)
    assert model.img_size == (48, 48) and model.patch_embed.grid_size == (6, 6)
    assert_close_to_scale(model.pos_embed.detach(), expected, 1e-6)
    assert isinstance(model.pos_embed, torch.nn.Parameter)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_stochastic_depth_rises_linearly_and_is_off_in_eval():
    model = VisionTransformer(**{**SMALL, "depth": 5}, drop_path_rate=0.2)
    assert [block.drop_path.drop_prob for block in model.blocks[1:]] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)
    _randomize(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        torch.manual_seed(0)
        assert not torch.equal(model.train()(x), model(x))


def test_init_follows_the_official_jax_code():
    torch.manual_seed(0)
    model = VisionTransformer(**{**SMALL, "embed_dim": 192, "num_heads": 3})
    d = 192
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert torch.count_nonzero(model.cls_token) == 0
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.blocks[0].mlp.fc1.bias.abs().max() < 1e-4
    # q, k and v are separate D x D Xavier matrices in Flax: bound sqrt(6 / 2D), not sqrt(6 / 4D) for [3D, D]
    qkv = model.blocks[0].attn.qkv.weight
    assert math.sqrt(6 / (4 * d)) < qkv.abs().max().item() <= math.sqrt(6 / (2 * d))
    assert model.patch_embed.proj.weight.std().item() == pytest.approx(math.sqrt(1 / (3 * 8 * 8)), rel=0.1)


def test_deit_init_is_timm_0_3_2s():
    # facebookresearch/deit models.py -> timm 0.3.2 VisionTransformer.__init__ / _init_weights
    torch.manual_seed(0)
    model = VisionTransformer(**{**SMALL, "embed_dim": 192, "num_heads": 3}, weight_init="deit")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert model.head in linears and len(linears) == 1 + 4 * 2
    for linear in linears:
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert torch.count_nonzero(linear.bias) == 0
    for name in ("pos_embed", "cls_token"):
        assert getattr(model, name).std().item() == pytest.approx(0.02, rel=0.3), name
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1
    assert all(torch.all(n.weight == 1) and torch.count_nonzero(n.bias) == 0 for n in norms)
    # the patch projection keeps PyTorch's Conv2d default: uniform in +-1 / sqrt(fan_in)
    bound = 1 / math.sqrt(3 * 8 * 8)
    weight = model.patch_embed.proj.weight
    assert weight.abs().max().item() <= bound and weight.std().item() == pytest.approx(
        bound / math.sqrt(3), rel=0.1
    )
    with pytest.raises(ValueError, match=r"weight_init must be one of \('jax', 'deit'\), got 'moco'"):
        VisionTransformer(**SMALL, weight_init="moco")


def _jax_vit_arrays(
    depth: int = 2,
    dim: int = 64,
    heads: int = 4,
    patch: int = 8,
    grid: int = 4,
    num_classes: int | None = 10,
    representation_size: int | None = None,
    big_vision: bool = False,
    prefix: str = "",
) -> dict[str, np.ndarray]:
    """Random arrays laid out as google-research/vision_transformer's Flax ViT saves them.

    ``big_vision`` switches to big_vision's layout: top-level ``pos_embedding``, one scanned ``encoderblock``
    with a leading depth axis, sub-modules numbered MultiHeadDotProductAttention_0 / LayerNorm_1 / MlpBlock_0.
    """
    rng = np.random.default_rng(0)

    def rand(*shape: int, mean: float = 0.0) -> np.ndarray:
        return (mean + 0.2 * rng.standard_normal(shape)).astype(np.float32)

    hidden, head_dim = 4 * dim, dim // heads
    arrays = {
        "embedding/kernel": rand(patch, patch, 3, dim),
        "embedding/bias": rand(dim),
        "cls": rand(1, 1, dim),
        ("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"): rand(
            1, 1 + grid**2, dim
        ),
        "Transformer/encoder_norm/scale": rand(dim, mean=1.0),
        "Transformer/encoder_norm/bias": rand(dim),
    }
    attn, ln2, mlp = (
        ("MultiHeadDotProductAttention_0", 1, 0) if big_vision else ("MultiHeadDotProductAttention_1", 2, 3)
    )
    blocks = []
    for _ in range(depth):
        block = {
            "LayerNorm_0/scale": rand(dim, mean=1.0),
            "LayerNorm_0/bias": rand(dim),
            f"LayerNorm_{ln2}/scale": rand(dim, mean=1.0),
            f"LayerNorm_{ln2}/bias": rand(dim),
            f"{attn}/out/kernel": rand(heads, head_dim, dim),
            f"{attn}/out/bias": rand(dim),
            f"MlpBlock_{mlp}/Dense_0/kernel": rand(dim, hidden),
            f"MlpBlock_{mlp}/Dense_0/bias": rand(hidden),
            f"MlpBlock_{mlp}/Dense_1/kernel": rand(hidden, dim),
            f"MlpBlock_{mlp}/Dense_1/bias": rand(dim),
        }
        for name in ("query", "key", "value"):
            block[f"{attn}/{name}/kernel"] = rand(dim, heads, head_dim)
            block[f"{attn}/{name}/bias"] = rand(heads, head_dim)
        blocks.append(block)
    if big_vision:
        arrays.update({f"Transformer/encoderblock/{k}": np.stack([b[k] for b in blocks]) for k in blocks[0]})
    else:
        for i, block in enumerate(blocks):
            arrays.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in block.items()})
    width = dim
    if representation_size:
        arrays.update(
            {
                "pre_logits/kernel": rand(dim, representation_size),
                "pre_logits/bias": rand(representation_size),
            }
        )
        width = representation_size
    if num_classes:
        arrays.update({"head/kernel": rand(width, num_classes), "head/bias": rand(num_classes)})
    return {prefix + k: v for k, v in arrays.items()}


@pytest.mark.parametrize(
    "layout",
    [{}, {"prefix": "opt/target/"}, {"big_vision": True, "prefix": "params/"}],
    ids=["original", "optimizer-target", "big-vision-scanned"],
)
def test_jax_npz_loads_like_timm(tmp_path, layout):
    path = tmp_path / "ViT-small.npz"
    np.savez(path, **_jax_vit_arrays(**layout))
    theirs = TimmVisionTransformer(**SMALL).eval()
    with torch.no_grad():
        timm_load_jax_weights(theirs, str(path))
    ours = load_vit_checkpoint(VisionTransformer(**SMALL), path).eval()
    _assert_same_output(ours, theirs, torch.randn(2, 3, 32, 32))
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, atol=0, rtol=0, msg=key)


def test_jax_npz_with_representation_layer(tmp_path):
    path = tmp_path / "ViT-small-21k.npz"
    arrays = _jax_vit_arrays(representation_size=32, num_classes=1000)
    np.savez(path, **arrays)
    model = load_vit_checkpoint(
        VisionTransformer(**{**SMALL, "num_classes": 1000}, representation_size=32), path
    )
    torch.testing.assert_close(model.pre_logits.fc.weight, torch.from_numpy(arrays["pre_logits/kernel"]).T)
    torch.testing.assert_close(model.head.weight, torch.from_numpy(arrays["head/kernel"]).T)


def _official_posemb_resize(posemb: np.ndarray, new_side: int) -> torch.Tensor:
    """The reference: google-research/vision_transformer vit_jax/checkpoint.py:209-238 (c6de1e5),
    ``interpolate_posembed`` with a class token: the first row kept, the square grid zoomed by
    ``scipy.ndimage.zoom(order=1)``."""
    token, grid = posemb[:, :1], posemb[0, 1:]
    old_side = math.isqrt(len(grid))
    zoom = new_side / old_side
    grid = scipy.ndimage.zoom(grid.reshape(old_side, old_side, -1), (zoom, zoom, 1), order=1)
    return torch.from_numpy(np.concatenate([token, grid.reshape(1, new_side * new_side, -1)], axis=1))


def test_jax_npz_into_larger_resolution_resamples_pos_embed_as_the_official_code(tmp_path):
    path = tmp_path / "ViT-small.npz"
    arrays = _jax_vit_arrays()
    np.savez(path, **arrays)
    model = load_vit_checkpoint(VisionTransformer(**{**SMALL, "img_size": 48}), path)
    expected = _official_posemb_resize(arrays["Transformer/posembed_input/pos_embedding"], 6)
    assert_close_to_scale(model.pos_embed.detach(), expected, 1e-5)


def test_jax_npz_with_unknown_or_missing_arrays_is_rejected(tmp_path):
    arrays = _jax_vit_arrays()
    path = tmp_path / "extra.npz"
    np.savez(path, **arrays, **{"MAPHead_0/probe": np.zeros((1, 1, 64), np.float32)})
    with pytest.raises(ValueError, match=r"extra\.npz.*unexpected keys 'MAPHead_0/probe'"):
        load_vit_checkpoint(VisionTransformer(**SMALL), path)
    del arrays["Transformer/encoderblock_1/LayerNorm_2/scale"]
    path = tmp_path / "missing.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"missing\.npz.*missing keys 'blocks\.1\.norm2\.weight'"):
        load_vit_checkpoint(VisionTransformer(**SMALL), path)
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz is not a ViT JAX checkpoint"):
        load_vit_checkpoint(VisionTransformer(**SMALL), path)


def test_224_checkpoint_into_384_model_resamples_14_to_24_as_the_official_code(tmp_path):
    source = _randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False), std=0.02)
    state_dict = source.state_dict()
    path = tmp_path / "vit_ti16_224.pth"
    torch.save(state_dict, path)

    theirs = timm.create_model("vit_tiny_patch16_384", pretrained=False).eval()
    resampled = _official_posemb_resize(state_dict["pos_embed"].numpy(), 24)
    theirs.load_state_dict({**state_dict, "pos_embed": resampled}, strict=True)
    ours = load_vit_checkpoint(vit_ti16(img_size=384), path).eval()

    assert ours.pos_embed.shape == (1, 1 + 24 * 24, 192)
    assert_close_to_scale(ours.pos_embed.detach(), resampled, 1e-5)
    # timm's bicubic resampling is another table: the test would see a change of method
    timm_table = timm.layers.resample_abs_pos_embed(state_dict["pos_embed"], [24, 24], num_prefix_tokens=1)
    assert (ours.pos_embed.detach() - timm_table).norm() > 0.1 * timm_table[:, 1:].norm()
    assert torch.equal(ours.pos_embed[:, 0].detach(), state_dict["pos_embed"][:, 0])  # class-token position
    assert torch.equal(ours.cls_token.detach(), state_dict["cls_token"])
    _assert_same_output(ours, theirs, torch.randn(1, 3, 384, 384))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"model": sd},
        lambda sd: {"state_dict": sd},
        # vtrain Lightning checkpoint: the network is the task module's `model`, beside metrics and loop state
        lambda sd: {
            "state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "val_acc.total": torch.tensor(3)},
            "epoch": 3,
            "global_step": 120,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
        },
    ],
    ids=["state-dict", "model-key", "state-dict-key", "lightning"],
)
def test_torch_checkpoint_formats_load(tmp_path, wrap):
    source = _randomize(VisionTransformer(**SMALL))
    path = tmp_path / "checkpoint.ckpt"
    torch.save(wrap(source.state_dict()), path)
    loaded = load_pretrained(VisionTransformer(**SMALL), path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_head_of_another_shape_is_skipped_with_a_warning(tmp_path, caplog):
    pretrained = _randomize(VisionTransformer(**{**SMALL, "num_classes": 1000}, representation_size=32))
    path = tmp_path / "in21k.pth"
    torch.save(pretrained.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="vtrain.models.vit.checkpoint"):
        model = load_vit_checkpoint(VisionTransformer(**SMALL), path)
    message = caplog.text
    assert "in21k.pth" in message and "(1000, 32)" in message and "(10, 64)" in message
    assert "pre_logits.fc.weight" in message
    assert torch.count_nonzero(model.head.weight) == 0  # kept its zero init
    assert torch.equal(model.blocks[1].mlp.fc2.weight, pretrained.blocks[1].mlp.fc2.weight)

    # a pre_logits layer the model has but the checkpoint lacks is an error, not a silent fresh init
    path = tmp_path / "in1k.pth"
    torch.save(VisionTransformer(**{**SMALL, "num_classes": 1000}).state_dict(), path)
    with pytest.raises(ValueError, match=r"in1k\.pth .*missing keys 'pre_logits\.fc\.weight'"):
        load_vit_checkpoint(VisionTransformer(**SMALL, representation_size=32), path)


def test_pre_logits_the_model_lacks_is_dropped_with_the_head(tmp_path, caplog):
    # vit_b16_imagenet (pre-logits of width D, so a head of the same shape) fine-tuned at 384 without it:
    # the official drop-head variant (vit_jax/checkpoint.py:185-190) and a zero-initialised head (section 3.2)
    pretrained = _randomize(VisionTransformer(**SMALL, representation_size=64))
    path = tmp_path / "vit_b16_imagenet_224.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in pretrained.state_dict().items()}}, path)
    with caplog.at_level(logging.WARNING, logger="vtrain.models.vit.checkpoint"):
        model = load_vit_checkpoint(VisionTransformer(**{**SMALL, "img_size": 48}), path)
    assert "reads a pre_logits layer the model does not have" in caplog.text
    assert "head.weight" in caplog.text and "pre_logits.fc.weight" in caplog.text
    assert torch.count_nonzero(model.head.weight) == torch.count_nonzero(model.head.bias) == 0
    assert torch.equal(model.blocks[0].attn.qkv.weight, pretrained.blocks[0].attn.qkv.weight)
    # with the layer in both, the head is the checkpoint's (evaluating a 21k checkpoint as it is)
    same = load_vit_checkpoint(VisionTransformer(**SMALL, representation_size=64), path)
    assert torch.equal(same.head.weight, pretrained.head.weight)


def test_headless_model_skips_checkpoint_head(tmp_path, caplog):
    path = tmp_path / "vit.pth"
    torch.save(VisionTransformer(**SMALL).state_dict(), path)
    with caplog.at_level(logging.WARNING):
        load_vit_checkpoint(VisionTransformer(**{**SMALL, "num_classes": 0}), path)
    assert "(10, 64) in the checkpoint but absent in the model" in caplog.text


def test_checkpoint_that_does_not_fit_is_rejected(tmp_path, caplog):
    path = tmp_path / "deeper.pth"
    torch.save(VisionTransformer(**{**SMALL, "depth": 3}).state_dict(), path)
    with pytest.raises(
        ValueError, match=r"deeper\.pth does not fit VisionTransformer: unexpected keys 'blocks\.2\."
    ):
        load_vit_checkpoint(VisionTransformer(**SMALL), path)
    with caplog.at_level(logging.WARNING):
        load_vit_checkpoint(VisionTransformer(**SMALL), path, strict=False)
    assert "blocks.2.norm1.weight" in caplog.text

    path = tmp_path / "wider.pth"
    torch.save(VisionTransformer(**{**SMALL, "mlp_ratio": 2.0}).state_dict(), path)
    with pytest.raises(
        ValueError, match=r"wider\.pth .*mis-shaped keys 'blocks\.0\.mlp\.fc1\.weight \(128, 64\)"
    ):
        load_vit_checkpoint(VisionTransformer(**SMALL), path, strict=False)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "with_code.pth"
    torch.save({"state_dict": VisionTransformer(**SMALL).state_dict(), "extra": NotAWeight()}, path)
    with pytest.raises(
        ValueError, match=r"refusing to load .*with_code\.pth: it carries pickled Python objects"
    ):
        load_vit_checkpoint(VisionTransformer(**SMALL), path)


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing_here\.pth"):
        load_vit_checkpoint(VisionTransformer(**SMALL), tmp_path / "nothing_here.pth")
    for name, content in [
        ("noise.pth", np.random.default_rng(0).bytes(4096)),
        ("notes.pth", b"hello\n" * 50),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"cannot read .*{name}"):
            load_vit_checkpoint(VisionTransformer(**SMALL), tmp_path / name)
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match=r"tensor\.pth holds no state dict"):
        load_vit_checkpoint(VisionTransformer(**SMALL), path)


def test_create_model_applies_overrides_and_loads_pretrained(tmp_path):
    model = create_model("vit_s16", num_classes=10, img_size=64, drop_path_rate=0.1, depth=2)
    assert isinstance(model, VisionTransformer)
    assert model.embed_dim == 384 and len(model.blocks) == 2 and model.head.out_features == 10
    assert model.img_size == (64, 64) and model.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)

    source = _randomize(create_model("vit_ti16", **SMALL))
    path = tmp_path / "ti.pth"
    torch.save(source.state_dict(), path)
    loaded = vtrain.create_model("vit_ti16", pretrained=path, **SMALL)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), source(x))


def test_list_models_and_unknown_name():
    assert list_models("vit_*") == sorted(PRESETS)
    assert set(PRESETS) < set(vtrain.list_models()) and vtrain.list_models() == sorted(vtrain.list_models())
    assert list_models("vit_b*") == ["vit_b16", "vit_b32"]
    assert list_models("nothing*") == []
    with pytest.raises(
        ValueError, match=r"unknown model 'vit_b61'\. Did you mean 'vit_b16'.*Available models: .*vit_b16"
    ):
        create_model("vit_b61")
    assert vtrain.__version__ == "0.1.0"


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_with_dropout_and_drop_path(monkeypatch):
    from tests.numerics import assert_checkpointing_changes_nothing

    # DeiT's initialisation, so that the head is not zero and every block gets a gradient
    config = dict(SMALL, drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.3, weight_init="deit")
    plain = VisionTransformer(**config)
    checkpointed = VisionTransformer(**config, grad_checkpointing=True)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    assert_checkpointing_changes_nothing(
        plain, checkpointed, lambda m: torch.nn.functional.cross_entropy(m(images), labels), 2, monkeypatch
    )
    assert create_model("vit_ti16", grad_checkpointing=True).grad_checkpointing
