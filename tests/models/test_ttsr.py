"""TTSR: official key names and shapes, strict loading of an official-format checkpoint, the texture
search and transfer, the losses and the demo image from the official repository."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

import vtrain
from vtrain.models.ttsr import LTE, TTSR, Discriminator, SearchTransfer, load_pretrained, search_transfer
from vtrain.models.ttsr.losses import (
    PerceptualLoss,
    critic_loss,
    generator_adversarial_loss,
    transferal_perceptual_loss,
)
from vtrain.models.ttsr.search_transfer import most_relevant, patches_at


def official_keys(blocks=(16, 16, 8, 4), n: int = 64) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of researchmm/TTSR's saved state dict (``LTE_copy`` left out, as its trainer
    saves it), written out from the structure of its model/MainNet.py and model/LTE.py."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_in: int, c_out: int, k: int = 3) -> None:
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (c_out, c_in, k, k), (c_out,)

    def res_blocks(prefix: str, count: int) -> None:
        for i in range(count):
            conv(f"{prefix}.{i}.conv1", n, n)
            conv(f"{prefix}.{i}.conv2", n, n)

    conv("MainNet.SFE.conv_head", 3, n)
    res_blocks("MainNet.SFE.RBs", blocks[0])
    conv("MainNet.SFE.conv_tail", n, n)
    conv("MainNet.conv11_head", 256 + n, n)
    res_blocks("MainNet.RB11", blocks[1])
    conv("MainNet.conv11_tail", n, n)
    conv("MainNet.conv12", n, 4 * n)
    conv("MainNet.conv22_head", 128 + n, n)
    conv("MainNet.ex12.conv12", n, n, 1)
    conv("MainNet.ex12.conv21", n, n)
    conv("MainNet.ex12.conv_merge1", 2 * n, n)
    conv("MainNet.ex12.conv_merge2", 2 * n, n)
    res_blocks("MainNet.RB21", blocks[2])
    res_blocks("MainNet.RB22", blocks[2])
    conv("MainNet.conv21_tail", n, n)
    conv("MainNet.conv22_tail", n, n)
    conv("MainNet.conv23", n, 4 * n)
    conv("MainNet.conv33_head", 64 + n, n)
    for name in ("conv12", "conv13", "conv23"):
        conv(f"MainNet.ex123.{name}", n, n, 1)
    for name in ("conv21", "conv31_1", "conv31_2", "conv32"):
        conv(f"MainNet.ex123.{name}", n, n)
    for i in (1, 2, 3):
        conv(f"MainNet.ex123.conv_merge{i}", 3 * n, n)
    for stage in ("RB31", "RB32", "RB33"):
        res_blocks(f"MainNet.{stage}", blocks[3])
    for i in (1, 2, 3):
        conv(f"MainNet.conv3{i}_tail", n, n)
    conv("MainNet.merge_tail.conv13", n, n, 1)
    conv("MainNet.merge_tail.conv23", n, n, 1)
    conv("MainNet.merge_tail.conv_merge", 3 * n, n)
    conv("MainNet.merge_tail.conv_tail1", n, n // 2)
    conv("MainNet.merge_tail.conv_tail2", n // 2, 3, 1)
    for index, c_in, c_out in ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256)):
        slice_ = 1 if index < 2 else 2 if index < 7 else 3
        conv(f"LTE.slice{slice_}.{index}", c_in, c_out)
    conv("LTE.sub_mean", 3, 3, 1)
    return keys


def inputs(batch: int = 1, h: int = 6, w: int = 8, ref_h: int = 16, ref_w: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(batch, 3, h, w, generator=g) * 2 - 1
    lr_up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic").clamp(-1, 1)
    ref = torch.rand(batch, 3, ref_h, ref_w, generator=g) * 2 - 1
    ref_down = torch.nn.functional.interpolate(ref, scale_factor=0.25, mode="bicubic")
    return lr, lr_up, ref, torch.nn.functional.interpolate(ref_down, scale_factor=4, mode="bicubic")


@pytest.fixture(scope="module")
def ttsr_model() -> TTSR:
    torch.manual_seed(0)
    return vtrain.create_model("ttsr", vgg_weights="scratch").eval()


def test_state_dict_has_the_official_keys_and_shapes(ttsr_model):
    ours = {k: tuple(v.shape) for k, v in ttsr_model.state_dict().items()}
    assert ours == official_keys()
    assert len(ours) == 316  # what the official trainer saves for the default TTSR


def test_official_format_checkpoint_loads_strictly_and_round_trips(tmp_path):
    # the official --num_res_blocks option at its smallest, to keep the test fast; keys as above
    blocks = (1, 1, 1, 1)
    g = torch.Generator().manual_seed(1)
    official = {k: torch.randn(shape, generator=g) * 0.05 for k, shape in official_keys(blocks).items()}
    path = tmp_path / "TTSR.pt"
    torch.save(official, path)
    model = vtrain.create_model("ttsr", pretrained=path, num_res_blocks=blocks).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, official[key]), key
    with torch.no_grad():
        first = model(*inputs())
    torch.save(model.state_dict(), tmp_path / "again.pt")
    again = load_pretrained(
        vtrain.create_model("ttsr", vgg_weights="scratch", num_res_blocks=blocks), tmp_path / "again.pt"
    ).eval()
    with torch.no_grad():
        second = again(*inputs())
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_checkpoint_with_the_frozen_copy_loads_and_a_wrong_one_is_refused(tmp_path):
    model = vtrain.create_model("ttsr_tiny", vgg_weights="scratch")
    state = model.state_dict()
    with_copy = {
        **state,
        **{k.replace("LTE.", "LTE_copy.", 1): v for k, v in state.items() if k.startswith("LTE.")},
    }
    torch.save(with_copy, tmp_path / "full.pt")
    load_pretrained(vtrain.create_model("ttsr_tiny", vgg_weights="scratch"), tmp_path / "full.pt")
    del state["MainNet.conv11_head.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"broken\.pt.*missing keys.*conv11_head"):
        load_pretrained(vtrain.create_model("ttsr_tiny", vgg_weights="scratch"), tmp_path / "broken.pt")


def test_forward_shapes_and_range():
    model = vtrain.create_model("ttsr_tiny", vgg_weights="scratch").eval()
    with torch.no_grad():
        out = model(*inputs(batch=2, h=6, w=8, ref_h=24, ref_w=16))
    assert out.sr.shape == (2, 3, 24, 32)
    assert out.S.shape == (2, 1, 6, 8)
    assert out.T_lv3.shape == (2, 256, 6, 8)
    assert out.T_lv2.shape == (2, 128, 12, 16)
    assert out.T_lv1.shape == (2, 64, 24, 32)
    assert out.sr.abs().max() <= 1


def test_search_transfer_finds_each_patch_in_an_identical_reference():
    """With the reference's features equal to the LR's, every position finds itself (relevance 1), and the
    transferred textures equal the reference's wherever 9 patches overlap (away from the border)."""
    g = torch.Generator().manual_seed(0)
    lv3 = torch.randn(2, 256, 6, 7, generator=g)
    lv2, lv1 = torch.randn(2, 128, 12, 14, generator=g), torch.randn(2, 64, 24, 28, generator=g)
    S, T3, T2, T1 = SearchTransfer()(lv3, lv3, lv1, lv2, lv3)
    torch.testing.assert_close(S, torch.ones_like(S))
    torch.testing.assert_close(T3[..., 1:-1, 1:-1], lv3[..., 1:-1, 1:-1])
    torch.testing.assert_close(T2[..., 2:-2, 2:-2], lv2[..., 2:-2, 2:-2])
    torch.testing.assert_close(T1[..., 4:-4, 4:-4], lv1[..., 4:-4, 4:-4])


def unfolded_relevance(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The relevance as researchmm/TTSR's model/SearchTransfer.py:24-31 (550e4c9) computes it: normalised
    unfolded 3x3 patches, every key patch against every query patch: [B, hr*wr, h*w]."""
    q = F.normalize(F.unfold(query, kernel_size=3, padding=1), dim=1)
    k = F.normalize(F.unfold(key, kernel_size=3, padding=1), dim=1)
    return torch.bmm(k.transpose(1, 2), q)


@pytest.mark.parametrize("band_elements", [2**26, 3000])  # one band; a band of one query row
def test_search_equals_the_unfolded_relevance_search(monkeypatch, band_elements):
    """The Gram-matrix search picks the official argmax (up to float32 rounding: where two reference
    patches tie within 1e-5, either is the argmax), its soft attention is the official max, and the
    textures are those of the official picks; gradients reach Q and K through S as through the max."""
    monkeypatch.setattr(search_transfer, "BAND_ELEMENTS", band_elements)
    g = torch.Generator().manual_seed(0)
    # non-negative, spatially smooth features like VGG's relu3_1, of sizes that are not multiples
    query = F.avg_pool2d(torch.randn(2, 256, 9, 13, generator=g).relu(), 3, 1, 1).requires_grad_(True)
    key = F.avg_pool2d(torch.randn(2, 256, 11, 7, generator=g).relu(), 3, 1, 1).requires_grad_(True)
    lv2, lv1 = torch.randn(2, 128, 22, 14, generator=g), torch.randn(2, 64, 44, 28, generator=g)
    relevance = unfolded_relevance(query, key)
    best, official = relevance.max(dim=1)
    hard = most_relevant(query, key)
    picked = relevance.gather(1, hard[:, None])[:, 0]
    assert (best - picked).abs().max() < 1e-5
    assert (hard == official).float().mean() > 0.99
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(most_relevant(query, key), hard)  # searched in float32 under bf16 autocast
    S, T3, T2, T1 = SearchTransfer()(query, key, lv1, lv2, key)
    torch.testing.assert_close(S.flatten(1), best, atol=1e-5, rtol=0)
    expected = F.fold(patches_at(lv1, hard, 12, 4, 4), (36, 52), 12, padding=4, stride=4) / 9
    torch.testing.assert_close(T1, expected)
    (grad_q, grad_k) = torch.autograd.grad(S.sum(), (query, key))
    (want_q, want_k) = torch.autograd.grad(picked.sum(), (query, key))
    torch.testing.assert_close(grad_q, want_q, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad_k, want_k, atol=1e-5, rtol=1e-4)


def test_patches_at_equals_unfolding_then_picking():
    g = torch.Generator().manual_seed(0)
    value = torch.randn(2, 5, 24, 20, generator=g, requires_grad=True)
    index = torch.randint(0, 30, (2, 7), generator=g)
    picked = patches_at(value, index, kernel=12, padding=4, stride=4)  # the relu1_1 grid: 6 x 5 = 30
    unfolded = F.unfold(value, kernel_size=12, padding=4, stride=4)
    expected = torch.gather(unfolded, 2, index[:, None, :].expand(-1, unfolded.shape[1], -1))
    assert torch.equal(picked, expected)
    (grad,) = torch.autograd.grad((picked * expected.detach()).sum(), value)
    (expected_grad,) = torch.autograd.grad((expected * expected.detach()).sum(), value)
    torch.testing.assert_close(grad, expected_grad)


def test_search_transfer_follows_a_shifted_reference():
    """A reference that is the LR content moved by one position hands back the unshifted textures."""
    g = torch.Generator().manual_seed(0)
    lv3 = torch.randn(1, 256, 8, 8, generator=g)
    ref_lv3 = torch.roll(lv3, shifts=1, dims=-1)
    ref_lv1 = torch.roll(torch.randn(1, 64, 32, 32, generator=g), shifts=4, dims=-1)
    ref_lv2 = torch.roll(torch.randn(1, 128, 16, 16, generator=g), shifts=2, dims=-1)
    _, T3, _, T1 = SearchTransfer()(lv3, ref_lv3, ref_lv1, ref_lv2, ref_lv3)
    torch.testing.assert_close(T3[..., 2:-2, 2:-2], lv3[..., 2:-2, 2:-2])
    torch.testing.assert_close(T1[..., 8:-8, 8:-8], torch.roll(ref_lv1, -4, -1)[..., 8:-8, 8:-8])


def test_texture_features_train_the_image_not_the_extractor():
    model = vtrain.create_model("ttsr_tiny", vgg_weights="scratch")
    sr = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    sum(f.sum() for f in model.texture_features(sr)).backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.LTE.parameters())
    assert torch.equal(model.texture_features(sr)[2], model.LTE((sr + 1) / 2)[2])


def test_lte_reads_torchvision_vgg19_weights(tmp_path):
    torch.manual_seed(0)
    vgg = torch.nn.Module()  # torchvision's vgg19 without its (slow to initialise) classifier
    vgg.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    torch.save(vgg.state_dict(), tmp_path / "vgg19.pth")
    lte = LTE(tmp_path / "vgg19.pth")
    conv = getattr(lte.slice3, "10")
    assert torch.equal(conv.weight, vgg.features[10].weight)
    assert conv.weight.requires_grad and not lte.sub_mean.weight.requires_grad
    x = torch.rand(1, 3, 8, 8)
    expected = vgg.features[:12](
        (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    )
    torch.testing.assert_close(lte(x)[2], expected)


def test_discriminator_official_layout():
    d = Discriminator(160)
    assert d.fc1.weight.shape == (1024, 5 * 5 * 512)
    assert [k for k in d.state_dict() if k.endswith("weight")] == [
        *(f"conv{i}.weight" for i in range(1, 11)),
        "fc1.weight",
        "fc2.weight",
    ]
    assert Discriminator(64)(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


class LinearCritic(torch.nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).flatten(1).sum(1, keepdim=True)


def test_gradient_penalty_is_zero_for_a_unit_gradient_and_grows_with_its_norm():
    w = torch.randn(3, 4, 4)
    real, fake = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    _, penalty = critic_loss(LinearCritic(w / w.norm()), fake, real)
    assert penalty.item() == pytest.approx(0.0, abs=1e-9)
    loss, penalty = critic_loss(LinearCritic(2 * w / w.norm()), fake, real, gp_weight=10.0)
    assert penalty.item() == pytest.approx(10.0, rel=1e-5)
    critic = LinearCritic(2 * w / w.norm())
    wasserstein = critic(fake).mean() - critic(real).mean()
    assert loss.item() == pytest.approx((wasserstein + 10.0).item(), rel=1e-5)
    assert generator_adversarial_loss(critic, fake).item() == pytest.approx(-critic(fake).mean().item())


def test_transferal_and_perceptual_losses_vanish_on_a_match():
    g = torch.Generator().manual_seed(0)
    T3, T2, T1 = (
        torch.randn(1, 256, 4, 4, generator=g),
        torch.randn(1, 128, 8, 8, generator=g),
        torch.randn(1, 64, 16, 16, generator=g),
    )
    S = torch.rand(1, 1, 4, 4, generator=g)
    assert transferal_perceptual_loss((T1, T2, T3), S, T3, T2, T1).item() == 0
    moved = transferal_perceptual_loss((T1 + 1, T2, T3), S, T3, T2, T1)
    assert moved.item() == pytest.approx(1 / 3)  # squared error 1 at one of the three scales
    perceptual = PerceptualLoss(None)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    assert perceptual(image, image).item() == 0
    assert perceptual(image, image.flip(-1)).item() > 0


def test_official_demo_image_is_super_resolved_4x(shared_data):
    from vtrain.data.cufed import lr_sample

    demo = shared_data / "cufed_ttsr_demo" / "test" / "demo"
    lr = Image.open(demo / "lr" / "0.png").convert("RGB")
    ref = Image.open(demo / "ref" / "0.png").convert("RGB")
    assert lr.size == (88, 125) and ref.size == (370, 500)
    # windows of both keep the search small on a CPU (whole images: see scripts/bench_ttsr.py)
    lr, ref = lr.crop((20, 40, 60, 70)), ref.crop((100, 170, 263, 333))
    sample = {k: v[None] for k, v in lr_sample(lr, ref).items()}
    assert sample["ref"].shape[-2:] == (160, 160)  # cut to multiples of 4
    model = vtrain.create_model("ttsr_tiny", vgg_weights="scratch").eval()
    with torch.no_grad():
        out = model(sample["lr"], sample["lr_up"], sample["ref"], sample["ref_down_up"])
    assert out.sr.shape == (1, 3, 4 * lr.height, 4 * lr.width)
    assert out.S.shape == (1, 1, lr.height, lr.width)
    assert torch.isfinite(out.sr).all()
