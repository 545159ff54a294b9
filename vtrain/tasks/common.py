"""Pieces every task shares: parameter groups for weight decay and the optimizer / scheduler wiring."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytorch_lightning as L
import torch
from torch import nn

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def weight_decay_groups(model: nn.Module, weight_decay: float, skip_1d: bool = True) -> list[dict]:
    """Split parameters into a decayed group and a non-decayed one.

    As in the ViT / DeiT code, biases, norm gains and other 1-D tensors, plus whatever the model lists in
    `no_weight_decay()` (position embeddings, class token), are not decayed.
    """
    skip_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if (skip_1d and param.ndim <= 1) or name in skip_names:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def layer_decay_groups(
    model: nn.Module, weight_decay: float, layer_decay: float, skip_1d: bool = True
) -> list[dict]:
    """Parameter groups for layer-wise LR decay (Clark et al. 2020, ELECTRA; BEiT; MAE appendix A.1).

    The model says where each parameter sits: ``model.layer_id(name)`` gives its depth ``l``, 0 for the
    embeddings, ``i + 1`` for block ``i``, the largest, ``L``, for what follows the blocks (final norm,
    heads). A parameter at depth ``l`` gets ``lr_scale = layer_decay ** (L - l)``, so the head trains at
    the full LR and each block below it at ``layer_decay`` times the one above; weight decay as in
    :func:`weight_decay_groups`. For a ViT the same groups as MAE's ``param_groups_lrd``
    (facebookresearch/mae util/lr_decay.py:15-61 at efb2a80); :func:`configure_optimizers` multiplies each
    group's LR by its ``lr_scale``.

    Raises:
        ValueError: the model has no ``layer_id`` (vtrain's ViT, DeiT and iGPT have one; an MAE is
            fine-tuned as the ViT its encoder loads into).
    """
    layer_id = getattr(model, "layer_id", None)
    if not callable(layer_id):
        raise ValueError(
            f"task.layer_decay needs a model that maps parameters to layers (a `layer_id(name)` method, as "
            f"vtrain's VisionTransformer and ImageGPT have); {type(model).__name__} has none "
            "(set task.layer_decay=null)"
        )
    layers = {name: int(layer_id(name)) for name, _ in model.named_parameters()}
    num_layers = max(layers.values())
    skip_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = (skip_1d and param.ndim <= 1) or name in skip_names
        layer = layers[name]
        group = groups.setdefault(
            (layer, exempt),
            {
                "params": [],
                "weight_decay": 0.0 if exempt else weight_decay,
                "lr_scale": layer_decay ** (num_layers - layer),
            },
        )
        group["params"].append(param)
    return list(groups.values())


def configure_optimizers(
    module: L.LightningModule,
    param_groups: list[dict],
    optimizer: OptimizerFactory,
    scheduler: SchedulerFactory | None,
) -> dict:
    """Build the optimizer over `param_groups` and a per-step scheduler that knows the run's total number
    of optimizer steps (from the Trainer, so `max_epochs`, `max_steps`, accumulation and the number of
    devices are all accounted for). A group's `lr_scale` (layer-wise LR decay) multiplies its LR."""
    opt = optimizer(param_groups)
    for group in opt.param_groups:  # layer-wise LR decay: before the scheduler records the initial LRs
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
    if scheduler is None:
        return {"optimizer": opt}
    trainer = module.trainer
    total_steps = int(trainer.estimated_stepping_batches)  # also sets up the train dataloader
    batches = trainer.num_training_batches
    if batches == float("inf"):
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        steps_per_epoch = max(1, total_steps // epochs)
    else:
        steps_per_epoch = max(1, int(batches) // max(1, trainer.accumulate_grad_batches))
    sched = scheduler(opt, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def check_num_classes(module: L.LightningModule, sizes: dict[str, int | None]) -> None:
    """Raise when the numbers of classes that a run sets in several places disagree; a model head of 20
    classes trained on labels of 10 would otherwise fail later with a shape error in a loss or a metric.

    `sizes` maps config keys (`model.num_classes`, `task.num_classes`, ...) to their values; the data
    module's `num_classes` joins them as `data.num_classes` (after its `setup`, so also when it was read
    from the data's files). Unknown (None) values are left out. Call it from the task's `setup`.
    """
    datamodule = getattr(module.trainer, "datamodule", None)
    sizes = {**sizes, "data.num_classes": getattr(datamodule, "num_classes", None)}
    known = {key: value for key, value in sizes.items() if value is not None}
    if len(set(known.values())) > 1:
        found = ", ".join(f"{key}={value}" for key, value in known.items())
        raise ValueError(
            f"{type(module).__name__}: the numbers of classes disagree: {found}. The model's classifier, "
            "the task's loss and metrics and the data's labels need the same number; the configs set them "
            "all to ${data.num_classes}, so override data.num_classes (or make the others equal to it)"
        )


def label_names(module: L.LightningModule, labels: Iterable[int]) -> list[str]:
    """The names the data gives `labels` (COCO's category names, Cityscapes' classes), for pictures; the
    label itself where the data module has no names (or none is attached)."""
    trainer = module._trainer  # None outside a fit / validate / test
    datamodule = getattr(trainer, "datamodule", None)
    try:
        names = getattr(datamodule, "category_names", None) or getattr(datamodule, "class_names", None)
    except RuntimeError:  # a data module that was not set up
        names = None
    labels = [int(label) for label in labels]
    if not names:
        return [str(label) for label in labels]
    return [str(names[label]) if 0 <= label < len(names) else str(label) for label in labels]
