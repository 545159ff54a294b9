"""Recipe checks of the DETR experiments (detr_coco, detr_coco_500ep, detr_panoptic_stage1_coco,
detr_panoptic_coco): the augmentation the data module builds, the optimizer's parameter groups, the LR
schedule, the inputs a run refuses to start without, and the panoptic targets. Sources: DETR arXiv
2005.12872v3 and facebookresearch/detr at 29901c5 (cited per check)."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torchvision.ops import FrozenBatchNorm2d
from torchvision.transforms import v2

from tests.data.panoptic_sample import CROWD_BOX, HEIGHT, WIDTH, write_panoptic_sample
from tests.recipe_checks import recipe_check
from vtrain.data.detection_transforms import RandomShortSideResize, RandomSizeCrop
from vtrain.models.pretrained import MissingWeightsError

# DETR section 4 and official datasets/coco.py:122-142: short side 480 .. 800 step 32, long side <= 1333;
# with probability 0.5 a resize to 400 / 500 / 600, a random crop of 384 .. 600 px, then the multi-scale
# resize; horizontal flip 0.5; evaluation at 800 / 1333.
SCALES = list(range(480, 801, 32))
# what instantiating a model without its required file raises (Hydra wraps the model's error)
REFUSED = (MissingWeightsError, InstantiationException)


def _data(cfg: DictConfig, **overrides) -> object:
    data = copy.deepcopy(cfg.data)
    with open_dict(data):
        data.update(num_workers=0, persistent_workers=False, pin_memory=False, **overrides)
    return instantiate(data)


@recipe_check("detr_augmentation")
def detr_augmentation(cfg: DictConfig) -> None:
    """The data module's train and eval pipelines are DETR's (see SCALES above)."""
    module = _data(cfg)
    steps = module.train_transform.transforms
    flip, choice = steps[0], steps[1]
    assert isinstance(flip, v2.RandomHorizontalFlip) and flip.p == 0.5, f"first step {flip}"
    assert isinstance(choice, v2.RandomChoice) and choice.p == [0.5, 0.5], f"second step {choice}"
    resize, cropped = choice.transforms
    assert isinstance(resize, RandomShortSideResize)
    assert (resize.sizes, resize.max_size) == (SCALES, 1333), (resize.sizes, resize.max_size)
    pre, crop, _sanitize, post = cropped.transforms
    assert isinstance(pre, RandomShortSideResize) and (pre.sizes, pre.max_size) == ([400, 500, 600], None)
    assert isinstance(crop, RandomSizeCrop) and (crop.min_size, crop.max_size) == (384, 600)
    assert isinstance(post, RandomShortSideResize) and (post.sizes, post.max_size) == (SCALES, 1333)
    evaluation = module.eval_transform.transforms[0]
    assert isinstance(evaluation, RandomShortSideResize)
    assert (evaluation.sizes, evaluation.max_size) == ([800], 1333), (evaluation.sizes, evaluation.max_size)
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in module.eval_transform.transforms)


def _task(cfg: DictConfig):
    """The experiment's task around its model, built as `python -m vtrain` does, from a random backbone
    (the files the experiment requires are not needed to see the parameter groups)."""
    model_cfg = copy.deepcopy(cfg.model)
    with open_dict(model_cfg):
        model_cfg.backbone_weights, model_cfg.pretrained, model_cfg.requires_pretrained = (
            "scratch",
            None,
            None,
        )
    torch.manual_seed(0)
    return instantiate(cfg.task, model=instantiate(model_cfg))


@recipe_check("detr_param_groups")
def detr_param_groups(cfg: DictConfig) -> None:
    """AdamW; the transformer and heads at task.optimizer.lr, the trained backbone stages at
    task.backbone_lr, weight decay 1e-4 on every parameter (official main.py:131-139); the backbone's
    BatchNorm frozen and its stem and layer1 fixed (DETR appendix A.4.1; official backbone.py:62-64)."""
    task = _task(cfg)
    groups = task.param_groups()
    optimizer = task.optimizer_factory(groups)
    assert isinstance(optimizer, torch.optim.AdamW), type(optimizer)
    trainable = {id(p) for p in task.model.parameters() if p.requires_grad}
    grouped = [id(p) for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(trainable), "every trainable parameter in exactly one group"
    assert all(group["weight_decay"] == 1e-4 for group in optimizer.param_groups)
    names = {id(p): n for n, p in task.model.named_parameters()}
    for group in optimizer.param_groups:
        backbone = {"backbone" in names[id(p)] for p in group["params"]}
        assert len(backbone) == 1, "a group mixes backbone and other parameters"
        assert group["lr"] == (1e-5 if backbone.pop() else 1e-4), group["lr"]
    bn = [m for n, m in task.model.named_modules() if "backbone" in n and "bn" in n.rsplit(".", 1)[-1]]
    assert bn and all(isinstance(m, FrozenBatchNorm2d) for m in bn), "the backbone's BatchNorm is frozen"
    for name, param in task.model.named_parameters():
        if "backbone" in name and not any(f"body.layer{i}." in name for i in (2, 3, 4)):
            assert not param.requires_grad, f"{name} trains (the stem and layer1 stay as ImageNet left them)"


@recipe_check("detr_frozen_detr")
def detr_frozen_detr(cfg: DictConfig) -> None:
    """The second stage trains bbox_attention and mask_head only, at 1e-4 (official --frozen_weights:
    models/segmentation.py:29-31 at 29901c5); the DETR's dropout stays active, as in the official
    train() mode."""
    task = _task(cfg)
    trainable = {n.split(".")[0] for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable == {"bbox_attention", "mask_head"}, trainable
    groups = task.optimizer_factory(task.param_groups()).param_groups
    assert [group["lr"] for group in groups] == [1e-4], [group["lr"] for group in groups]
    task.model.train()
    assert task.model.detr.transformer.training and cfg.model.dropout == 0.1


@recipe_check("detr_step_schedule")
def detr_step_schedule(cfg: DictConfig) -> None:
    """No warm-up; the LR x0.1 once, at the start of epoch task.scheduler.milestones[0], as the official
    StepLR(step_size=lr_drop) over that many epochs (main.py:140)."""
    steps_per_epoch = 3
    epochs = cfg.trainer.max_epochs
    (drop,) = cfg.task.scheduler.milestones
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = instantiate(cfg.task.scheduler)(optimizer, epochs * steps_per_epoch, steps_per_epoch)
    factors = []
    for _ in range(epochs * steps_per_epoch):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [1.0] * (drop * steps_per_epoch) + [0.1] * ((epochs - drop) * steps_per_epoch)
    assert factors == pytest.approx(expected, rel=1e-9), "LR factor by step"


@recipe_check("detr_no_ema")
def detr_no_ema(cfg: DictConfig) -> None:
    """DETR keeps no moving average of the weights: no EMA callback in the composed config."""
    assert "ema" not in cfg.callbacks, "callbacks.ema is set"


@recipe_check("detr_requires_backbone_weights")
def detr_requires_backbone_weights(cfg: DictConfig) -> None:
    """The run refuses to start from a random ResNet unless told to: the ImageNet torchvision ResNet-50
    (DETR appendix A.4.1) is model.backbone_weights=PATH."""
    with pytest.raises(REFUSED, match="MissingWeightsError.*model.backbone_weights is required"):
        instantiate(cfg.model)


@recipe_check("detr_requires_pretrained_detr")
def detr_requires_pretrained_detr(cfg: DictConfig) -> None:
    """The second stage refuses to start without the DETR it keeps fixed (model.pretrained=PATH)."""
    with pytest.raises(REFUSED, match="MissingWeightsError.*model.pretrained is required"):
        instantiate(cfg.model)


@recipe_check("detr_panoptic_targets")
def detr_panoptic_targets(cfg: DictConfig) -> None:
    """The panoptic targets as the official loader's (datasets/coco_panoptic.py:41-63): the crowd segment
    of a one-image sample is a target, its box the extent of its mask (util/box_ops.py:64-88); masks in the
    targets only when the experiment trains the mask head."""
    with tempfile.TemporaryDirectory() as folder:
        root = write_panoptic_sample(Path(folder))
        module = _data(cfg, root=str(root), tiny=None, num_classes=250)
        module.setup("validate")
        _, target = module.val_set[0]
    assert target["iscrowd"].tolist() == [0, 0, 1], "the crowd segment is a target"
    x0, y0, x1, y1 = CROWD_BOX
    expected = torch.tensor(
        [(x0 + x1) / 2 / WIDTH, (y0 + y1) / 2 / HEIGHT, (x1 - x0) / WIDTH, (y1 - y0) / HEIGHT]
    )
    torch.testing.assert_close(target["boxes"][2], expected)
    assert ("masks" in target) == (cfg.task._target_ == "vtrain.tasks.PanopticTask")
