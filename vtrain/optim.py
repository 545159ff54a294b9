"""Learning-rate schedules used by the papers' recipes: linear warm-up, then cosine, linear or step decay."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

DECAYS = ("cosine", "linear", "constant", "step")


def warmup_schedule(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int = 1,
    warmup_steps: int = 0,
    warmup_epochs: float = 0.0,
    decay: str = "cosine",
    min_lr_ratio: float = 0.0,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    milestone_steps: Sequence[int] = (),
) -> LambdaLR:
    """Linear warm-up from 0 to the base LR, then `decay` down to `min_lr_ratio * base LR` at
    `total_steps`: "cosine", "linear", "constant", or "step" (multiply by `gamma` at each epoch of
    `milestones`, e.g. DETR's x0.1 at epoch 200 of 300, and at each step of `milestone_steps`, e.g.
    Detectron's iteration schedules). The schedule is stepped once per optimizer step.

    Warm-up is given either in steps (ViT fine-tuning: 500 steps) or in epochs (DeiT: 5 epochs), in which
    case `steps_per_epoch` converts it.
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    milestone_steps = sorted(
        [int(round(m * steps_per_epoch)) for m in milestones] + [int(m) for m in milestone_steps]
    )
    warmup = max(int(warmup_steps), int(round(warmup_epochs * steps_per_epoch)))
    total_steps = max(int(total_steps), warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == "step":
            return gamma ** sum(step >= m for m in milestone_steps)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if decay == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 1.0
        return min_lr_ratio + (1.0 - min_lr_ratio) * shape

    return LambdaLR(optimizer, factor)
