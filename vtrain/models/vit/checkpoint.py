"""Loading ViT weights: official JAX ``.npz`` checkpoints, timm state dicts and vtrain Lightning checkpoints.

Every format is first turned into a state dict with timm's key names, then fitted to the model in one
place, as the official fine-tuning code does (google-research/vision_transformer
vit_jax/checkpoint.py:185-201 at c6de1e5): position embeddings are resampled to the model's patch grid by
linear interpolation of the grid (``scipy.ndimage.zoom(order=1)``, the class token kept), a classifier head
of another shape is skipped, a ``pre_logits`` layer the model lacks is dropped with the head on top of it
(the "drop-head variant": the model keeps its zero-initialised head, ViT paper section 3.2), and anything
else that does not fit is an error naming the file and the keys.
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
            warning when its shape differs, e.g. an ImageNet-21k checkpoint fine-tuned on CIFAR-10, or when
            the checkpoint has a ``pre_logits`` layer the model lacks (the head was trained on its output),
            e.g. vit_b16_imagenet's 224 px run fine-tuned at 384 px.

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


def resample_pos_embed_official(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """``pos_embed`` [1, prefix + H * W, D] resampled to ``new_grid`` as the official fine-tuning code does
    (vit_jax/checkpoint.py:209-238, ``interpolate_posembed``): the prefix (class token) rows kept, the grid
    zoomed by ``scipy.ndimage.zoom(order=1)``, i.e. bilinear interpolation whose corner positions coincide
    (``align_corners=True``) without low-pass filtering. timm's bicubic antialiased resampling gives other
    values: 31 % of the norm of a random 14 x 14 table apart at 14 -> 24."""
    return resample_abs_pos_embed(
        pos_embed,
        new_grid,
        num_prefix_tokens=num_prefix_tokens,
        mode="bilinear",
        antialias=False,
        align_corners=True,
    )


def _fit_to_model(
    model: VisionTransformer, state_dict: dict[str, torch.Tensor], path: Path, strict: bool
) -> None:
    """Resample ``pos_embed``, skip a head that does not fit, check every other key, then load."""
    expected = model.state_dict()
    pos_embed = state_dict.get("pos_embed")
    if (
        pos_embed is not None
        and pos_embed.ndim == 3
        and pos_embed.shape != expected["pos_embed"].shape
        and pos_embed.shape[-1] == expected["pos_embed"].shape[-1]
    ):
        try:
            state_dict["pos_embed"] = resample_pos_embed_official(
                pos_embed, model.patch_embed.grid_size, model.num_prefix_tokens
            )
        except ValueError as e:
            raise ValueError(f"{path}: cannot resample pos_embed {tuple(pos_embed.shape)}: {e}") from e
        logger.info(
            "%s: resampled pos_embed %s to %s (linear, as scipy.ndimage.zoom order=1)",
            path,
            tuple(pos_embed.shape),
            tuple(expected["pos_embed"].shape),
        )

    allowed_missing: set[str] = set()
    checkpoint_head, model_head = _shape(state_dict.get("head.weight")), _shape(expected.get("head.weight"))
    drops_pre_logits = any(k.startswith("pre_logits.") for k in state_dict) and not any(
        k.startswith("pre_logits.") for k in expected
    )
    if checkpoint_head != model_head or drops_pre_logits:
        skipped = [
            k
            for k in state_dict
            if k.startswith("head.") or (k.startswith("pre_logits.") and k not in expected)
        ]
        for key in skipped:
            del state_dict[key]
        allowed_missing = {k for k in expected if k.startswith("head.")}
        if checkpoint_head != model_head:
            found, wanted = checkpoint_head or "absent", model_head or "absent"
            reason = f"classifier head is {found} in the checkpoint but {wanted} in the model"
        else:
            reason = "the checkpoint's head reads a pre_logits layer the model does not have"
        logger.warning(
            "%s: %s; keeping the model's initial head (skipped %s)",
            path,
            reason,
            ", ".join(skipped) or "nothing",
        )

    fit_state_dict(model, state_dict, path, strict, frozenset(allowed_missing))
