"""FPT: the mixture of softmaxes and the locality-constrained GT against brute-force references, the neck's
shapes on 3-5 levels, gradients reaching every parameter, parameter counts, the two placements (the
paper's on the backbone, the option after an FPN) with the pyramid each feeds the FPT, GroupNorm as the
released COCO config has it, and the detectors and the segmentation model built on it (torchvision key
names, checkpoint round trips, the multi-scale resize)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

import vtrain
from vtrain.models.fpt import (
    FeaturePyramidTransformer,
    GroundingTransformer,
    MixtureOfSoftmaxes,
    RenderingTransformer,
    SelfTransformer,
    load_pretrained,
)


def _reference_mos(mos: MixtureOfSoftmaxes, q, k, v) -> torch.Tensor:
    """The paper's F_mos written out: per part n, softmax_j(s^n_ij), mixed by pi_n = softmax(w_n . k_bar)."""
    n, d = mos.num_mixtures, mos.part
    pi = torch.softmax(k.mean(1) @ mos.mixture.weight.T, -1) if n > 1 else torch.ones(len(q), 1)
    total = 0
    for part in range(n):
        qn, kn = q[..., part * d : (part + 1) * d], k[..., part * d : (part + 1) * d]
        s = qn @ kn.transpose(1, 2) if mos.similarity == "dot" else -torch.cdist(qn, kn).pow(2)
        total = total + pi[:, part, None, None] * torch.softmax(s / d**0.5, -1)
    return total @ v


@pytest.mark.parametrize(("num_mixtures", "similarity"), [(1, "dot"), (2, "dot"), (4, "euclidean")])
def test_mixture_of_softmaxes_matches_the_written_out_formula(num_mixtures, similarity):
    torch.manual_seed(0)
    mos = MixtureOfSoftmaxes(16, num_mixtures, similarity)
    q, k, v = torch.randn(2, 12, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 5)
    torch.testing.assert_close(mos(q, k, v), _reference_mos(mos, q, k, v), atol=1e-5, rtol=1e-4)


def test_mixture_weights_depend_on_the_image():
    torch.manual_seed(0)
    mos = MixtureOfSoftmaxes(16, 4, "euclidean")
    pi = mos.mixture_weights(torch.randn(3, 9, 16))
    torch.testing.assert_close(pi.sum(-1), torch.ones(3))
    assert not torch.allclose(pi[0], pi[1])


def test_locality_constrained_gt_matches_a_per_position_window():
    torch.manual_seed(0)
    gt = GroundingTransformer(8, num_mixtures=4, window=3)
    fine, coarse = torch.randn(1, 8, 6, 7), torch.randn(1, 8, 3, 4)
    out = gt(fine, coarse)
    q, k, v = gt.query(fine), gt.key(coarse), gt.value(coarse)
    k_pad, v_pad = F.pad(k, (1, 1, 1, 1)), F.pad(v, (1, 1, 1, 1))  # zeros beyond the border (paper)
    mos = gt.attention
    for y in range(6):
        for x in range(7):
            cy, cx = y * 3 // 6, x * 4 // 7  # the coarse position under (y, x), nearest
            keys = k_pad[0, :, cy : cy + 3, cx : cx + 3].reshape(8, 9).T[None]
            values = v_pad[0, :, cy : cy + 3, cx : cx + 3].reshape(8, 9).T[None]
            # mixture weights come from the whole coarse map's mean key, as in the global GT
            pi = torch.softmax(k.mean((2, 3)) @ mos.mixture.weight.T, -1)
            expected = 0
            for n in range(4):
                qn = q[0, n * 2 : (n + 1) * 2, y, x]
                s = -(keys[0, :, n * 2 : (n + 1) * 2] - qn).pow(2).sum(-1) / 2**0.5
                expected = expected + pi[0, n] * torch.softmax(s, 0)
            torch.testing.assert_close(out[0, :, y, x], expected @ values[0], atol=1e-5, rtol=1e-4)


def test_global_gt_grounds_the_fine_level_in_the_coarse_one():
    torch.manual_seed(0)
    gt = GroundingTransformer(8)
    fine, coarse = torch.randn(2, 8, 10, 12), torch.randn(2, 8, 5, 6)
    out = gt(fine, coarse)
    assert out.shape == fine.shape
    # every output is a convex combination of the coarse values: inside their per-channel range
    v = gt.value(coarse).flatten(2)
    assert (out.flatten(2) <= v.amax(-1, keepdim=True) + 1e-5).all()
    assert (out.flatten(2) >= v.amin(-1, keepdim=True) - 1e-5).all()


def test_rendering_transformer_follows_the_paper():
    torch.manual_seed(0)
    rt = RenderingTransformer(8)
    coarse, fine = torch.randn(2, 8, 4, 5), torch.randn(2, 8, 8, 10)
    q_att = rt.refine(coarse * fine.mean((2, 3), keepdim=True))
    expected = rt.render(q_att + rt.downsample(fine))
    torch.testing.assert_close(rt(coarse, fine), expected)
    # two octaves apart: the strided conv's output is average-pooled to the coarse size
    assert rt(coarse, torch.randn(2, 8, 16, 20)).shape == coarse.shape


@pytest.mark.parametrize("num_levels", [3, 4, 5])
def test_fpt_keeps_the_pyramid_shapes_and_every_parameter_learns(num_levels):
    torch.manual_seed(0)
    fpt = FeaturePyramidTransformer(dim=16, num_levels=num_levels, gt_window=3 if num_levels == 5 else None)
    sizes = [(33, 45), (17, 23), (9, 12), (5, 6), (3, 3)][:num_levels]  # odd sizes, as from strided convs
    features = [torch.randn(2, 16, h, w, requires_grad=True) for h, w in sizes]
    outputs = fpt(features)
    assert [o.shape for o in outputs] == [f.shape for f in features]
    sum(o.square().mean() for o in outputs).backward()
    no_grad = [n for n, p in fpt.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    assert all(f.grad.abs().sum() > 0 for f in features)
    # level l: ST + (L - 1 - l) GTs + l RTs; pairs = L (L - 1) / 2 of each of GT and RT
    assert len(fpt.grounding) == len(fpt.rendering) == num_levels * (num_levels - 1) // 2


def test_fpt_output_depends_on_every_other_level():
    torch.manual_seed(0)
    fpt = FeaturePyramidTransformer(dim=8, num_levels=3).eval()
    features = [torch.randn(1, 8, 16 >> i, 16 >> i) for i in range(3)]
    base = fpt(features)
    for changed in range(3):
        perturbed = [f.clone() for f in features]
        perturbed[changed] += 1.0
        out = fpt(perturbed)
        assert all(not torch.allclose(o, b) for o, b in zip(out, base, strict=True))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts():
    c = 256
    assert _count(SelfTransformer(c)) == 3 * c * c + 3 * c + 2 * c == 197_888
    assert _count(GroundingTransformer(c)) == 3 * c * c + 3 * c + 4 * c == 198_400
    assert _count(RenderingTransformer(c)) == 27 * c * c + 3 * c == 1_770_240
    assert _count(FeaturePyramidTransformer(c, 4)) == 24_400_896
    for levels in (3, 5):
        pairs = levels * (levels - 1) // 2
        fusion = levels * (9 * (levels + 1) * c * c + c)
        expected = levels * 197_888 + pairs * (198_400 + 1_770_240) + fusion
        assert _count(FeaturePyramidTransformer(c, levels)) == expected


def test_fpt_with_group_norm_has_normalised_bias_free_fusions():
    c = 256
    fpt = FeaturePyramidTransformer(c, 4, norm_layer=lambda channels: torch.nn.GroupNorm(32, channels))
    assert fpt.fuse[0][0].bias is None and isinstance(fpt.fuse[0][1], torch.nn.GroupNorm)
    # each of the 4 fusions loses its bias (C) and gains GroupNorm's weight and bias (2 C)
    assert _count(fpt) == 24_400_896 + 4 * c == 24_401_920


# ResNet-50 C2..C5 widths, and the necks' parameter counts at C = 256 (biases included)
_WIDTHS = (256, 512, 1024, 2048)
_LATERALS = sum(_WIDTHS) * 256 + 4 * 256  # 1 x 1 convs: 984,064
_FPN = _LATERALS + 4 * (9 * 256 * 256 + 256)  # + torchvision FPN's 3 x 3 output convs: 3,344,384


def test_maskrcnn_r50_is_torchvisions_and_each_placement_has_its_neck():
    # without ImageNet weights torchvision trains BatchNorm: compare with frozen_bn=False
    reference = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    ours = vtrain.create_model("maskrcnn_r50", backbone_weights="scratch", frozen_bn=False)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    assert _count(ours) == _count(reference) == 44_454_513
    # the recipe's frozen BatchNorm keeps its affine terms as buffers: torchvision's documented 44,401,393
    plain = vtrain.create_model("maskrcnn_r50", backbone_weights="scratch")
    assert _count(plain) == 44_401_393
    assert _count(plain.backbone.fpn) == _FPN == 3_344_384
    fpt_keys = {f"backbone.fpt.{k}" for k in FeaturePyramidTransformer(256, 4).state_dict()}

    # the paper's placement (default): C2..C5 -> 1 x 1 laterals -> FPT, no FPN
    paper = vtrain.create_model("fpt_maskrcnn_r50", backbone_weights="scratch")
    assert paper.backbone.fpn is None and _count(paper.backbone.lateral) == _LATERALS == 984_064
    assert _count(paper) == 44_401_393 - _FPN + _LATERALS + 24_400_896 == 66_441_969
    added = {k for k in paper.state_dict() if k not in reference.state_dict()}
    assert added == fpt_keys | {f"backbone.lateral.{i}.0.{p}" for i in range(4) for p in ("weight", "bias")}

    # the option: FPN -> FPT
    after_fpn = vtrain.create_model("fpt_maskrcnn_r50", backbone_weights="scratch", fpt_placement="fpn")
    assert after_fpn.backbone.lateral is None
    assert _count(after_fpn) == 44_401_393 + 24_400_896 == 68_802_289
    assert {k for k in after_fpn.state_dict() if k not in reference.state_dict()} == fpt_keys


def test_group_norm_in_the_neck_and_heads_as_the_released_coco_config():
    gn = 2 * 256  # GroupNorm's weight and bias per 256-channel conv, which loses its bias (256)
    plain = vtrain.create_model("maskrcnn_r50", backbone_weights="scratch", group_norm=True)
    assert _count(plain.backbone.fpn) == _FPN + 8 * (gn - 256)
    box_head = plain.roi_heads.box_head  # 4conv1fc: 4 x (conv3x3 256, GN, ReLU), fc 1024
    assert _count(box_head) == 4 * (9 * 256 * 256 + gn) + 256 * 7 * 7 * 1024 + 1024 == 15_207_424
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in plain.roi_heads.mask_head.modules()) == 4
    assert _count(plain.roi_heads.mask_head) == 4 * (9 * 256 * 256 + gn)
    paper = vtrain.create_model("fpt_maskrcnn_r50", backbone_weights="scratch", group_norm=True)
    assert _count(paper.backbone) - _count(paper.backbone.body) == _LATERALS + 4 * (gn - 256) + 24_401_920


class _Inputs:
    """Records the pyramid a module is called with."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seen = None
        module.register_forward_pre_hook(lambda _, args: setattr(self, "seen", args[0]))


@pytest.mark.parametrize("placement", ["backbone", "fpn"])
def test_each_placement_feeds_the_fpt_the_pyramid_it_names(placement):
    torch.manual_seed(0)
    model = vtrain.create_model(
        "fpt_semseg_tiny", backbone_weights="scratch", num_classes=3, fpt_placement=placement
    ).eval()
    neck = model.backbone
    inputs = _Inputs(neck.fpt)
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = neck(images)
        stages = neck.body(images)
        if placement == "backbone":  # the laterals of C2..C5: no top-down path
            expected = [conv(x) for conv, x in zip(neck.lateral, stages.values(), strict=True)]
        else:
            expected = list(neck.fpn(stages).values())
    assert len(inputs.seen) == 4
    for seen, want in zip(inputs.seen, expected, strict=True):
        torch.testing.assert_close(seen, want)
    assert [tuple(x.shape[-2:]) for x in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_an_unknown_placement_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"model\.fpt_placement must be one of backbone, fpn, found 'neck'"):
        vtrain.create_model("fpt_maskrcnn_tiny", backbone_weights="scratch", fpt_placement="neck")


def test_multi_scale_training_and_its_own_test_scale():
    model = vtrain.create_model(
        "maskrcnn_tiny", backbone_weights="scratch", min_size=[160, 96], max_size=400, test_min_size=128
    )
    image = torch.rand(3, 100, 200)
    model.eval()
    assert model.transform([image])[0].image_sizes == [(128, 256)]
    model.train()
    torch.manual_seed(0)
    drawn = {model.transform([image])[0].image_sizes[0] for _ in range(20)}
    assert drawn == {(160, 320), (96, 192)}


def test_a_tiny_fpt_maskrcnn_trains_and_predicts():
    torch.manual_seed(0)
    model = vtrain.create_model("fpt_maskrcnn_tiny", backbone_weights="scratch", num_classes=5)
    images = [torch.rand(3, 96, 128), torch.rand(3, 128, 112)]
    masks = torch.zeros(1, 96, 128, dtype=torch.uint8)
    masks[0, 20:60, 30:90] = 1
    targets = [
        {"boxes": torch.tensor([[30.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([3]), "masks": masks},
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, 128, 112, dtype=torch.uint8),
        },
    ]
    losses = model(images, targets)
    assert set(losses) == {
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    }
    sum(losses.values()).backward()
    assert model.backbone.fpt.fuse[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert out[1]["masks"].shape[-2:] == (128, 112)


def test_checkpoint_round_trip_and_fpn_weights_into_fpt(tmp_path, caplog):
    torch.manual_seed(0)
    fpn = vtrain.create_model("maskrcnn_tiny", backbone_weights="scratch", num_classes=5)
    path = tmp_path / "fpn.pt"
    torch.save(fpn.state_dict(), path)
    fpt = vtrain.create_model("fpt_maskrcnn_tiny", num_classes=5, pretrained=path, fpt_placement="fpn")
    for key, value in fpn.state_dict().items():
        torch.testing.assert_close(fpt.state_dict()[key], value)
    # the paper's placement has no FPN: everything else loads, the FPN is left out with a warning
    with caplog.at_level("WARNING"):
        paper = vtrain.create_model("fpt_maskrcnn_tiny", num_classes=5, pretrained=path)
    assert "the model has no FPN" in caplog.text and "the FPT stays freshly initialised" in caplog.text
    for key, value in fpn.state_dict().items():
        if ".fpn." not in key:
            torch.testing.assert_close(paper.state_dict()[key], value)
    # another number of classes: the class-dependent heads stay initialised, the rest loads
    other = vtrain.create_model(
        "fpt_maskrcnn_tiny", backbone_weights="scratch", num_classes=3, fpt_placement="fpn"
    )
    load_pretrained(other, path)
    torch.testing.assert_close(
        other.backbone.fpn.inner_blocks[0][0].weight, fpn.backbone.fpn.inner_blocks[0][0].weight
    )


@pytest.mark.parametrize("name", ["fpt_semseg_tiny", "fpn_semseg_tiny"])
def test_segmentation_model_gives_logits_at_input_size(name):
    model = vtrain.create_model(name, backbone_weights="scratch", num_classes=7)
    logits = model(torch.randn(2, 3, 75, 101))
    assert logits.shape == (2, 7, 75, 101)
    logits.logsumexp(1).mean().backward()
    assert model.backbone.body.conv1.weight.grad is not None


def test_backbone_weights_from_a_local_file(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    model = vtrain.create_model("fpn_semseg_tiny", backbone_weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.backbone.body.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)


def test_attention_runs_in_the_fused_kernel_that_never_stores_the_map():
    from torch.profiler import profile

    fine, coarse = torch.randn(1, 16, 12, 12), torch.randn(1, 16, 6, 6)
    with torch.no_grad(), profile() as prof:
        SelfTransformer(16)(fine)
        GroundingTransformer(16)(fine, coarse)
    ops = {event.key for event in prof.key_averages()}
    assert "aten::_scaled_dot_product_attention_math" not in ops, sorted(o for o in ops if "attention" in o)
    assert any("flash_attention" in op for op in ops), sorted(o for o in ops if "attention" in o)
