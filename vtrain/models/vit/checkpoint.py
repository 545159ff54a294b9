"""Loading ViT weights: official JAX ``.npz`` checkpoints, timm state dicts and vtrain Lightning checkpoints.

Every format is first turned into a state dict with timm's key names, then fitted to the model in one
place: position embeddings are resampled to the model's patch grid, a classifier head of another shape
is skipped (fine-tuning), and anything else that does not fit is an error naming the file and the keys.
"""

import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from vtrain.checkpoint import first_line, fit_state_dict, format_keys, read_state_dict
from vtrain.layers import resample_abs_pos_embed
from vtrain.models.vit.model import VisionTransformer

logger = logging.getLogger(__name__)

# where official checkpoints keep parameters: top level, Flax optimizer target, big_vision, its image tower
_JAX_PREFIXES = ("", "opt/target/", "params/", "params/img/")


def load_vit_checkpoint(
    model: VisionTransformer, path: str | os.PathLike, strict: bool = True
) -> VisionTransformer:
    """Load weights into ``model`` in place, detecting the file format from its content.

    Formats: an official google-research/vision_transformer (or big_vision) ``.npz``; a torch file
    (always read with ``weights_only=True``) holding a timm-style state dict, that dict under ``model`` or
    ``state_dict``, or a vtrain Lightning checkpoint whose ``state_dict`` keys start with ``model.``.

    Args:
        model: the ViT to fill.
        path: checkpoint file.
        strict: raise on missing or unexpected keys (otherwise they are logged). Mis-shaped keys always raise,
            except the classifier head (and a ``pre_logits`` layer the model lacks), which is skipped with a
            warning when its shape differs, e.g. an ImageNet-21k checkpoint fine-tuned on CIFAR-10.

    Returns:
        ``model``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is unreadable, carries pickled Python objects, or does not fit ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ViT checkpoint {path} does not exist or is not a file")
    state_dict = _read_npz(path) if _is_npz(path) else read_state_dict(path)
    _fit_to_model(model, state_dict, path, strict)
    return model


def _is_npz(path: Path) -> bool:
    """NumPy archives are zip files of ``.npy`` members; torch files are zip files with a pickle inside."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return bool(names) and all(name.endswith(".npy") for name in names)


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    """Read an official JAX checkpoint and convert it to timm's key names and tensor layouts."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            weights = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read {path} as a NumPy .npz archive ({first_line(e)})") from e
    return convert_jax_vit(weights, path)


def convert_jax_vit(
    weights: dict[str, np.ndarray], path: str | os.PathLike = "<npz>"
) -> dict[str, torch.Tensor]:
    """Map google-research/vision_transformer (and big_vision) ViT parameters onto timm's state-dict keys.

    Handles the layouts timm's ``_load_weights`` reads: parameters at the top level or under ``opt/target/``,
    ``params/`` or ``params/img/``; one ``encoderblock_{i}`` scope per block or a single scanned
    ``encoderblock`` with a leading depth axis; the original sub-module numbers
    (``MultiHeadDotProductAttention_1``, ``LayerNorm_2``, ``MlpBlock_3``) or big_vision's (0, 1, 0);
    ``Transformer/posembed_input/pos_embedding`` or a top-level ``pos_embedding``. Absent arrays leave
    their key out and arrays a ViT has no place for are kept under their JAX name, so the caller's key
    check reports both.

    Args:
        weights: array name -> array, as stored in the ``.npz``.
        path: the file, for error messages.

    Returns:
        timm-style state dict (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ...).
    """
    prefix = next((p for p in _JAX_PREFIXES if f"{p}embedding/kernel" in weights), None)
    if prefix is None:
        raise ValueError(
            f"{path} is not a ViT JAX checkpoint: no 'embedding/kernel' array at the top level or under "
            f"{', '.join(repr(p) for p in _JAX_PREFIXES[1:])} (found {format_keys(sorted(weights))})"
        )
    used: set[str] = set()

    def take(name: str, index: int | None = None) -> torch.Tensor | None:
        """The array ``prefix + name`` (its ``index``-th slice for scanned blocks) as float32, or None."""
        key = prefix + name
        if key not in weights:
            return None
        used.add(key)
        array = weights[key] if index is None else weights[key][index]
        return torch.from_numpy(np.asarray(array, dtype=np.float32))

    def dense(name: str, index: int | None = None) -> torch.Tensor | None:
        """A Flax Dense/DenseGeneral kernel [..in, ..out] as a torch Linear weight [out, in]."""
        kernel = take(name, index)
        return None if kernel is None else kernel.T

    state_dict = {
        # conv kernel [Ph, Pw, C, D] -> [D, C, Ph, Pw]
        "patch_embed.proj.weight": take("embedding/kernel").permute(3, 2, 0, 1),
        "patch_embed.proj.bias": take("embedding/bias"),
        "cls_token": take("cls"),
    }
    if prefix + "pos_embedding" in weights:  # big_vision keeps it outside the Transformer scope
        state_dict["pos_embed"] = take("pos_embedding")
    else:
        state_dict["pos_embed"] = take("Transformer/posembed_input/pos_embedding")
    scanned = prefix + "Transformer/encoderblock/LayerNorm_0/scale" in weights
    if scanned:
        depth = len(weights[prefix + "Transformer/encoderblock/LayerNorm_0/scale"])
    else:
        depth = 0
        while f"{prefix}Transformer/encoderblock_{depth}/LayerNorm_0/scale" in weights:
            depth += 1
    for i in range(depth):
        if scanned:
            scope, index = "Transformer/encoderblock/", i
        else:
            scope, index = f"Transformer/encoderblock_{i}/", None
        if prefix + scope + "MultiHeadDotProductAttention_1/out/kernel" in weights:  # original numbering
            attn, norm2, mlp = "MultiHeadDotProductAttention_1/", "LayerNorm_2/", "MlpBlock_3/"
        else:  # big_vision numbering
            attn, norm2, mlp = "MultiHeadDotProductAttention_0/", "LayerNorm_1/", "MlpBlock_0/"
        attn, norm2, mlp = scope + attn, scope + norm2, scope + mlp
        # q, k, v kernels are [D, heads, head_dim], biases [heads, head_dim]; timm stacks them as [3 * D, D]
        qkv = [take(f"{attn}{n}/kernel", index) for n in ("query", "key", "value")]
        qkv_bias = [take(f"{attn}{n}/bias", index) for n in ("query", "key", "value")]
        out_kernel = take(f"{attn}out/kernel", index)  # [heads, head_dim, D]
        block = {
            "norm1.weight": take(f"{scope}LayerNorm_0/scale", index),
            "norm1.bias": take(f"{scope}LayerNorm_0/bias", index),
            "attn.qkv.weight": torch.cat([k.flatten(1).T for k in qkv]) if None not in qkv else None,
            "attn.qkv.bias": torch.cat([b.flatten() for b in qkv_bias]) if None not in qkv_bias else None,
            "attn.proj.weight": out_kernel.flatten(0, -2).T if out_kernel is not None else None,
            "attn.proj.bias": take(f"{attn}out/bias", index),
            "norm2.weight": take(f"{norm2}scale", index),
            "norm2.bias": take(f"{norm2}bias", index),
            "mlp.fc1.weight": dense(f"{mlp}Dense_0/kernel", index),
            "mlp.fc1.bias": take(f"{mlp}Dense_0/bias", index),
            "mlp.fc2.weight": dense(f"{mlp}Dense_1/kernel", index),
            "mlp.fc2.bias": take(f"{mlp}Dense_1/bias", index),
        }
        state_dict.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    state_dict.update(
        {
            "norm.weight": take("Transformer/encoder_norm/scale"),
            "norm.bias": take("Transformer/encoder_norm/bias"),
            "pre_logits.fc.weight": dense("pre_logits/kernel"),
            "pre_logits.fc.bias": take("pre_logits/bias"),
            "head.weight": dense("head/kernel"),
            "head.bias": take("head/bias"),
        }
    )
    state_dict = {k: v for k, v in state_dict.items() if v is not None}
    unused = {
        k: torch.from_numpy(np.asarray(v, dtype=np.float32))
        for k, v in weights.items()
        if k.startswith(prefix) and k not in used
    }
    return {**state_dict, **unused}


def _shape(tensor: torch.Tensor | None) -> tuple[int, ...] | None:
    return None if tensor is None else tuple(tensor.shape)


def _fit_to_model(
    model: VisionTransformer, state_dict: dict[str, torch.Tensor], path: Path, strict: bool
) -> None:
    """Resample ``pos_embed``, skip a mismatching head, check every other key, then load."""
    expected = model.state_dict()
    pos_embed = state_dict.get("pos_embed")
    if (
        pos_embed is not None
        and pos_embed.ndim == 3
        and pos_embed.shape != expected["pos_embed"].shape
        and pos_embed.shape[-1] == expected["pos_embed"].shape[-1]
    ):
        try:
            state_dict["pos_embed"] = resample_abs_pos_embed(
                pos_embed, model.patch_embed.grid_size, num_prefix_tokens=model.num_prefix_tokens
            )
        except ValueError as e:
            raise ValueError(f"{path}: cannot resample pos_embed {tuple(pos_embed.shape)}: {e}") from e
        logger.info(
            "%s: resampled pos_embed %s to %s (bicubic)",
            path,
            tuple(pos_embed.shape),
            tuple(expected["pos_embed"].shape),
        )

    allowed_missing: set[str] = set()
    checkpoint_head, model_head = _shape(state_dict.get("head.weight")), _shape(expected.get("head.weight"))
    if checkpoint_head != model_head:
        skipped = [
            k
            for k in state_dict
            if k.startswith("head.") or (k.startswith("pre_logits.") and k not in expected)
        ]
        for key in skipped:
            del state_dict[key]
        allowed_missing = {k for k in expected if k.startswith("head.")}
        logger.warning(
            "%s: classifier head is %s in the checkpoint but %s in the model; keeping the model's initial "
            "head (skipped %s)",
            path,
            checkpoint_head or "absent",
            model_head or "absent",
            ", ".join(skipped) or "nothing",
        )

    fit_state_dict(model, state_dict, path, strict, frozenset(allowed_missing))
