"""Building blocks shared by the vtrain models."""

from vtrain.layers.attention import Attention
from vtrain.layers.checkpoint import checkpoint_seq, checkpointed
from vtrain.layers.drop_path import DropPath, drop_path
from vtrain.layers.mlp import Mlp
from vtrain.layers.pos_embed import resample_abs_pos_embed, sincos_2d_pos_embed

__all__ = [
    "Attention",
    "DropPath",
    "Mlp",
    "checkpoint_seq",
    "checkpointed",
    "drop_path",
    "resample_abs_pos_embed",
    "sincos_2d_pos_embed",
]
