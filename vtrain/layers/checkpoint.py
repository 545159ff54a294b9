"""Gradient (activation) checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"):
keep only each block's input in the forward pass and recompute the block's activations in the backward
pass. Memory for activations drops from every block's to one block's plus the block inputs, for about one
more forward pass of compute; the gradients are the same, dropout and drop path included, because
``torch.utils.checkpoint`` restores the random-number state before recomputing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpointed(block: nn.Module, *args: Any, enabled: bool = True, **kwargs: Any) -> Any:
    """``block(*args, **kwargs)``, recomputed in the backward pass when ``enabled`` and autograd is
    recording (under ``torch.no_grad`` / inference there is nothing to save, so it runs plainly).

    Non-reentrant checkpointing (``use_reentrant=False``): keyword arguments, inputs that need no grad
    and nested autograd all work, and the random-number state (CPU and CUDA) is preserved."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)


def checkpoint_seq(blocks: Iterable[nn.Module], x: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """Run ``x`` through ``blocks`` in turn, each one :func:`checkpointed` when ``enabled``."""
    for block in blocks:
        x = checkpointed(block, x, enabled=enabled)
    return x
