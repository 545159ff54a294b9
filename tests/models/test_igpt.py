"""iGPT: preset sizes, equality with transformers' ImageGPT, causality, BERT masking, KV-cache sampling."""

from __future__ import annotations

import math

import pytest
import torch

import vtrain
from vtrain.models.igpt import ImageGPT, convert_hf_imagegpt, gelu2, load_igpt_checkpoint

SMALL = dict(vocab_size=16, img_size=8, embed_dim=64, depth=3, num_heads=4)


def _hf_model(cls_name: str = "ImageGPTForCausalImageModeling", **config):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ImageGPTConfig(vocab_size=17, n_positions=64, n_embd=64, n_layer=3, n_head=4, **config)
    model = getattr(transformers, cls_name)(cfg).eval()
    with torch.no_grad():  # random weights everywhere (biases stay zero, as in the converted official ones)
        for name, param in model.named_parameters():
            if not name.endswith("bias"):
                param.normal_(0.0, 0.1).add_(1.0 if ".ln_" in name else 0.0)
    return model


def _sos_inputs(tokens: torch.Tensor, sos: int = 16) -> torch.Tensor:
    """transformers reads the SOS token then the tokens shifted by one."""
    return torch.cat([torch.full((len(tokens), 1), sos), tokens[:, :-1]], dim=1)


@pytest.mark.parametrize(
    ("name", "params"),
    [("igpt_s", 76_571_648), ("igpt_m", 455_157_760), ("igpt_l", 1_362_250_752), ("igpt_xl", 6_810_875_904)],
)
def test_preset_sizes_match_the_paper(name, params):
    """The paper's 76M / 455M / 1.4B / 6.8B (ours have no biases and keep SOS outside the vocabulary)."""
    with torch.device("meta"):
        model = vtrain.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params


def test_logits_equal_transformers_imagegpt(tmp_path):
    hf = _hf_model()
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf.state_dict(), path)
    model = vtrain.create_model("igpt_s", pretrained=path, **SMALL).eval()
    tokens = torch.randint(0, 16, (3, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(_sos_inputs(tokens)).logits
        assert (model(tokens) - expected).abs().max() <= 1e-4
        # a prefix of the sequence gives the same logits as the prefix of the full output
        assert (model(tokens[:, :10]) - expected[:, :10]).abs().max() <= 1e-4


def test_backbone_and_classifier_files_load(tmp_path):
    hf = _hf_model("ImageGPTForImageClassification", num_labels=5)
    path = tmp_path / "clf.bin"
    torch.save(hf.state_dict(), path)
    # ImageGPTForImageClassification has no lm_head: the generative head stays zero (non-strict)
    model = load_igpt_checkpoint(ImageGPT(**SMALL, num_classes=5), path, strict=False).eval()
    tokens = torch.randint(0, 16, (2, 64))
    with torch.no_grad():
        expected = hf(_sos_inputs(tokens)).logits
        assert (model.classify(model.forward_features(tokens)) - expected).abs().max() <= 1e-4
    backbone = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "score.weight"}
    converted = convert_hf_imagegpt(backbone, vocab_size=16)
    assert torch.equal(converted["sos"], backbone["wte.weight"][16])
    assert torch.equal(converted["blocks.2.attn.qkv.weight"], backbone["h.2.attn.c_attn.weight"].t())


def test_checkpoint_errors_name_the_problem(tmp_path):
    hf = _hf_model()
    state = hf.state_dict()
    state["transformer.h.1.mlp.c_fc.bias"] = torch.ones_like(state["transformer.h.1.mlp.c_fc.bias"])
    torch.save(state, tmp_path / "bias.bin")
    with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.bias is non-zero"):
        vtrain.create_model("igpt_s", pretrained=tmp_path / "bias.bin", **SMALL)
    torch.save(hf.state_dict(), tmp_path / "ok.bin")
    with pytest.raises(ValueError, match="513|17 rows"):
        vtrain.create_model("igpt_s", pretrained=tmp_path / "ok.bin", **{**SMALL, "vocab_size": 512})
    with pytest.raises(ValueError, match=r"mis-shaped keys 'wpe \(64, 64\)"):
        vtrain.create_model("igpt_s", pretrained=tmp_path / "ok.bin", **{**SMALL, "img_size": 4})


def test_vtrain_state_dict_round_trip(tmp_path):
    model = ImageGPT(**SMALL, num_classes=3)
    torch.nn.init.normal_(model.head.weight)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    loaded = vtrain.create_model("igpt_s", pretrained=tmp_path / "m.pt", num_classes=3, **SMALL)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_official_details():
    model = ImageGPT(**SMALL)
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    x = torch.linspace(-4, 4, 9)
    assert torch.allclose(gelu2(x), x / (1 + torch.exp(-1.702 * x)))
    norm = model.blocks[0].norm1
    h = torch.randn(2, 5, 64) * 3 + 1
    assert torch.allclose(norm(h), h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-5), atol=1e-5)
    # the zero-initialised output projection predicts the uniform distribution: loss ln(k) at step 0
    tokens = torch.randint(0, 16, (2, 64))
    loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    assert loss.item() == pytest.approx(math.log(16), abs=1e-6)


def test_autoregressive_model_is_causal():
    model = ImageGPT(**SMALL).eval()
    torch.nn.init.normal_(model.head.weight)
    tokens = torch.randint(0, 16, (1, 64))
    changed = tokens.clone()
    changed[0, 30] = (changed[0, 30] + 1) % 16
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    # position t predicts token t from tokens < t: changing token 30 changes positions 31.. only
    assert torch.equal(a[:, :31], b[:, :31])
    assert not torch.allclose(a[:, 31:], b[:, 31:])


def test_bert_model_sees_both_sides_but_not_masked_tokens():
    model = ImageGPT(**SMALL, causal=False).eval()
    torch.nn.init.normal_(model.head.weight)
    assert model.sos is None
    tokens = torch.randint(0, 16, (1, 64))
    changed = tokens.clone()
    changed[0, 30] = (changed[0, 30] + 1) % 16
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, 30] = True
    with torch.no_grad():
        assert not torch.allclose(model(tokens)[:, :30], model(changed)[:, :30])
        assert torch.equal(model(tokens, mask), model(changed, mask))
    with pytest.raises(ValueError, match="causal"):
        model.sample(num_samples=1)


def test_kv_cache_sampling_equals_recomputing_the_prefix():
    model = ImageGPT(**SMALL).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    prefix = torch.randint(0, 16, (3, 20))
    greedy = [model.sample(num_samples=3, temperature=0.0, use_cache=c) for c in (True, False)]
    assert torch.equal(greedy[0], greedy[1])
    sampled = [
        model.sample(prefix=prefix, top_k=8, temperature=0.9, generator=torch.Generator().manual_seed(3),
                     use_cache=c)
        for c in (True, False)
    ]  # fmt: skip
    assert torch.equal(sampled[0], sampled[1])
    assert torch.equal(sampled[0][:, :20], prefix)
    assert sampled[0].shape == (3, 64)
    # top-k = 1 is greedy
    top1 = model.sample(prefix=prefix, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top1, model.sample(prefix=prefix, temperature=0.0))


def test_probe_features_stop_at_the_layer():
    model = ImageGPT(**SMALL).eval()
    tokens = torch.randint(0, 16, (2, 64))
    with torch.no_grad():
        h1 = model.forward_features(tokens, layer=1)
        x = model._inputs(tokens, 0, 64)
        expected = torch.nn.functional.rms_norm(model.blocks[0](x), (64,), eps=1e-5)
        assert torch.allclose(h1, expected, atol=1e-6)
        assert torch.equal(model.forward_features(tokens, layer=3), model.forward_features(tokens))
    with pytest.raises(ValueError, match="layer must be in"):
        model.forward_features(tokens, layer=4)
    with pytest.raises(ValueError, match="seq_len 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("causal", [True, False])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(causal, monkeypatch):
    from tests.numerics import assert_checkpointing_changes_nothing

    config = dict(SMALL, causal=causal, num_classes=3)
    plain, checkpointed = ImageGPT(**config), ImageGPT(**config, grad_checkpointing=True)
    with torch.no_grad():  # the heads start at zero, which would leave the layers without a gradient
        plain.head.weight.normal_(std=0.1)
        plain.clf_head.weight.normal_(std=0.1)
    tokens, labels = torch.randint(0, 16, (2, 64)), torch.tensor([0, 2])

    def loss(model: ImageGPT) -> torch.Tensor:
        features = model.forward_features(tokens)
        nll = torch.nn.functional.cross_entropy(model.head(features).transpose(1, 2), tokens)
        return nll + torch.nn.functional.cross_entropy(model.classify(features), labels)

    assert_checkpointing_changes_nothing(plain, checkpointed, loss, SMALL["depth"], monkeypatch)
    # sampling runs without grad: nothing to recompute, the same tokens
    generator = torch.Generator().manual_seed(0)
    if causal:
        sampled = checkpointed.sample(num_samples=1, length=5, generator=generator)
        assert sampled.shape == (1, 5)
