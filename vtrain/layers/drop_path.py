"""Stochastic depth (Huang et al. 2016): drop a whole residual branch per sample."""

import torch
from torch import nn


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Zero ``x`` for a random ``drop_prob`` fraction of the samples and scale the rest by ``1 / keep_prob``.

    Args:
        x: residual-branch output [B, ...]; one keep/drop decision per sample along dim 0.
        drop_prob: probability of dropping a sample's branch.
        training: identity when False.

    Returns:
        tensor shaped like ``x`` whose expectation equals ``x``.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
    return x * mask / keep_prob


class DropPath(nn.Module):
    """Module form of :func:`drop_path`, active only in training mode."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, ...] -> [B, ...]"""
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
