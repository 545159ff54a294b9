"""Panoptic DETR: outputs, matched-mask losses and checkpoint loading against transformers'
DetrForSegmentation (a second implementation of the official DETRsegm) with random weights; the focal and
DICE losses by hand; the panoptic post-processing on hand-made outputs."""

import logging

import pytest
import torch
import transformers

from tests.models.test_detr import SMALL, _hf_to_official, _randomize_frozen_bn, _targets
from tests.numerics import assert_close_to_scale
from vtrain.data.coco import collate_detection
from vtrain.data.coco_panoptic import CocoPanoptic
from vtrain.data.detection_transforms import build_detr_transforms
from vtrain.data.tiny import build_tiny
from vtrain.models import create_model, list_models
from vtrain.models.detr import (
    DETRPanoptic,
    PanopticSetCriterion,
    PostProcessPanoptic,
    detr_tiny,
    load_detr_checkpoint,
    pad_images,
)
from vtrain.models.detr.panoptic_postprocess import PostProcessSegm
from vtrain.models.detr.segmentation import dice_loss, sigmoid_focal_loss

HEAD_RENAMES = [
    ("mask_head.conv1.conv.", "mask_head.lay1."),
    ("mask_head.conv1.norm.", "mask_head.gn1."),
    ("mask_head.conv2.conv.", "mask_head.lay2."),
    ("mask_head.conv2.norm.", "mask_head.gn2."),
    *[(f"mask_head.fpn_stages.{i}.fpn_adapter.", f"mask_head.adapter{i + 1}.") for i in range(3)],
    *[(f"mask_head.fpn_stages.{i}.refine.conv.", f"mask_head.lay{i + 3}.") for i in range(3)],
    *[(f"mask_head.fpn_stages.{i}.refine.norm.", f"mask_head.gn{i + 3}.") for i in range(3)],
    ("mask_head.output_conv.", "mask_head.out_lay."),
    ("bbox_attention.q_proj.", "bbox_attention.q_linear."),
    ("bbox_attention.k_proj.", "bbox_attention.k_linear."),
]


def _hf_segmentation_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' DetrForSegmentation state dict -> the official panoptic checkpoint's keys."""
    detr = {k.removeprefix("detr."): v for k, v in state_dict.items() if k.startswith("detr.")}
    official = {f"detr.{k}": v for k, v in _hf_to_official(detr).items()}
    for key, value in state_dict.items():
        if not key.startswith("detr."):
            for old, new in HEAD_RENAMES:
                key = key.replace(old, new)
            official[key] = value
    return official


def test_presets_are_registered_and_official_module_names():
    assert set(list_models("detr_*_panoptic")) == {
        "detr_r50_panoptic",
        "detr_r50_dc5_panoptic",
        "detr_r101_panoptic",
        "detr_tiny_panoptic",
    }
    model = create_model("detr_tiny_panoptic", backbone_weights="scratch")
    assert isinstance(model, DETRPanoptic) and model.num_classes == 250
    keys = model.state_dict()
    assert "detr.class_embed.weight" in keys and keys["detr.class_embed.weight"].shape[0] == 251
    assert {"bbox_attention.q_linear.weight", "mask_head.lay1.weight", "mask_head.adapter3.weight"} <= set(
        keys
    )
    images, mask = pad_images([torch.randn(3, 64, 96), torch.randn(3, 50, 70)])
    out = model(images, mask)
    assert out["pred_masks"].shape == (2, 20, 16, 24)  # one stride-4 mask per query
    assert len(out["aux_outputs"]) == 1


def test_freeze_detr_trains_the_mask_head_only():
    model = create_model("detr_tiny_panoptic", backbone_weights="scratch", num_classes=11, freeze_detr=True)
    trained = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {"bbox_attention", "mask_head"}


def test_matches_transformers_detr_for_segmentation_and_loads_its_weights_as_official(tmp_path):
    config = transformers.DetrConfig(
        num_labels=250,
        encoder_layers=SMALL["enc_layers"],
        decoder_layers=SMALL["dec_layers"],
        num_queries=SMALL["num_queries"],
        auxiliary_loss=True,
    )
    torch.manual_seed(0)
    theirs = transformers.DetrForSegmentation(config).eval()
    _randomize_frozen_bn(theirs)
    with torch.no_grad():  # HF initialises the heads near zero; spread them so the outputs vary
        for name, param in theirs.named_parameters():
            if "class_labels_classifier" in name or "bbox_predictor" in name or "query_position" in name:
                param.normal_(0.0, 0.1)
    official = tmp_path / "detr-r50-panoptic.pth"
    torch.save({"model": _hf_segmentation_to_official(theirs.state_dict())}, official)
    ours = create_model("detr_r50_panoptic", pretrained=official, **SMALL).eval()

    images, mask = pad_images([torch.randn(3, 96, 128), torch.randn(3, 64, 96)])
    targets = _targets(
        ([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.4, 0.2], [0.7, 0.2, 0.1, 0.1]], [1, 5, 17]),
        ([[0.4, 0.4, 0.5, 0.6]], [2]),
    )
    generator = torch.Generator().manual_seed(0)
    targets[0]["masks"] = torch.rand(3, 96, 128, generator=generator) > 0.6
    targets[1]["masks"] = torch.rand(1, 64, 96, generator=generator) > 0.3
    hf_labels = [
        {"class_labels": t["labels"], "boxes": t["boxes"], "masks": t["masks"].float()} for t in targets
    ]
    with torch.no_grad():
        expected = theirs(pixel_values=images, pixel_mask=(~mask).long(), labels=hf_labels)
        actual = ours(images, mask)
    assert expected.pred_masks.std() > 0.1
    assert_close_to_scale(actual["pred_logits"], expected.logits, 1e-5)
    assert_close_to_scale(actual["pred_boxes"], expected.pred_boxes, 1e-5)
    torch.testing.assert_close(actual["pred_masks"], expected.pred_masks, atol=1e-4, rtol=1e-4)
    assert actual["pred_masks"].shape == (2, SMALL["num_queries"], 24, 32)

    criterion = PanopticSetCriterion(num_classes=250, dec_layers=SMALL["dec_layers"])
    losses = criterion(actual, targets)
    for key in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
        torch.testing.assert_close(losses[key], expected.loss_dict[key], atol=1e-5, rtol=1e-5, msg=key)
    assert criterion.weight_dict["loss_mask"] == criterion.weight_dict["loss_dice"] == 1
    assert "loss_mask_0" not in criterion.weight_dict  # no masks on the auxiliary outputs


def test_panoptic_and_detection_checkpoints_load(tmp_path, caplog):
    torch.manual_seed(0)
    source = create_model("detr_tiny_panoptic", backbone_weights="scratch", num_classes=11).eval()
    _randomize_frozen_bn(source)
    path = tmp_path / "panoptic.pth"
    torch.save({"model": source.state_dict()}, path)
    images = torch.randn(1, 3, 64, 64)
    torch.manual_seed(1)
    loaded = create_model("detr_tiny_panoptic", pretrained=path, num_classes=11).eval()
    with torch.no_grad():
        expected, actual = source(images), loaded(images)
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        assert torch.equal(actual[key], expected[key]), key

    detection = detr_tiny(backbone_weights="scratch", num_classes=11)
    detection_path = tmp_path / "detection.pth"
    torch.save({"model": detection.state_dict()}, detection_path)
    target = create_model("detr_tiny_panoptic", backbone_weights="scratch", num_classes=11)
    head = target.mask_head.lay1.weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        load_detr_checkpoint(target, detection_path)
    assert "a detection checkpoint" in caplog.text
    assert torch.equal(target.detr.class_embed.weight, detection.class_embed.weight)
    assert torch.equal(target.mask_head.lay1.weight, head)

    other_classes = create_model("detr_tiny_panoptic", backbone_weights="scratch", num_classes=3)
    with caplog.at_level(logging.WARNING):
        load_detr_checkpoint(other_classes, path)
    assert "class_embed.weight is (12, 64) in the checkpoint but (4, 64)" in caplog.text
    assert torch.equal(other_classes.mask_head.lay1.weight, source.mask_head.lay1.weight)


def test_a_frozen_detr_refuses_a_checkpoint_of_another_class_count(tmp_path):
    """The second stage trains the mask head only: a DETR whose class head would start random (a 91-class
    COCO detection checkpoint under a 250-class panoptic model) would never learn its classes."""
    detection = detr_tiny(backbone_weights="scratch", num_classes=11)
    path = tmp_path / "detection.pth"
    torch.save({"model": detection.state_dict()}, path)
    frozen = create_model("detr_tiny_panoptic", backbone_weights="scratch", num_classes=3, freeze_detr=True)
    with pytest.raises(
        ValueError, match=r"detection.pth: class head .* \(12, 64\) in the checkpoint .* frozen"
    ):
        load_detr_checkpoint(frozen, path)
    same = create_model("detr_tiny_panoptic", backbone_weights="scratch", num_classes=11, freeze_detr=True)
    load_detr_checkpoint(same, path)
    assert torch.equal(same.detr.class_embed.weight, detection.class_embed.weight)
    assert not any(p.requires_grad for p in same.detr.parameters())
    assert all(p.requires_grad for p in same.mask_head.parameters())


def test_focal_and_dice_losses_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0, 0.5]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    p = logits.sigmoid()[0]
    dice = 1 - (2 * (p[0] + p[1]) + 1) / (p.sum() + 2 + 1)
    assert dice_loss(logits, target, num_boxes=2.0) == pytest.approx(float(dice) / 2)
    terms = [
        0.25 * -torch.log(p[0]) * (1 - p[0]) ** 2,
        0.25 * -torch.log(p[1]) * (1 - p[1]) ** 2,
        0.75 * -torch.log(1 - p[2]) * p[2] ** 2,
        0.75 * -torch.log(1 - p[3]) * p[3] ** 2,
    ]
    assert sigmoid_focal_loss(logits, target, num_boxes=1.0) == pytest.approx(float(sum(terms) / 4), rel=1e-5)
    perfect = (target * 2 - 1) * 30
    assert sigmoid_focal_loss(perfect, target, 1.0) < 1e-6 and dice_loss(perfect, target, 1.0) < 0.2


def _outputs(classes: list[int], probability: float, masks: torch.Tensor, num_classes: int = 20) -> dict:
    logits = torch.full((1, len(classes), num_classes + 1), -10.0)
    for q, c in enumerate(classes):
        logits[0, q, c] = torch.log(torch.tensor(probability / (1 - probability)))
        logits[0, q, -1] = 0.0  # with -10 elsewhere: P(c) ~ probability
    return {"pred_logits": logits, "pred_masks": masks[None]}


def test_panoptic_postprocess_merges_stuff_drops_unlikely_queries_and_tiny_segments():
    is_thing = {1: True, 2: True, 12: False}
    masks = torch.full((5, 4, 4), -5.0)  # stride-4 logits of a 16 x 16 image
    masks[0, :2] = 5  # stuff 12, top half
    masks[1, 2:, :2] = 5  # stuff 12 again, bottom left: merged with query 0
    masks[2, 2:, 2:] = 5  # thing 1, bottom right
    masks[3, 0, 0] = 9  # thing 2, unlikely (below): dropped before the assignment
    masks[4, 3, 3] = 9  # thing 1 on one stride-4 cell (16 px at the output): kept
    outputs = _outputs([12, 12, 1, 2, 1], 0.95, masks)
    outputs["pred_logits"][0, 3] = torch.tensor([0.0] * 20 + [3.0])
    out = PostProcessPanoptic(is_thing, threshold=0.85)(outputs, processed_sizes=torch.tensor([[16, 16]]))[0]
    seg, info = out["segmentation"], {s["id"]: s for s in out["segments_info"]}
    assert seg.shape == (16, 16)
    assert [s["category_id"] for s in out["segments_info"]] == [12, 1, 1]
    stuff = seg[0, 0].item()
    assert info[stuff]["category_id"] == 12 and not info[stuff]["isthing"]
    assert (seg[:8] == stuff).all() and (seg[8:, :6] == stuff).all()  # bilinear borders move a pixel or two
    assert info[seg[9, 9].item()]["category_id"] == 1
    assert sum(s["area"] for s in out["segments_info"]) == 256

    # at 8 x 8 output pixels the single-cell query covers 4 pixels: removed, its pixels go to query 2
    small = PostProcessPanoptic(is_thing, threshold=0.85)(
        outputs, processed_sizes=torch.tensor([[16, 16]]), target_sizes=torch.tensor([[8, 8]])
    )[0]
    assert [s["category_id"] for s in small["segments_info"]] == [12, 1]
    assert small["segments_info"][1]["area"] >= 16 and sum(s["area"] for s in small["segments_info"]) == 64

    # classes the data set does not have are dropped; nothing kept gives an empty segmentation
    none = PostProcessPanoptic({5: True})(outputs, processed_sizes=torch.tensor([[16, 16]]))[0]
    assert none["segments_info"] == [] and not none["segmentation"].any()


def test_segm_postprocess_crops_padding_and_resizes():
    masks = torch.full((1, 2, 4, 6), -5.0)
    masks[0, 0, :2, :3] = 5  # the top-left quarter of the padded 16 x 24 batch
    out = PostProcessSegm()(
        {"pred_masks": masks}, torch.tensor([[8, 12]]), torch.tensor([[16, 24]]), padded_size=(16, 24)
    )[0]
    assert out.shape == (2, 16, 24) and out[0].float().mean() > 0.9 and not out[1].any()


@pytest.fixture
def one_thread():
    """Tiny matrices: intra-op threads cost more than they save, and far more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_mask_head_on_a_frozen_detr_learns_per_query_masks(data_dir, one_thread):
    """The paper's second stage in miniature: with the DETR fixed, the mask head alone fits two tiny images.
    Its per-query masks start identical (the attention maps are near-uniform and ~1e-2 against features of
    ~1) and separate after ~200 Adam steps; then the DICE loss falls."""
    root = build_tiny("coco_panoptic_tiny", data_dir / "coco_panoptic_tiny")
    dataset = CocoPanoptic(root, "train", transform=build_detr_transforms(False, eval_size=64, max_size=100))
    images, mask, targets = collate_detection([dataset[0], dataset[1]])
    torch.manual_seed(0)
    model = create_model(
        "detr_tiny_panoptic",
        backbone_weights="scratch",
        num_classes=18,
        num_queries=8,
        freeze_detr=True,
        dropout=0.0,
    )
    criterion = PanopticSetCriterion(num_classes=18, dec_layers=2)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    dice = []
    for _ in range(400):
        losses = criterion(model(images, mask), targets)
        optimizer.zero_grad()
        (losses["loss_mask"] + losses["loss_dice"]).backward()
        optimizer.step()
        dice.append(float(losses["loss_dice"]))
    assert dice[0] > 0.7 and dice[-1] < 0.6
