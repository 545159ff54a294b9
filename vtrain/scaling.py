"""The global batch of a run and the learning rates and step counts that follow it.

The global batch is ``data.batch_size x devices x num_nodes x trainer.accumulate_grad_batches``. Each
experiment states, under ``global_batch`` in its config, the paper's global batch and how its learning
rates follow the global batch (``lr_rule``): ``linear`` (lr x B / lr_reference, Goyal et al. 2017; DeiT's
5e-4 x B / 512), ``sqrt`` (lr x sqrt(B / lr_reference)) or ``none`` (the configured LR whatever the batch,
as DETR's and ViT's official code do). The configured learning rates are the ones at ``lr_reference``.
Schedule lengths counted in optimizer steps (``trainer.max_steps``, ``task.scheduler.warmup_steps`` and
``milestone_steps``) are written at the paper's global batch and rescaled so that they cover the same
number of samples.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, open_dict

log = logging.getLogger("vtrain")

LR_RULES = ("linear", "sqrt", "none")


@dataclass(frozen=True)
class BatchPlan:
    """How one run's batch relates to the paper's: sizes, and the factors its LRs and step counts take."""

    per_device: int
    world_size: int
    accumulation: int
    paper: int | None
    lr_rule: str
    lr_reference: int | None

    @property
    def global_batch(self) -> int:
        return self.per_device * self.world_size * self.accumulation

    @property
    def lr_factor(self) -> float:
        """Multiplier of every configured learning rate (those hold at ``lr_reference``)."""
        if self.lr_rule == "none" or self.lr_reference is None:
            return 1.0
        ratio = self.global_batch / self.lr_reference
        return ratio if self.lr_rule == "linear" else math.sqrt(ratio)

    @property
    def step_factor(self) -> float:
        """Multiplier of step counts written at the paper's global batch (same number of samples)."""
        return 1.0 if self.paper is None else self.paper / self.global_batch

    def describe(self) -> str:
        return (
            f"global batch {self.global_batch} = {self.per_device} per device x {self.world_size} devices "
            f"x {self.accumulation} accumulated"
        )


def plan_batch(
    per_device: int | None,
    world_size: int,
    accumulation: int,
    paper: int | None = None,
    lr_rule: str = "none",
    lr_reference: int | None = None,
) -> BatchPlan:
    """The run's :class:`BatchPlan`. ``per_device=None`` derives the per-device batch from the paper's
    global batch (``paper / (world_size x accumulation)``, which must divide evenly).

    Raises:
        ValueError: an unknown ``lr_rule``, a scaling rule without a reference batch, or a paper batch that
            this many devices cannot split evenly.
    """
    if lr_rule not in LR_RULES:
        raise ValueError(f"global_batch.lr_rule must be one of {LR_RULES}, got {lr_rule!r}")
    if lr_rule != "none" and not lr_reference:
        raise ValueError(f"global_batch.lr_rule={lr_rule} needs global_batch.lr_reference (a batch size)")
    if per_device is None:
        if paper is None:
            raise ValueError("data.batch_size is null: set it, or global_batch.paper to derive it from")
        replicas = world_size * accumulation
        if paper % replicas:
            raise ValueError(
                f"data.batch_size=null derives the per-device batch from global_batch.paper={paper}, which "
                f"{world_size} devices x {accumulation} accumulated batches cannot split evenly: set "
                "data.batch_size (the per-device batch) or trainer.accumulate_grad_batches"
            )
        per_device = paper // replicas
    return BatchPlan(int(per_device), int(world_size), int(accumulation), paper, lr_rule, lr_reference)


def _learning_rate_keys(task: DictConfig) -> list[tuple[DictConfig, str]]:
    """(node, key) of every learning rate in a task config: ``lr`` of each ``*optimizer`` node and each
    numeric top-level ``*_lr`` (``backbone_lr``, ``lte_lr``, ``mask_head_lr``). Only those keys are read:
    the others may interpolate values that need data on disk."""
    keys = []
    for key in (str(k) for k in task):
        if key.endswith("optimizer"):
            node = task[key]
            if isinstance(node, DictConfig) and node.get("lr") is not None:
                keys.append((node, "lr"))
        elif key.endswith("_lr"):
            value = task[key]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                keys.append((task, key))
    return keys


def apply_batch_plan(cfg: DictConfig, world_size: int) -> BatchPlan:
    """Fix ``cfg`` (in place) for a run on ``world_size`` processes: the per-device batch when it is
    derived, every learning rate by the rule, and the step-counted schedule by the paper's batch. Logs the
    global batch and the LR, and warns once when the global batch is not the paper's."""
    rule = cfg.get("global_batch") or {}
    plan = plan_batch(
        cfg.data.get("batch_size"),
        world_size,
        int(cfg.trainer.get("accumulate_grad_batches") or 1),
        rule.get("paper"),
        rule.get("lr_rule", "none"),
        rule.get("lr_reference"),
    )
    with open_dict(cfg):
        cfg.data.batch_size = plan.per_device
        for node, key in _learning_rate_keys(cfg.task):
            node[key] = float(node[key]) * plan.lr_factor
        if plan.paper is not None and plan.step_factor != 1.0:
            _scale_steps(cfg, plan.step_factor)
    lr = cfg.task.get("optimizer", {}).get("lr")
    lr_text = f"lr {lr:.4g} (rule {plan.lr_rule}" + (
        f", configured at global batch {plan.lr_reference})" if plan.lr_rule != "none" else ")"
    )
    log.info("%s; %s", plan.describe(), lr_text)
    if plan.paper is not None and plan.global_batch != plan.paper:
        log.warning(
            "global batch %d differs from the paper's %d: %s%s",
            plan.global_batch,
            plan.paper,
            lr_text,
            f"; step counts x{plan.step_factor:.3g}" if _has_step_counts(cfg) else "",
        )
    return plan


def _has_step_counts(cfg: DictConfig) -> bool:
    scheduler = cfg.task.get("scheduler") or {}
    return (cfg.trainer.get("max_steps") or -1) > 0 or bool(scheduler.get("warmup_steps"))


def _scale_steps(cfg: DictConfig, factor: float) -> None:
    if (cfg.trainer.get("max_steps") or -1) > 0:
        cfg.trainer.max_steps = max(1, round(cfg.trainer.max_steps * factor))
    scheduler: Any = cfg.task.get("scheduler")
    if scheduler and scheduler.get("warmup_steps"):
        scheduler.warmup_steps = max(1, round(scheduler.warmup_steps * factor))
    if scheduler and scheduler.get("milestone_steps"):
        scheduler.milestone_steps = [max(1, round(step * factor)) for step in scheduler.milestone_steps]
