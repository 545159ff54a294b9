"""Learning-rate schedules used by the papers' recipes (linear warm-up, then cosine, linear or step decay) and
the LARS optimizer of MAE's linear probe."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
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


class LARS(Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al. 2017), as MoCo v3's LARS that MAE's linear
    probe uses (facebookresearch/mae util/lars.py:14-47 at efb2a80). For a parameter of 2 or more dimensions
    the update ``u = g + weight_decay * p`` is scaled by ``trust_coefficient * ||p|| / ||u||`` (by 1 when
    either norm is 0); biases and other 1-D parameters take ``u = g``, neither decayed nor scaled. Then
    ``mu = momentum * mu + u`` and ``p -= lr * mu``.

    timm's ``Lars`` is another rule: it scales only when weight decay is non-zero unless ``always_adapt``,
    scales 1-D parameters too, and adds ``eps`` and ``weight_decay * ||p||`` to the denominator
    (tests/test_optim.py compares the three).
    """

    def __init__(
        self,
        params,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr < 0.0 or weight_decay < 0.0 or not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"LARS: lr and weight_decay must be >= 0 and momentum in [0, 1), found lr={lr}, "
                f"weight_decay={weight_decay}, momentum={momentum}"
            )
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = group["trust_coefficient"] * param_norm / update_norm
                    ratio = torch.where((param_norm > 0) & (update_norm > 0), ratio, torch.ones_like(ratio))
                    update = update.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                state["mu"].mul_(group["momentum"]).add_(update)
                p.add_(state["mu"], alpha=-group["lr"])
        return loss
