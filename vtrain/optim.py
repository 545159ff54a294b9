"""Learning-rate schedules used by the papers' recipes (linear warm-up, then cosine or linear decay)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_schedule(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int = 1,
    warmup_steps: int = 0,
    warmup_epochs: float = 0.0,
    decay: str = "cosine",
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up from 0 to the base LR, then `decay` ("cosine", "linear" or "constant") down to
    `min_lr_ratio * base LR` at `total_steps`. The schedule is stepped once per optimizer step.

    Warm-up is given either in steps (ViT fine-tuning: 500 steps) or in epochs (DeiT: 5 epochs), in which
    case `steps_per_epoch` converts it.
    """
    if decay not in ("cosine", "linear", "constant"):
        raise ValueError(f"decay must be 'cosine', 'linear' or 'constant', got {decay!r}")
    warmup = max(int(warmup_steps), int(round(warmup_epochs * steps_per_epoch)))
    total_steps = max(int(total_steps), warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if decay == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 1.0
        return min_lr_ratio + (1.0 - min_lr_ratio) * shape

    return LambdaLR(optimizer, factor)
