"""Recipe checks of the FPT experiments (fpt_maskrcnn_coco, maskrcnn_coco, fpt_cityscapes, fpn_cityscapes):
the graph each model builds (where the FPT takes its pyramid from, its transformers, GroupNorm), the
multi-scale resize of the detectors and the weight-decay exemptions of the task."""

from __future__ import annotations

import functools

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from tests.recipe_checks import recipe_check
from vtrain.models.fpt import FeaturePyramidTransformer

RESNET50_WIDTHS = (256, 512, 1024, 2048)


@functools.cache
def _model(model_yaml: str) -> nn.Module:
    """The experiment's network from a random ResNet (cached: the checks of one card share it)."""
    torch.manual_seed(0)
    cfg = OmegaConf.create(model_yaml)
    cfg.backbone_weights = "scratch"
    return instantiate(cfg)


def model(cfg: DictConfig) -> nn.Module:
    return _model(OmegaConf.to_yaml(OmegaConf.to_container(cfg.model, resolve=True)))


def _neck(cfg: DictConfig) -> nn.Module:
    network = model(cfg)
    return network.backbone


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@recipe_check("fpt_on_the_backbone")
def fpt_on_the_backbone(cfg: DictConfig) -> None:
    """The paper's placement: ResNet-50 C2..C5 -> 1 x 1 laterals (256 channels) -> FPT, no FPN top-down
    path; ST with a mixture of N = 2 softmaxes, GT with N = 4 (section 3.5); every level pair has a GT
    (top-down) and an RT (bottom-up)."""
    neck = _neck(cfg)
    assert neck.placement == "backbone" and neck.fpn is None, "the FPT must take the ResNet's C2..C5"
    widths = tuple(block[0].in_channels for block in neck.lateral)
    assert widths == RESNET50_WIDTHS, widths
    assert {block[0].out_channels for block in neck.lateral} == {256}
    fpt: FeaturePyramidTransformer = neck.fpt
    assert fpt.num_levels == 4 and fpt.dim == 256
    assert {st.attention.num_mixtures for st in fpt.self_transformers} == {2}
    assert {gt.attention.num_mixtures for gt in fpt.grounding.values()} == {4}
    assert {gt.attention.similarity for gt in fpt.grounding.values()} == {"euclidean"}
    assert sorted(fpt.grounding) == sorted(fpt.rendering) == ["0_1", "0_2", "0_3", "1_2", "1_3", "2_3"]


@recipe_check("fpn_baseline")
def fpn_baseline(cfg: DictConfig) -> None:
    """The baseline: ResNet-50 C2..C5 -> torchvision's FPN (256 channels), no FPT."""
    neck = _neck(cfg)
    assert neck.fpt is None and neck.lateral is None and neck.fpn is not None
    widths = tuple(block[0].in_channels for block in neck.fpn.inner_blocks)
    assert widths == RESNET50_WIDTHS, widths


@recipe_check("group_norm_neck_and_heads")
def group_norm_neck_and_heads(cfg: DictConfig) -> None:
    """GroupNorm (32 groups) after every neck convolution (FPN or laterals and FPT fusions), a 4conv1fc box
    head and a 4-conv mask head with GN, as the released config's FPN.USE_GN and *_gn heads."""
    network = model(cfg)
    neck = network.backbone
    convs = list(neck.fpn.inner_blocks) + list(neck.fpn.layer_blocks) if neck.fpn is not None else []
    convs += list(neck.lateral or []) + (list(neck.fpt.fuse) if neck.fpt is not None else [])
    assert convs and all(isinstance(block[1], nn.GroupNorm) and block[1].num_groups == 32 for block in convs)
    box_head = network.roi_heads.box_head
    box_norms = [m for m in box_head.modules() if isinstance(m, nn.GroupNorm)]
    box_fcs = [m for m in box_head.modules() if isinstance(m, nn.Linear)]
    assert len(box_norms) == 4 and [fc.out_features for fc in box_fcs] == [1024], box_head
    mask_norms = [m for m in network.roi_heads.mask_head.modules() if isinstance(m, nn.GroupNorm)]
    assert len(mask_norms) == 4


@recipe_check("multi_scale_train_test_1000")
def multi_scale_train_test_1000(cfg: DictConfig) -> None:
    """Training draws the short side from (1200, 1200, 1000, 800, 600, 400), long side at most 1400; the
    evaluation resizes the short side to 1000 (a 600 x 800 image becomes 1000 x 1333)."""
    transform = model(cfg).transform
    assert transform.min_size == (1200, 1200, 1000, 800, 600, 400) and transform.max_size == 1400
    image = torch.rand(3, 600, 800)
    transform.eval()
    assert transform([image])[0].image_sizes == [(1000, 1333)]
    transform.train()
    torch.manual_seed(0)
    drawn = {transform([image])[0].image_sizes[0] for _ in range(60)}
    assert drawn == {(1050, 1400), (1000, 1333), (800, 1066), (600, 800), (400, 533)}, drawn


@recipe_check("no_weight_decay_on_biases_and_norms")
def no_weight_decay_on_biases_and_norms(cfg: DictConfig) -> None:
    """The task decays weight matrices and kernels only: biases and GroupNorm / BatchNorm affine terms get
    none (Detectron: SOLVER.BIAS_WEIGHT_DECAY False, WEIGHT_DECAY_GN 0)."""
    task = instantiate(cfg.task, model=model(cfg), _convert_="partial")
    groups = task.param_groups()
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    exempt = [p for g in groups if g["weight_decay"] == 0 for p in g["params"]]
    assert decayed and exempt and all(p.ndim > 1 for p in decayed) and all(p.ndim <= 1 for p in exempt)
    assert {g["weight_decay"] for g in groups} == {0.0, cfg.task.weight_decay}


@recipe_check("no_ema")
def no_ema(cfg: DictConfig) -> None:
    """No moving average of the weights (the released trainer, tools/train_net_step.py, keeps none)."""
    assert "ema" not in (cfg.get("callbacks") or {}), "callbacks.ema is set"


@recipe_check("frozen_bn_conv1_layer1_frozen")
def frozen_bn_conv1_layer1_frozen(cfg: DictConfig) -> None:
    """The ResNet's BatchNorm is frozen (Detectron's AffineChannel) and conv1 + layer1 do not train
    (RESNETS.FREEZE_AT 2, released lib/core/config.py:897); layer2..layer4 train."""
    body = model(cfg).backbone.body
    norms = [m for m in body.modules() if "BatchNorm" in type(m).__name__]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    trains = {name.split(".")[0]: p.requires_grad for name, p in body.named_parameters()}
    assert trains == {"conv1": False, "layer1": False, "layer2": True, "layer3": True, "layer4": True}, trains


@recipe_check("detectron_rpn_and_roi_settings")
def detectron_rpn_and_roi_settings(cfg: DictConfig) -> None:
    """The released config's RPN and RoI settings, which torchvision's defaults already are: 2000 proposals
    per level before NMS and 2000 kept in training (mask.yaml:40, config.py:141), 1000 / 1000 at test
    (mask.yaml:45-46), 512 sampled RoIs per image (mask.yaml:39) with 25% foreground (config.py:61), NMS 0.5
    (mask.yaml:44), 100 detections per image scored >= 0.05 (config.py:222, :227), RoIAlign 7 x 7 boxes and
    14 x 14 masks with sampling ratio 2 (mask.yaml:25-27, :31-33)."""
    network = model(cfg)
    rpn, roi = network.rpn, network.roi_heads
    assert (rpn._pre_nms_top_n, rpn._post_nms_top_n) == (
        {"training": 2000, "testing": 1000},
        {"training": 2000, "testing": 1000},
    )
    assert roi.fg_bg_sampler.batch_size_per_image == 512 and roi.fg_bg_sampler.positive_fraction == 0.25
    assert (roi.nms_thresh, roi.detections_per_img, roi.score_thresh) == (0.5, 100, 0.05)
    assert roi.box_roi_pool.output_size == (7, 7) and roi.mask_roi_pool.output_size == (14, 14)
    assert roi.box_roi_pool.sampling_ratio == roi.mask_roi_pool.sampling_ratio == 2


@recipe_check("no_dropout")
def no_dropout(cfg: DictConfig) -> None:
    """No dropout anywhere (the released FPT_a.py builds a DropBlock but leaves it commented out, lines
    50 and 99-104)."""
    dropouts = [m for m in model(cfg).modules() if "Drop" in type(m).__name__]
    assert not dropouts, dropouts


@recipe_check("head_dropout_0_1")
def head_dropout_0_1(cfg: DictConfig) -> None:
    """vtrain's semantic-FPN head: channel dropout 0.1 before the classifier, no other dropout."""
    dropouts = [m for m in model(cfg).modules() if "Drop" in type(m).__name__]
    assert len(dropouts) == 1 and isinstance(dropouts[0], nn.Dropout2d) and dropouts[0].p == 0.1, dropouts


@recipe_check("global_gt")
def global_gt(cfg: DictConfig) -> None:
    """Every GT attends to the whole coarser level (no locality window: the LGT is the segmentation one)."""
    assert {gt.window for gt in _neck(cfg).fpt.grounding.values()} == {None}
