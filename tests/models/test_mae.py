"""MAE (vtrain.models.mae): the sine-cosine tables, masking, transformers' ViTMAEForPreTraining given the same
weights and noise, the official checkpoints' key names, the presets' parameter counts, and the fine-tuning and
linear-probe classifiers the encoder is loaded into."""

import logging
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from vtrain.layers import sincos_2d_pos_embed
from vtrain.models import create_model
from vtrain.models.mae import (
    PRESETS,
    MaskedAutoencoder,
    convert_transformers_mae,
    load_mae_checkpoint,
    load_mae_encoder,
)
from vtrain.models.vit import VisionTransformer, load_vit_checkpoint

# 32 x 32 images in 8 x 8 patches: a 4 x 4 grid of 16 patches, 4 of them kept at the default 75 % masking
SMALL = dict(
    img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, decoder_embed_dim=32, decoder_depth=2,
    decoder_num_heads=4, mlp_ratio=4.0,
)  # fmt: skip


def _hf_config(norm_pix_loss: bool) -> ViTMAEConfig:
    """transformers' configuration of SMALL, with MAE's LayerNorm eps 1e-6 (transformers' default: 1e-12)."""
    return ViTMAEConfig(
        image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=192, decoder_hidden_size=32, decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4, decoder_intermediate_size=128, layer_norm_eps=1e-6, mask_ratio=0.75,
        norm_pix_loss=norm_pix_loss, hidden_act="gelu",
    )  # fmt: skip


def _official_layout(embed_dim: int, side: int) -> torch.Tensor:
    """transformers' 2-D table with its halves swapped, which its code says is the official layout."""
    table = build_2d_sinusoidal_position_embedding(side, side, embed_dim, cls_token=True)
    return torch.cat([table[:, embed_dim // 2 :], table[:, : embed_dim // 2]], dim=1)


@torch.no_grad()
def _randomised_hf(norm_pix_loss: bool, seed: int = 0) -> ViTMAEForPreTraining:
    """transformers' MAE with random weights everywhere and the official sine-cosine tables."""
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(_hf_config(norm_pix_loss)).eval()
    for name, param in model.named_parameters():
        if "layernorm" in name or "decoder_norm" in name:
            param.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
        else:
            param.normal_(0.0, 0.2)
    model.vit.embeddings.position_embeddings.copy_(_official_layout(48, 4)[None])
    model.decoder.decoder_pos_embed.copy_(_official_layout(32, 4)[None])
    return model


def _hub_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key names of the Hub's facebook/vit-mae-* files (transformers before its 5.x renaming)."""
    renames = [
        ("vit.layers.", "vit.encoder.layer."),
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ]
    renamed = {}
    for key, value in state_dict.items():
        for old, new in renames:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


# ----------------------------------------------------------------------------------- position embeddings


def test_sincos_table_is_the_official_layout():
    table = sincos_2d_pos_embed(48, 4, cls_token=True)
    assert table.shape == (17, 48) and table.dtype == torch.float32
    assert torch.equal(table[0], torch.zeros(48))
    torch.testing.assert_close(table, _official_layout(48, 4), atol=0, rtol=0)
    # written out: channel k < 12 of the first half is sin(column * 10000^(-k / 12)), then cos; the
    # second half encodes the row the same way
    row, col = divmod(np.arange(16), 4)
    omega = 1.0 / 10000 ** (np.arange(12) / 12)
    expected = np.concatenate(
        [np.sin(np.outer(col, omega)), np.cos(np.outer(col, omega)), np.sin(np.outer(row, omega)),
         np.cos(np.outer(row, omega))], axis=1,
    )  # fmt: skip
    np.testing.assert_allclose(table[1:].numpy(), expected, atol=1e-7)


def test_sincos_table_of_a_rectangular_grid_and_bad_widths():
    table = sincos_2d_pos_embed(8, (2, 3))
    assert table.shape == (6, 8)
    assert torch.equal(table[:3, 4:], table[:1, 4:].expand(3, -1))  # one row: the row half is constant
    assert torch.equal(table[0, :4], table[3, :4])  # one column, two rows: the column half agrees
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d_pos_embed(6, 2)


def test_position_tables_are_fixed_buffers_in_the_state_dict():
    model = MaskedAutoencoder(**SMALL)
    names = {name for name, _ in model.named_parameters()}
    assert "pos_embed" not in names and "decoder_pos_embed" not in names
    assert {"pos_embed", "decoder_pos_embed"} <= model.state_dict().keys()
    assert torch.equal(model.pos_embed[0], sincos_2d_pos_embed(48, 4, cls_token=True))


# ----------------------------------------------------------------------------------------------- masking


def test_masking_keeps_the_quarter_of_lowest_noise_in_each_sample():
    model = MaskedAutoencoder(**SMALL).eval()
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(0))
    tokens = torch.arange(16.0)[None, :, None].expand(3, -1, 2)
    kept, mask, ids_restore = model.random_masking(tokens, noise)
    assert kept.shape == (3, 4, 2) and mask.sum(1).tolist() == [12.0] * 3
    for b in range(3):
        lowest = noise[b].argsort()[:4]
        assert kept[b, :, 0].tolist() == lowest.float().tolist()
        assert mask[b, lowest].sum() == 0
        assert torch.equal(noise[b].argsort()[ids_restore[b]], torch.arange(16))


def test_the_same_noise_gives_the_same_loss_and_other_noise_another():
    model = MaskedAutoencoder(**SMALL).eval()
    images = torch.randn(2, 3, 32, 32)
    generator = torch.Generator().manual_seed(1)
    noise = torch.rand(2, 16, generator=generator)
    with torch.no_grad():
        first, second = model(images, noise)[0], model(images, noise.clone())[0]
        other = model(images, torch.rand(2, 16, generator=generator))[0]
    assert first == second and first != other


def test_images_of_another_size_are_refused_with_both_sizes():
    with pytest.raises(ValueError, match=r"expects 32x32 images \(img_size\), found 64x64"):
        MaskedAutoencoder(**SMALL)(torch.zeros(1, 3, 64, 64))


def test_patchify_and_unpatchify_round_trip_in_row_major_order():
    model = MaskedAutoencoder(**SMALL)
    images = torch.randn(2, 3, 32, 32)
    patches = model.patchify(images)
    assert patches.shape == (2, 16, 192)
    # patch 5 is row 1, column 1; its first values are pixel (8, 8)'s channels
    assert torch.equal(patches[0, 5, :3], images[0, :, 8, 8])
    assert torch.equal(model.unpatchify(patches), images)


# ---------------------------------------------------------------------------------------- transformers


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_same_reconstruction_and_loss_as_transformers_vitmae(norm_pix_loss):
    hf = _randomised_hf(norm_pix_loss)
    ours = MaskedAutoencoder(**SMALL, norm_pix_loss=norm_pix_loss).eval()
    ours.load_state_dict(convert_transformers_mae(hf.state_dict()), strict=True)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf(pixel_values=images, noise=noise)
        loss, pred, mask = ours(images, noise)
    assert expected.logits.std() > 0.1, (
        "the reference output is nearly constant: the test would prove nothing"
    )
    assert (pred - expected.logits).abs().max() <= 1e-5
    assert (loss - expected.loss).abs() <= 1e-5 and torch.equal(mask, expected.mask)
    assert torch.equal(ours.unpatchify(pred), hf.unpatchify(pred))


def test_transformers_state_dicts_load_in_both_key_layouts(tmp_path):
    hf = _randomised_hf(True)
    for layout, state_dict in (("current", hf.state_dict()), ("hub", _hub_names(hf.state_dict()))):
        path = tmp_path / f"{layout}.pth"
        torch.save(state_dict, path)
        model = create_model("mae_tiny", pretrained=path, **SMALL)
        qkv = torch.cat([getattr(hf.vit.layers[1].attention, f"{n}_proj").weight for n in "qkv"])
        assert torch.equal(model.blocks[1].attn.qkv.weight, qkv), layout
        assert torch.equal(model.decoder_pred.weight, hf.decoder.decoder_pred.weight), layout


def test_an_incomplete_transformers_file_is_refused_naming_the_keys(tmp_path):
    state_dict = {
        k: v for k, v in _randomised_hf(True).state_dict().items() if "layers.0.attention.k_proj" not in k
    }
    torch.save(state_dict, tmp_path / "broken.pth")
    with pytest.raises(
        ValueError, match=r"broken.pth does not fit MaskedAutoencoder: missing keys .*blocks.0.attn.qkv"
    ):
        load_mae_checkpoint(MaskedAutoencoder(**SMALL), tmp_path / "broken.pth")


# ------------------------------------------------------------------------------------ official checkpoints

# models_mae.py's attribute names (facebookresearch/mae at efb2a80) with timm 0.3.2's Block, for depth 1
OFFICIAL_ENCODER = [
    "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
    *[f"blocks.0.{k}" for k in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
      "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
      "mlp.fc2.weight", "mlp.fc2.bias")],
    "norm.weight", "norm.bias",
]  # fmt: skip
OFFICIAL_DECODER = [
    "mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias",
    *[k.replace("blocks.0.", "decoder_blocks.0.") for k in OFFICIAL_ENCODER if k.startswith("blocks.0.")],
    "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias",
]  # fmt: skip


def test_state_dict_keys_are_the_official_ones():
    model = MaskedAutoencoder(**{**SMALL, "depth": 1, "decoder_depth": 1})
    assert sorted(model.state_dict()) == sorted(OFFICIAL_ENCODER + OFFICIAL_DECODER)


def test_official_visualize_checkpoint_loads_whole(tmp_path):
    source = MaskedAutoencoder(**SMALL)
    torch.nn.init.normal_(source.decoder_pred.weight)
    torch.save({"model": source.state_dict()}, tmp_path / "mae_visualize_vit_tiny.pth")
    model = create_model("mae_tiny", pretrained=tmp_path / "mae_visualize_vit_tiny.pth", **SMALL)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_official_encoder_only_pretrain_checkpoint_loads_into_mae_and_vit(tmp_path, caplog):
    """mae_pretrain_vit_*.pth hold the encoder under ``model``: the MAE keeps a fresh decoder (warned); the
    ViT for fine-tuning takes every encoder weight and keeps its own head."""
    source = MaskedAutoencoder(**SMALL)
    encoder = {k: v for k, v in source.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": encoder}, path)
    with caplog.at_level(logging.WARNING):
        mae = load_mae_checkpoint(MaskedAutoencoder(**SMALL), path)
    assert "holds an encoder only" in caplog.text
    assert torch.equal(mae.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
    load_vit_checkpoint(vit, path)
    for key, value in encoder.items():
        assert torch.equal(vit.state_dict()[key], value), key


def test_a_file_that_is_not_an_mae_is_refused(tmp_path):
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth does not fit MaskedAutoencoder"):
        load_mae_checkpoint(MaskedAutoencoder(**SMALL), tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_mae_checkpoint(MaskedAutoencoder(**SMALL), tmp_path / "nothing.pth")


# ----------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    ("name", "encoder", "decoder", "patch"),
    [
        ("mae_vit_b16", 85_647_360, 26_008_320, 16),
        ("mae_vit_l16", 303_099_904, 26_139_392, 16),
        ("mae_vit_h14", 630_435_840, 26_178_124, 14),
    ],
)
def test_preset_parameter_counts(name, encoder, decoder, patch):
    with torch.device("meta"):
        model = PRESETS[name]()
    counts = {"encoder": 0, "decoder": 0}
    for key, param in model.named_parameters():
        counts["decoder" if key.startswith(("decoder", "mask_token")) else "encoder"] += param.numel()
    assert counts == {"encoder": encoder, "decoder": decoder}
    assert model.patch_embed.patch_size == (patch, patch) and model.num_patches == (224 // patch) ** 2
    # the encoder is vtrain's ViT of that size without its head and learned position table (ViT paper
    # Table 1: 86 M / 307 M / 632 M with them)
    with torch.device("meta"):
        vit = create_model(name.replace("mae_", ""), num_classes=0)
    assert sum(p.numel() for p in vit.parameters()) - vit.pos_embed.numel() == encoder
    # the paper's decoder: 8 blocks of width 512 and 16 heads
    assert len(model.decoder_blocks) == 8 and model.decoder_embed.out_features == 512
    assert model.decoder_blocks[0].attn.num_heads == 16 and model.mask_ratio == 0.75


def test_mae_tiny_and_the_official_initialisation():
    model = create_model("mae_tiny")
    assert sum(p.numel() for p in model.parameters()) == 403_776 and model.norm_pix_loss
    fan_in, fan_out = model.blocks[0].attn.qkv.weight.shape[1], model.blocks[0].attn.qkv.weight.shape[0]
    bound = math.sqrt(6 / (fan_in + fan_out))  # Xavier-uniform over the whole qkv matrix
    assert (
        model.blocks[0].attn.qkv.weight.abs().max() <= bound
        and model.blocks[0].attn.qkv.bias.abs().sum() == 0
    )
    assert 0.01 < model.mask_token.std() < 0.03 and model.norm.eps == 1e-6


def test_mask_and_loss_stay_float32_under_bf16_autocast():
    """The loss divides by the number of removed patches, which bfloat16 cannot count exactly past 256."""
    model = MaskedAutoencoder(**SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, mask = model(torch.randn(2, 3, 32, 32))
    assert pred.dtype == torch.bfloat16 and mask.dtype == torch.float32 and loss.dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    from tests.numerics import assert_checkpointing_changes_nothing

    torch.manual_seed(0)
    plain = MaskedAutoencoder(**SMALL)
    checkpointed = MaskedAutoencoder(**SMALL, grad_checkpointing=True)
    images = torch.randn(2, 3, 32, 32)
    # the masking noise is drawn inside the forward, from the same seed in both runs
    blocks = SMALL["depth"] + SMALL["decoder_depth"]
    assert_checkpointing_changes_nothing(plain, checkpointed, lambda m: m(images)[0], blocks, monkeypatch)


# ------------------------------------------------------------------------- fine-tuning and linear probing

# SMALL's encoder as a classifier (mae_vit_b16_classifier's head on a tiny encoder)
CLASSIFIER = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)


def _pretrained_mae(tmp_path, encoder_only: bool):
    """A randomised MAE saved as the official files: mae_pretrain (encoder only) or mae_visualize (whole)."""
    torch.manual_seed(0)
    source = MaskedAutoencoder(**SMALL).eval()
    with torch.no_grad():
        for name, param in source.named_parameters():
            param.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.2)
    state_dict = source.state_dict()
    if encoder_only:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(("decoder", "mask_token"))}
    path = tmp_path / ("mae_pretrain.pth" if encoder_only else "mae_visualize.pth")
    torch.save({"model": state_dict}, path)
    return source, path


def test_official_finetuned_checkpoint_gives_timms_logits(tmp_path):
    """mae_finetuned_vit_*.pth (models_vit.py with global_pool: fc_norm.*, head.*, no norm.*) loads whole
    and gives the logits of timm's ViT built with global_pool='avg', fc_norm=True."""
    torch.manual_seed(0)
    timm_vit = timm.models.vision_transformer.VisionTransformer(**CLASSIFIER, global_pool="avg", fc_norm=True)
    with torch.no_grad():
        for name, param in timm_vit.named_parameters():
            param.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.2)
    path = tmp_path / "mae_finetuned_vit_tiny.pth"
    torch.save({"model": timm_vit.state_dict()}, path)
    ours = create_model("mae_vit_b16_classifier", pretrained=path, **CLASSIFIER)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, found = timm_vit.eval()(images), ours.eval()(images)
    assert expected.std() > 0.1
    assert (found - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("encoder_only", [True, False])
def test_pretrained_mae_loads_into_the_finetuning_classifier(tmp_path, caplog, encoder_only):
    """main_finetune.py:233-257: every encoder weight but the final norm (fc_norm takes its place and keeps
    LayerNorm's 1 / 0), the decoder dropped with a count, the head drawn with std 2e-5 and a zero bias."""
    source, path = _pretrained_mae(tmp_path, encoder_only)
    with caplog.at_level(logging.INFO):
        model = create_model("mae_vit_b16_classifier", pretrained=path, **CLASSIFIER)
    for key, value in source.state_dict().items():
        if not key.startswith(("decoder", "mask_token", "norm.")):
            assert torch.equal(model.state_dict()[key], value), key
    assert not encoder_only or "decoder keys" not in caplog.text
    decoder_keys = sum(k.startswith(("decoder", "mask_token")) for k in source.state_dict())
    assert encoder_only or f"dropped the {decoder_keys} decoder keys" in caplog.text
    assert torch.equal(model.fc_norm.weight, torch.ones(48))
    assert torch.equal(model.fc_norm.bias, torch.zeros(48))
    assert 1.0e-5 < model.head.weight.std().item() < 3.0e-5 and not model.head.bias.any()
    assert model.global_pool == "avg" and isinstance(model.norm, torch.nn.Identity)


def test_linear_probe_reads_the_mae_encoders_class_token(tmp_path):
    """main_linprobe.py:189-227: the class token after the encoder's norm, which is the MAE encoder's output
    on the whole image; BatchNorm1d without affine (eps 1e-6) before the head; only the head trains."""
    source, path = _pretrained_mae(tmp_path, encoder_only=True)
    model = create_model(
        "mae_vit_b16_classifier", pretrained=path, global_pool="token", linear_probe=True, head_init_std=0.01,
        **CLASSIFIER,
    ).eval()  # fmt: skip
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    source.mask_ratio = 0.0  # keep every patch, in patch order
    with torch.no_grad():
        latent, _, _ = source.forward_encoder(images, torch.arange(16.0).expand(2, -1))
        features = model.forward_features(images)[:, 0]
    assert (features - latent[:, 0]).abs().max() <= 1e-5
    bn, linear = model.head
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert 0.008 < linear.weight.std().item() < 0.012
    trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trained == ["head.1.bias", "head.1.weight"]


def test_pretrained_position_table_is_interpolated_bicubically(tmp_path):
    """util/pos_embed.py:75-96: the 4 x 4 grid to 6 x 6 by F.interpolate(bicubic, align_corners=False), the
    class-token row kept."""
    source, path = _pretrained_mae(tmp_path, encoder_only=True)
    model = create_model("mae_vit_b16_classifier", pretrained=path, **{**CLASSIFIER, "img_size": 48})
    table = source.pos_embed
    grid = table[:, 1:].reshape(1, 4, 4, 48).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    expected = torch.cat([table[:, :1], grid.flatten(1, 2)], dim=1)
    assert (model.pos_embed - expected).abs().max() <= 1e-6


def test_a_head_of_another_size_is_re_initialised_and_a_foreign_file_refused(tmp_path, caplog):
    source = create_model("mae_vit_b16_classifier", **{**CLASSIFIER, "num_classes": 1000})
    torch.save({"model": source.state_dict()}, tmp_path / "in1k.pth")
    with caplog.at_level(logging.WARNING):
        model = load_mae_encoder(create_model("mae_vit_b16_classifier", **CLASSIFIER), tmp_path / "in1k.pth")
    assert "head does not fit" in caplog.text and model.head.weight.shape == (10, 48)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth does not fit VisionTransformer: missing keys"):
        load_mae_encoder(create_model("mae_vit_b16_classifier", **CLASSIFIER), tmp_path / "other.pth")


def test_classifier_presets_are_the_official_vits():
    with torch.device("meta"):
        b16 = create_model("mae_vit_b16_classifier", num_classes=1000)
        l16 = create_model("mae_vit_l16_classifier", num_classes=1000)
    assert sum(p.numel() for p in b16.parameters()) == 86_567_656  # = vit_b16 (models_vit.py:56-60)
    assert sum(p.numel() for p in l16.parameters()) == 304_326_632
    # mae_tiny_classifier takes every encoder weight of mae_tiny, shape for shape
    tiny = create_model("mae_tiny_classifier", num_classes=10).state_dict()
    mae = PRESETS["mae_tiny"]().state_dict()
    encoder = {k: v for k, v in mae.items() if not k.startswith(("decoder", "mask_token", "norm."))}
    assert all(tiny[k].shape == v.shape for k, v in encoder.items())
