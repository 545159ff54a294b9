import itertools
import logging
import math
from argparse import Namespace

import pytest
import torch
import torchvision
import transformers
from torchvision.ops import box_convert, generalized_box_iou

from tests.numerics import assert_close_to_scale
from vtrain.models import create_model, list_models
from vtrain.models.detr import (
    DETR,
    PRESETS,
    Backbone,
    HungarianMatcher,
    PositionEmbeddingLearned,
    PositionEmbeddingSine,
    PostProcess,
    SetCriterion,
    criterion,
    detr_tiny,
    load_detr_checkpoint,
    pad_images,
)

# the smallest DETR the HF comparison runs at full width: ResNet-50, D=256, 8 heads, 2 + 3 layers
SMALL = dict(enc_layers=2, dec_layers=3, num_queries=12)


def _targets(*boxes_and_labels: tuple[list, list]) -> list[dict]:
    return [
        {"labels": torch.tensor(labels, dtype=torch.int64), "boxes": torch.tensor(boxes).reshape(-1, 4)}
        for boxes, labels in boxes_and_labels
    ]


def _outputs(logits: torch.Tensor, boxes: torch.Tensor) -> dict:
    return {"pred_logits": logits, "pred_boxes": boxes}


@torch.no_grad()
def _randomize_frozen_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial frozen BatchNorm statistics and affine terms, so a wrong BN formula would show."""
    generator = torch.Generator().manual_seed(seed)
    for name, buffer in model.named_buffers():
        if name.endswith("running_var"):
            buffer.copy_(torch.rand(buffer.shape, generator=generator) * 1.5 + 0.5)
        elif name.endswith(("running_mean", "bias")):
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
        elif name.endswith("weight"):
            buffer.copy_(1 + torch.randn(buffer.shape, generator=generator) * 0.1)


# ---------------------------------------------------------------------------------------------- the model


@pytest.mark.parametrize(
    ("name", "total", "trained"),
    [
        # the official hub models (facebookresearch/detr hubconf.py, 91 classes) have exactly these counts
        ("detr_r50", 41_524_768, 41_302_368),
        ("detr_r50_dc5", 41_524_768, 41_302_368),
        ("detr_r101", 60_464_672, 60_242_272),
        ("detr_r101_dc5", 60_464_672, 60_242_272),
        ("detr_tiny", 11_449_184, 11_292_320),
    ],
)
def test_preset_parameter_counts(name, total, trained):
    with torch.device("meta"):
        model = PRESETS[name](backbone_weights="scratch")
    assert sum(p.numel() for p in model.parameters()) == total
    # the stem and layer1 are frozen; BatchNorm statistics and affine terms are buffers, not parameters
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trained


def test_official_module_names_and_frozen_layers():
    with torch.device("meta"):
        model = create_model("detr_r50", backbone_weights="scratch")
    keys = model.state_dict().keys()
    assert len(keys) == 458  # as the official detr_resnet50
    for key in (
        "backbone.0.body.conv1.weight",
        "backbone.0.body.bn1.running_var",
        "backbone.0.body.layer1.0.conv1.weight",
        "backbone.0.body.layer4.2.bn3.weight",
        "transformer.encoder.layers.0.self_attn.in_proj_weight",
        "transformer.encoder.layers.5.norm2.bias",
        "transformer.decoder.layers.5.multihead_attn.out_proj.weight",
        "transformer.decoder.norm.weight",
        "input_proj.weight",
        "query_embed.weight",
        "class_embed.weight",
        "bbox_embed.layers.2.weight",
    ):
        assert key in keys, key
    assert not any("num_batches_tracked" in k or "transformer.encoder.norm" in k for k in keys)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("backbone.0.body.conv1", "backbone.0.body.layer1")) for n in trained)
    assert "backbone.0.body.layer2.0.conv1.weight" in trained and "class_embed.weight" in trained
    frozen = detr_tiny(backbone_weights="scratch", train_backbone=False)
    assert not any(p.requires_grad for n, p in frozen.named_parameters() if n.startswith("backbone."))
    assert (
        "transformer.encoder.norm.weight" in detr_tiny(backbone_weights="scratch", pre_norm=True).state_dict()
    )
    assert {"backbone.1.row_embed.weight", "backbone.1.col_embed.weight"} <= set(
        detr_tiny(backbone_weights="scratch", position_embedding="learned").state_dict()
    )


def test_registry_and_output_shapes():
    assert set(list_models("detr_*")) == set(PRESETS)
    model = create_model("detr_tiny", backbone_weights="scratch", num_classes=5).eval()
    images, mask = pad_images([torch.randn(3, 64, 96), torch.randn(3, 96, 64)])
    with torch.no_grad():
        out = model(images, mask)
    assert out["pred_logits"].shape == (2, 20, 6) and out["pred_boxes"].shape == (2, 20, 4)
    assert out["pred_boxes"].min() > 0 and out["pred_boxes"].max() < 1
    assert len(out["aux_outputs"]) == 1 and out["aux_outputs"][0]["pred_boxes"].shape == (2, 20, 4)
    with torch.no_grad():
        assert "aux_outputs" not in detr_tiny(backbone_weights="scratch", aux_loss=False).eval()(images)


def test_backbone_loads_torchvision_weights_and_matches_resnet(tmp_path):
    reference = torchvision.models.resnet18().eval()
    _randomize_frozen_bn(reference)
    reference(torch.randn(1, 3, 32, 32))  # train-mode BatchNorm would have moved the statistics: it is eval
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # torchvision format: fc.*, num_batches_tracked included
    backbone = Backbone("resnet18", weights=path)
    images, mask = pad_images([torch.randn(3, 96, 128), torch.randn(3, 64, 64)])
    with torch.no_grad():
        features, feature_mask = backbone(images, mask)
        trunk = torch.nn.Sequential(*list(reference.children())[:-2])
        assert_close_to_scale(features, trunk(images), 1e-5)
    assert features.shape == (2, 512, 3, 4)
    # nearest downsampling of the padding mask: image 1 covers the first 2 x 2 cells
    assert not feature_mask[0].any() and feature_mask[1].sum() == 12 - 4 and not feature_mask[1, :2, :2].any()

    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth does not fit .*conv1\.weight \(1,\).*missing keys"):
        Backbone("resnet18", weights=tmp_path / "bad.pth")


def test_dc5_has_stride_16():
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert Backbone("resnet50")(images, torch.zeros(1, 64, 96, dtype=torch.bool))[0].shape[-2:] == (2, 3)
        dc5 = Backbone("resnet50", dilation=True)
        assert dc5(images, torch.zeros(1, 64, 96, dtype=torch.bool))[0].shape[-2:] == (4, 6)
    assert dc5.body.layer4[1].conv2.dilation == (2, 2)
    with pytest.raises(ValueError, match="bottleneck"):
        Backbone("resnet18", dilation=True)


# ----------------------------------------------------------------------------------- position encodings


def test_sine_encoding_matches_the_formula():
    feats, temperature = 8, 10000
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[0, 2:, :] = True  # last row is padding
    mask[0, :, 3:] = True  # last column is padding
    pos = PositionEmbeddingSine(feats, temperature)(mask)
    assert pos.shape == (1, 2 * feats, 3, 4)
    valid_h, valid_w = 2, 3
    for i, j in itertools.product(range(valid_h), range(valid_w)):
        y = (i + 1) / (valid_h + 1e-6) * 2 * math.pi
        x = (j + 1) / (valid_w + 1e-6) * 2 * math.pi
        for c in range(feats):
            wavelength = temperature ** (2 * (c // 2) / feats)
            wave = math.sin if c % 2 == 0 else math.cos
            assert pos[0, c, i, j].item() == pytest.approx(wave(y / wavelength), abs=1e-5)
            assert pos[0, feats + c, i, j].item() == pytest.approx(wave(x / wavelength), abs=1e-5)


def test_trainable_batchnorm_backbone_trains_every_stage_and_loads_torchvision_weights(tmp_path):
    frozen, trainable = Backbone("resnet18"), Backbone("resnet18", frozen_bn=False)
    assert not any(
        p.requires_grad for n, p in frozen.body.named_parameters() if n.startswith(("conv1", "layer1"))
    )
    assert all(p.requires_grad for p in trainable.body.parameters())
    assert isinstance(trainable.body.bn1, torch.nn.BatchNorm2d)
    reference = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    loaded = Backbone("resnet18", weights=path, frozen_bn=False).eval()
    images, mask = pad_images([torch.randn(3, 64, 64)])
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(reference.children())[:-2])
        assert_close_to_scale(loaded(images, mask)[0], trunk(images), 1e-5)


def test_sine_encoding_ignores_padding():
    encode = PositionEmbeddingSine()
    alone = encode(torch.zeros(1, 4, 5, dtype=torch.bool))
    mask = torch.ones(1, 7, 9, dtype=torch.bool)
    mask[0, :4, :5] = False
    padded = encode(mask)
    # the image's cells are encoded as without padding: normalization is by the image's own extent
    assert_close_to_scale(padded[..., :4, :5], alone, 1e-6)
    unmasked = encode(torch.zeros(1, 7, 9, dtype=torch.bool))
    assert (unmasked[..., :4, :5] - alone).abs().max() > 0.1
    assert PositionEmbeddingSine(normalize=False)(mask)[0, 1, 2, 3].item() == pytest.approx(math.cos(3.0))


def test_learned_encoding_concatenates_column_and_row():
    encode = PositionEmbeddingLearned(num_pos_feats=6)
    pos = encode(torch.zeros(2, 3, 4, dtype=torch.bool))
    assert pos.shape == (2, 12, 3, 4)
    torch.testing.assert_close(pos[1, :6, 2, 3], encode.col_embed.weight[3])
    torch.testing.assert_close(pos[1, 6:, 2, 3], encode.row_embed.weight[2])
    with pytest.raises(ValueError, match="up to 50x50, found 51x4"):
        encode(torch.zeros(1, 51, 4, dtype=torch.bool))


# --------------------------------------------------------------------- reference: transformers' DETR


def _hf_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' DetrForObjectDetection state dict (timm backbone) -> the official DETR key layout."""
    renames = [
        ("model.backbone.model.", "backbone.0.body."),
        ("model.position_embedding.row_embeddings.", "backbone.1.row_embed."),
        ("model.position_embedding.column_embeddings.", "backbone.1.col_embed."),
        ("model.query_position_embeddings.", "query_embed."),
        ("model.input_projection.", "input_proj."),
        ("model.encoder.", "transformer.encoder."),
        ("model.decoder.layernorm.", "transformer.decoder.norm."),
        ("model.decoder.", "transformer.decoder."),
        ("class_labels_classifier.", "class_embed."),
        ("bbox_predictor.", "bbox_embed."),
        ("encoder_attn_layer_norm.", "norm2."),
        ("encoder_attn.", "multihead_attn."),
        ("mlp.fc1.", "linear1."),
        ("mlp.fc2.", "linear2."),
        ("o_proj.", "out_proj."),
    ]
    official = {}
    for key, value in state_dict.items():
        for old, new in renames:
            key = key.replace(old, new)
        layer_norms = {"encoder": ("norm1", "norm2"), "decoder": ("norm1", "norm3")}
        for part, (first, last) in layer_norms.items():
            if key.startswith(f"transformer.{part}.layers."):
                key = key.replace("self_attn_layer_norm.", f"{first}.").replace(
                    "final_layer_norm.", f"{last}."
                )
        official[key] = value
    for key in [k for k in official if ".q_proj." in k]:  # nn.MultiheadAttention stacks q, k, v
        for kind in ("weight", "bias"):
            if key.endswith(kind):
                prefix = key.removesuffix(f"q_proj.{kind}")
                official[f"{prefix}in_proj_{kind}"] = torch.cat(
                    [official.pop(f"{prefix}{p}_proj.{kind}") for p in "qkv"]
                )
    return official


@pytest.mark.parametrize(
    ("overrides", "hf_overrides"),
    [
        ({}, {}),
        (
            {"dilation": True, "position_embedding": "learned"},
            {"dilation": True, "position_embedding_type": "learned"},
        ),
    ],
    ids=["r50", "r50-dc5-learned"],
)
def test_matches_transformers_detr(overrides, hf_overrides):
    config = transformers.DetrConfig(
        num_labels=91,
        encoder_layers=SMALL["enc_layers"],
        decoder_layers=SMALL["dec_layers"],
        num_queries=SMALL["num_queries"],
        auxiliary_loss=True,
        **hf_overrides,
    )
    torch.manual_seed(0)
    theirs = transformers.DetrForObjectDetection(config).eval()
    _randomize_frozen_bn(theirs)
    with torch.no_grad():  # HF initialises the heads near zero; spread them so the outputs vary
        for name, param in theirs.named_parameters():
            if name.startswith(("class_labels_classifier", "bbox_predictor", "model.query_position")):
                param.normal_(0.0, 0.1)
    ours = DETR(num_classes=91, **SMALL, **overrides).eval()
    ours.load_state_dict(_hf_to_official(theirs.state_dict()), strict=True)

    images, mask = pad_images([torch.randn(3, 96, 128), torch.randn(3, 64, 96)])
    targets = _targets(
        ([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.4, 0.2], [0.7, 0.2, 0.1, 0.1]], [1, 5, 17]),
        ([[0.4, 0.4, 0.5, 0.6]], [2]),
    )
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    with torch.no_grad():
        expected = theirs(pixel_values=images, pixel_mask=(~mask).long(), labels=hf_labels)
        actual = ours(images, mask)
    assert expected.logits.std() > 0.1, (
        "reference logits are nearly constant; the comparison would prove nothing"
    )
    assert_close_to_scale(actual["pred_logits"], expected.logits, 1e-5)
    assert_close_to_scale(actual["pred_boxes"], expected.pred_boxes, 1e-5)
    assert len(actual["aux_outputs"]) == len(expected.auxiliary_outputs) == SMALL["dec_layers"] - 1
    for mine, hf in zip(actual["aux_outputs"], expected.auxiliary_outputs, strict=True):
        assert_close_to_scale(mine["pred_logits"], hf["logits"], 1e-5)
        assert_close_to_scale(mine["pred_boxes"], hf["pred_boxes"], 1e-5)

    # transformers' own matcher and loss are a second implementation of the set criterion
    set_criterion = SetCriterion(num_classes=91, dec_layers=SMALL["dec_layers"])
    losses = set_criterion(actual, targets)
    for key, value in expected.loss_dict.items():
        assert_close_to_scale(losses[key], value, 1e-5, msg=key)
    total = sum(losses[k] * w for k, w in set_criterion.weight_dict.items())
    assert_close_to_scale(total, expected.loss, 1e-4)


# --------------------------------------------------------------------------------------------- checkpoints


def test_loads_official_and_lightning_checkpoints(tmp_path):
    torch.manual_seed(0)
    source = detr_tiny(backbone_weights="scratch").eval()
    _randomize_frozen_bn(source)
    official = tmp_path / "detr-official.pth"
    torch.save({"model": source.state_dict()}, official)
    lightning = tmp_path / "last.ckpt"
    torch.save(
        {
            "epoch": 3,
            "state_dict": {
                **{f"model.{k}": v for k, v in source.state_dict().items()},
                "criterion.empty_weight": torch.ones(92),
            },
        },
        lightning,
    )
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source(images)["pred_logits"]
    for path in (official, lightning):
        torch.manual_seed(1)
        target = create_model("detr_tiny", pretrained=path).eval()
        with torch.no_grad():
            assert torch.equal(target(images)["pred_logits"], expected)
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), key


def test_class_head_mismatch_is_skipped_with_a_warning(tmp_path, caplog):
    source = detr_tiny(backbone_weights="scratch")
    path = tmp_path / "coco.pth"
    torch.save({"model": source.state_dict()}, path)
    target = detr_tiny(backbone_weights="scratch", num_classes=3)
    head = target.class_embed.weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        load_detr_checkpoint(target, path)
    assert "(92, 64) in the checkpoint but (4, 64) in the model" in caplog.text
    assert torch.equal(target.class_embed.weight, head)
    assert torch.equal(target.bbox_embed.layers[0].weight, source.bbox_embed.layers[0].weight)


def test_checkpoint_errors_name_file_and_keys(tmp_path):
    state = detr_tiny(backbone_weights="scratch").state_dict()
    wrong_width = tmp_path / "wide.pth"
    torch.save({"model": {**state, "query_embed.weight": torch.zeros(20, 32)}}, wrong_width)
    with pytest.raises(
        ValueError, match=r"wide\.pth does not fit DETR: mis-shaped keys 'query_embed\.weight"
    ):
        load_detr_checkpoint(detr_tiny(backbone_weights="scratch"), wrong_width)
    partial = tmp_path / "partial.pth"
    torch.save({"model": {k: v for k, v in state.items() if k != "input_proj.bias"}}, partial)
    with pytest.raises(ValueError, match=r"partial\.pth .*missing keys 'input_proj\.bias'"):
        load_detr_checkpoint(detr_tiny(backbone_weights="scratch"), partial)
    load_detr_checkpoint(detr_tiny(backbone_weights="scratch"), partial, strict=False)
    training = tmp_path / "checkpoint.pth"  # official main.py saves its argparse Namespace too
    torch.save({"model": state, "args": Namespace(lr=1e-4)}, training)
    load_detr_checkpoint(detr_tiny(backbone_weights="scratch"), training)
    pickled_code = tmp_path / "code.pth"
    torch.save({"model": state, "hook": _NotAState()}, pickled_code)
    with pytest.raises(ValueError, match=r"refusing to load .*code\.pth.*_NotAState"):
        load_detr_checkpoint(detr_tiny(backbone_weights="scratch"), pickled_code)


class _NotAState:
    """Stands for any pickled object that is not tensors or plain containers."""


# ------------------------------------------------------------------------------------------------ matcher


def _brute_force_cost(logits, boxes, target, cost_class=1, cost_bbox=5, cost_giou=2) -> torch.Tensor:
    """The matching cost of every (prediction, target) pair, written from the paper's definition."""
    prob = logits.softmax(-1)
    costs = torch.empty(len(boxes), len(target["boxes"]))
    for i, j in itertools.product(range(len(boxes)), range(len(target["boxes"]))):
        pred, tgt = boxes[i], target["boxes"][j]
        giou = generalized_box_iou(
            box_convert(pred[None], "cxcywh", "xyxy"), box_convert(tgt[None], "cxcywh", "xyxy")
        )[0, 0]
        costs[i, j] = (
            -cost_class * prob[i, target["labels"][j]]
            + cost_bbox * (pred - tgt).abs().sum()
            - cost_giou * giou
        )
    return costs


def test_matcher_hand_computed_case():
    # prediction 0 sits on target 1 and prediction 2 on target 0; prediction 1 is far from both
    boxes = torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.1, 0.9, 0.05, 0.05], [0.3, 0.3, 0.2, 0.2]]])
    logits = torch.zeros(1, 3, 4)
    targets = _targets(([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]], [1, 2]))
    ((pred_idx, target_idx),) = HungarianMatcher()(_outputs(logits, boxes), targets)
    assert pred_idx.tolist() == [0, 2] and target_idx.tolist() == [1, 0]
    assert pred_idx.dtype == torch.int64
    # with the box costs off, class probabilities decide: prediction 1 is sure of class 1, 0 of class 2
    logits[0, 1, 1] = logits[0, 0, 2] = 5.0
    ((pred_idx, target_idx),) = HungarianMatcher(1, 0, 0)(_outputs(logits, boxes), targets)
    assert dict(zip(target_idx.tolist(), pred_idx.tolist(), strict=True)) == {0: 1, 1: 0}


def test_matcher_is_optimal_and_batched_equals_per_image():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 4)
    boxes = torch.rand(3, 5, 4) * 0.5 + 0.2
    targets = [
        {"labels": torch.randint(0, 3, (n,)), "boxes": torch.rand(n, 4) * 0.5 + 0.2} for n in (3, 0, 4)
    ]
    matcher = HungarianMatcher()
    batched = matcher(_outputs(logits, boxes), targets)
    for b, target in enumerate(targets):
        (single,) = matcher(_outputs(logits[b : b + 1], boxes[b : b + 1]), [target])
        assert torch.equal(batched[b][0], single[0]) and torch.equal(batched[b][1], single[1])
        n = len(target["labels"])
        assert len(single[0]) == len(single[1]) == n
        if n == 0:
            continue
        costs = _brute_force_cost(logits[b], boxes[b], target)
        best = min(
            sum(costs[p, j] for j, p in enumerate(perm)) for perm in itertools.permutations(range(5), n)
        )
        assert costs[single[0], single[1]].sum().item() == pytest.approx(best.item(), abs=1e-5)


def test_matcher_empty_targets_and_bad_costs():
    outputs = _outputs(torch.randn(2, 4, 3), torch.rand(2, 4, 4) * 0.5 + 0.2)
    empty = _targets(([], []), ([], []))
    for pred_idx, target_idx in HungarianMatcher()(outputs, empty):
        assert pred_idx.numel() == 0 and target_idx.numel() == 0
    with pytest.raises(ValueError, match="2 images of predictions but 1 target dicts"):
        HungarianMatcher()(outputs, empty[:1])
    with pytest.raises(ValueError, match="all three costs are 0"):
        HungarianMatcher(0, 0, 0)
    nan_boxes = _outputs(outputs["pred_logits"], torch.full((2, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="NaN or inf"):
        HungarianMatcher()(nan_boxes, _targets(([[0.5, 0.5, 0.1, 0.1]], [0]), ([], [])))


# ---------------------------------------------------------------------------------------------- criterion


def test_criterion_perfect_boxes_and_eos_weighting():
    # image 0: one object of class 1 at query 2; queries 0 and 1 should say "no object" (index 3)
    logits = torch.tensor([[[0.0, 0.0, 0.0, 2.0], [1.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]]])
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1], [0.5, 0.5, 0.4, 0.2]]])
    targets = _targets(([[0.5, 0.5, 0.4, 0.2]], [1]))
    losses = SetCriterion(num_classes=3, eos_coef=0.1)(_outputs(logits, boxes), targets)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-7)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    log_prob = logits[0].log_softmax(-1)
    nll = [-log_prob[0, 3], -log_prob[1, 3], -log_prob[2, 1]]
    weights = [0.1, 0.1, 1.0]  # the no-object class is down-weighted by eos_coef; the mean is weighted
    expected = sum(w * n for w, n in zip(weights, nll, strict=True)) / sum(weights)
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-6)
    unweighted = SetCriterion(num_classes=3, eos_coef=1.0)(_outputs(logits, boxes), targets)
    assert unweighted["loss_ce"].item() == pytest.approx(sum(nll).item() / 3, rel=1e-6)
    # query 1 predicts class 0, a real class: two objects predicted, one present
    assert losses["cardinality_error"].item() == 1.0 and losses["class_error"].item() == 0.0


def test_criterion_box_losses_are_normalized_by_num_boxes():
    boxes = torch.tensor(
        [[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]], [[0.6, 0.6, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]]
    )
    targets = _targets(([[0.5, 0.5, 0.2, 0.2]], [0]), ([[0.5, 0.5, 0.2, 0.2]], [0]))
    losses = SetCriterion(num_classes=2)(_outputs(torch.zeros(2, 2, 3), boxes), targets)
    # the only error is image 1's x and y offset of 0.1 each, over 2 target boxes
    assert losses["loss_bbox"].item() == pytest.approx(0.2 / 2, rel=1e-5)
    shifted = box_convert(torch.tensor([[0.6, 0.6, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]]), "cxcywh", "xyxy")
    giou = generalized_box_iou(shifted[:1], shifted[1:])[0, 0]
    assert losses["loss_giou"].item() == pytest.approx((1 - giou.item()) / 2, rel=1e-5)


def test_criterion_num_boxes_clamped_and_averaged_over_ranks(monkeypatch):
    outputs = _outputs(torch.randn(1, 3, 3, requires_grad=True), torch.rand(1, 3, 4) * 0.5 + 0.2)
    losses = SetCriterion(num_classes=2)(outputs, _targets(([], [])))
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0  # no 0 / 0
    assert torch.isfinite(losses["loss_ce"]) and losses["class_error"].item() == 100
    losses["loss_ce"].backward()  # an image without objects still trains "no object"
    assert outputs["pred_logits"].grad.abs().sum() > 0

    # two ranks holding 1 and 5 boxes: every rank divides by their mean, 3
    def all_reduce(tensor):
        tensor += 5

    monkeypatch.setattr(criterion.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(criterion.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(criterion.dist, "all_reduce", all_reduce)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    targets = _targets(([[0.5, 0.5, 0.2, 0.4]], [0]))
    losses = SetCriterion(num_classes=2)(_outputs(torch.zeros(1, 2, 3), boxes), targets)
    assert losses["loss_bbox"].item() == pytest.approx(0.2 / 3, rel=1e-5)


def test_criterion_aux_losses_and_weight_dict():
    torch.manual_seed(0)
    model = detr_tiny(backbone_weights="scratch", num_classes=4).eval()
    set_criterion = SetCriterion(num_classes=4, dec_layers=2)
    assert set_criterion.weight_dict == {
        "loss_ce": 1,
        "loss_bbox": 5,
        "loss_giou": 2,
        "loss_ce_0": 1,
        "loss_bbox_0": 5,
        "loss_giou_0": 2,
    }
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 64, 64))
    targets = _targets(([[0.5, 0.5, 0.2, 0.2]], [1]), ([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.3]], [0, 3]))
    losses = set_criterion(outputs, targets)
    assert set(losses) == {
        "loss_ce",
        "loss_bbox",
        "loss_giou",
        "class_error",
        "cardinality_error",
        "loss_ce_0",
        "loss_bbox_0",
        "loss_giou_0",
        "cardinality_error_0",
    }
    aux_alone = set_criterion(outputs["aux_outputs"][0], targets)
    for key in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error"):
        assert torch.equal(losses[f"{key}_0"], aux_alone[key])
    too_many = {**outputs, "aux_outputs": outputs["aux_outputs"] * 2}
    with pytest.raises(ValueError, match="2 auxiliary outputs but its weight_dict covers 1"):
        set_criterion(too_many, targets)


# ------------------------------------------------------------------------------------------ post-process


def test_postprocess_scales_boxes_and_drops_no_object():
    logits = torch.tensor([[[0.0, 1.0, 5.0], [2.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 3.0, 1.0]]])
    boxes = torch.tensor(
        [[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]], [[0.5, 0.5, 1.0, 1.0], [0.1, 0.2, 0.2, 0.2]]]
    )
    results = PostProcess()(_outputs(logits, boxes), torch.tensor([[100, 200], [50, 80]]))  # (height, width)
    # query 0 of image 0 is surest of "no object": its best real class, 1, is reported with that probability
    assert results[0]["labels"].tolist() == [1, 0] and results[1]["labels"].tolist() == [0, 1]
    assert results[0]["scores"][0].item() == pytest.approx(logits[0, 0].softmax(-1)[1].item())
    torch.testing.assert_close(
        results[0]["boxes"], torch.tensor([[80.0, 30.0, 120.0, 70.0], [0.0, 50.0, 100.0, 100.0]])
    )
    torch.testing.assert_close(
        results[1]["boxes"], torch.tensor([[0.0, 0.0, 80.0, 50.0], [0.0, 5.0, 16.0, 15.0]])
    )
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        PostProcess()(_outputs(logits, boxes), torch.tensor([100, 200]))


# -------------------------------------------------------------------------------------------------- training


@pytest.fixture
def one_thread():
    """Tiny matrices: intra-op threads cost more than they save, and far more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_detr_overfits_two_images(one_thread):
    torch.manual_seed(0)
    # a frozen random backbone keeps the step cheap; the transformer and heads learn from its features
    model = detr_tiny(backbone_weights="scratch", num_classes=4, dropout=0.0, train_backbone=False)
    set_criterion = SetCriterion(num_classes=4, dec_layers=2)
    images, mask = pad_images([torch.randn(3, 64, 64), torch.randn(3, 32, 64)])
    targets = _targets(
        ([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4], [0.5, 0.8, 0.6, 0.2]], [1, 2, 3]),
        ([[0.25, 0.6, 0.3, 0.5], [0.75, 0.3, 0.4, 0.3]], [0, 2]),
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=1e-4
    )
    history = []
    for _ in range(100):
        losses = set_criterion(model(images, mask), targets)
        loss = sum(losses[k] * w for k, w in set_criterion.weight_dict.items())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)  # the official max_norm
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0] / 5, f"loss went from {history[0]:.3f} to {history[-1]:.3f}"
    assert losses["class_error"].item() == 0 and losses["cardinality_error"].item() == 0


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_with_dropout(monkeypatch):
    from tests.numerics import assert_checkpointing_changes_nothing

    config = dict(backbone_weights="scratch", dropout=0.2, enc_layers=2, dec_layers=3, num_queries=5)
    plain, checkpointed = detr_tiny(**config), detr_tiny(**config, grad_checkpointing=True)
    images, mask = pad_images([torch.randn(3, 64, 96), torch.randn(3, 96, 64)])
    criterion = SetCriterion(num_classes=91, dec_layers=3)
    targets = _targets(([[0.5, 0.5, 0.2, 0.3]], [7]), ([[0.3, 0.6, 0.4, 0.2], [0.7, 0.2, 0.1, 0.1]], [1, 2]))

    def loss(model: DETR) -> torch.Tensor:
        losses = criterion(model(images, mask), targets)
        return sum(losses[k] * w for k, w in criterion.weight_dict.items())

    assert_checkpointing_changes_nothing(plain, checkpointed, loss, 2 + 3, monkeypatch)
