"""Loading MAE weights: the official checkpoints (facebookresearch/mae), transformers'
``ViTMAEForPreTraining`` state dicts and vtrain Lightning checkpoints.

The official files use the model's own key names (models_mae.py at efb2a80): ``mae_visualize_vit_*.pth``
hold the whole autoencoder, ``mae_pretrain_vit_*.pth`` the encoder only (its decoder is not released), both
under ``model``. An encoder-only file leaves the decoder at its initialisation, with a warning. transformers'
keys are renamed onto vtrain's, in both its current layout (``vit.layers.N.attention.q_proj``) and the one
the Hub's ``facebook/vit-mae-*`` files use (``vit.encoder.layer.N.attention.attention.query``); its separate
q / k / v projections are stacked into one ``qkv``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from vtrain.checkpoint import fit_state_dict, read_state_dict
from vtrain.models.mae.model import MaskedAutoencoder

logger = logging.getLogger(__name__)

# transformers' (current and Hub) names -> vtrain's, applied in order to each key
_HF_RENAMES = (
    (r"^vit\.embeddings\.cls_token$", "cls_token"),
    (r"^vit\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^vit\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^vit\.(?:encoder\.layer|layers)\.(\d+)\.", r"blocks.\1."),
    (r"^vit\.layernorm\.", "norm."),
    (r"^decoder\.decoder_layers\.(\d+)\.", r"decoder_blocks.\1."),
    (r"^decoder\.", ""),
    (r"\.attention\.(?:attention\.)?(query|key|value)\.", r".attn.\1."),
    (r"\.attention\.(?:attention\.)?([qkv])_proj\.", r".attn.\1."),
    (r"\.attention\.(?:output\.dense|o_proj)\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.(?:intermediate\.dense|mlp\.fc1)\.", ".mlp.fc1."),
    (r"\.(?:output\.dense|mlp\.fc2)\.", ".mlp.fc2."),
)
_QKV = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}


def is_transformers_mae(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith(("vit.embeddings.", "decoder.decoder_")) for key in state_dict)


def convert_transformers_mae(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``ViTMAEForPreTraining`` state dict with vtrain's (= the official code's) key names."""
    converted: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
    for key, value in state_dict.items():
        new = key
        for pattern, replacement in _HF_RENAMES:
            new = re.sub(pattern, replacement, new)
        match = re.match(r"^(.*\.attn)\.(query|key|value|q|k|v)\.(weight|bias)$", new)
        if match:
            prefix, which, kind = match.groups()
            qkv.setdefault(f"{prefix}.qkv.{kind}", {})[_QKV[which]] = (new, value)
        else:
            converted[new] = value
    for key, parts in qkv.items():
        if len(parts) == 3:
            converted[key] = torch.cat([parts[i][1] for i in range(3)], dim=0)
        else:  # an incomplete q / k / v set stays under its own names, for the key check to report
            converted.update(dict(parts.values()))
    return converted


def read_mae_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in the MAE file ``path`` with vtrain's (= the official) key names: transformers'
    ``ViTMAEForPreTraining`` keys converted.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is unreadable.
    """
    if not path.is_file():
        raise FileNotFoundError(f"MAE checkpoint {path} does not exist or is not a file")
    state_dict = read_state_dict(path)
    return convert_transformers_mae(state_dict) if is_transformers_mae(state_dict) else state_dict


def load_mae_checkpoint(
    model: MaskedAutoencoder, path: str | os.PathLike, strict: bool = True
) -> MaskedAutoencoder:
    """Load an official, transformers or vtrain MAE checkpoint into ``model`` in place.

    Args:
        model: the autoencoder to fill.
        path: a torch file (read with ``weights_only=True``).
        strict: raise on missing or unexpected keys (a file without any decoder key is an encoder-only
            release and may leave the whole decoder out); mis-shaped keys always raise.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is unreadable or does not fit ``model``.
    """
    path = Path(path)
    state_dict = read_mae_state_dict(path)
    decoder = {k for k in model.state_dict() if k.startswith("decoder") or k == "mask_token"}
    allowed_missing: frozenset[str] = frozenset()
    if not decoder & state_dict.keys():
        allowed_missing = frozenset(decoder)
        logger.warning("%s holds an encoder only: the decoder keeps its initialisation", path)
    fit_state_dict(model, state_dict, path, strict, allowed_missing)
    return model
