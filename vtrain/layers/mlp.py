"""Position-wise feed-forward block of a transformer."""

import torch
from torch import nn


class Mlp(nn.Module):
    """``fc1 -> act -> dropout -> fc2 -> dropout``, the transformer MLP block (ViT's ``MlpBlock``).

    Args:
        in_features: input width.
        hidden_features: width after ``fc1`` (defaults to ``in_features``).
        out_features: output width (defaults to ``in_features``).
        act_layer: activation class; the default ``nn.GELU`` is the exact (erf) GELU, as in the ViT paper.
        drop: dropout probability after the activation and after ``fc2``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_features] -> [..., out_features]"""
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))
