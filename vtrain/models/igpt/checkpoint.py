"""Loading iGPT weights: Hugging Face ``ImageGPT`` state dicts and vtrain checkpoints.

The Hugging Face files (``openai/imagegpt-{small,medium,large}``, converted from the official TensorFlow
checkpoints) differ from the official model and from ours in three ways that the conversion undoes:

* the start-of-sequence vector is the last row of ``wte`` (vocabulary 513 = 512 colours + SOS);
* linear layers are GPT-2 ``Conv1D``s (weight ``[in, out]``) that carry biases; the converted official
  weights leave them at zero, so a non-zero bias cannot be represented here and is an error;
* keys live under ``transformer.`` (``ImageGPTForCausalImageModeling``) or at the top level
  (``ImageGPTModel``), with the output projection ``lm_head`` and the classifier ``score`` outside it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from vtrain.checkpoint import fit_state_dict, read_state_dict
from vtrain.models.igpt.model import ImageGPT

logger = logging.getLogger(__name__)

# Hugging Face block key (after "h.{i}.") -> ours (after "blocks.{i}."), and whether it is a Conv1D weight
_HF_BLOCK_KEYS = {
    "ln_1.weight": ("norm1.weight", False),
    "attn.c_attn.weight": ("attn.qkv.weight", True),
    "attn.c_proj.weight": ("attn.proj.weight", True),
    "ln_2.weight": ("norm2.weight", False),
    "mlp.c_fc.weight": ("mlp.fc1.weight", True),
    "mlp.c_proj.weight": ("mlp.fc2.weight", True),
}
_HF_BIASES = ("attn.c_attn.bias", "attn.c_proj.bias", "mlp.c_fc.bias", "mlp.c_proj.bias")
# the causal-mask buffers older transformers versions saved with the weights
_HF_BUFFERS = ("attn.bias", "attn.masked_bias")


def load_igpt_checkpoint(model: ImageGPT, path: str | os.PathLike, strict: bool = True) -> ImageGPT:
    """Load weights into ``model`` in place.

    Formats, detected from the keys: a Hugging Face ``ImageGPT`` state dict (``pytorch_model.bin`` or
    ``model.safetensors``, from ``ImageGPTForCausalImageModeling``, ``ImageGPTModel`` or
    ``ImageGPTForImageClassification``), or a vtrain state dict / Lightning checkpoint. Torch files are read
    with ``weights_only=True``.

    Args:
        model: the iGPT to fill; its vocabulary, width, depth and sequence length must match the file.
        path: checkpoint file.
        strict: raise on missing or unexpected keys (otherwise they are logged). A classifier of another
            shape (or none) in the file leaves the model's ``clf_head`` as initialised, with a warning.

    Returns:
        ``model``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is unreadable, carries pickled objects, has non-zero biases, or does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"iGPT checkpoint {path} does not exist or is not a file")
    state_dict = _read_safetensors(path) if path.suffix == ".safetensors" else read_state_dict(path)
    if (
        any(k.endswith("wte.weight") and k != "wte.weight" for k in state_dict)
        or "h.0.ln_1.weight" in state_dict
    ):
        state_dict = convert_hf_imagegpt(state_dict, model.vocab_size, path)
    expected = model.state_dict()
    allowed_missing: frozenset[str] = frozenset()
    clf = state_dict.get("clf_head.weight")
    if clf is None or "clf_head.weight" not in expected or clf.shape != expected["clf_head.weight"].shape:
        state_dict.pop("clf_head.weight", None)
        allowed_missing = frozenset({"clf_head.weight"})
        if "clf_head.weight" in expected or clf is not None:
            logger.warning(
                "%s: classifier is %s in the checkpoint but %s in the model; keeping the model's initial one",
                path,
                None if clf is None else tuple(clf.shape),
                tuple(expected["clf_head.weight"].shape) if "clf_head.weight" in expected else None,
            )
    fit_state_dict(model, state_dict, path, strict, allowed_missing)
    return model


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise ValueError(f"{path}: reading .safetensors files needs the safetensors package") from e
    return load_file(str(path))


def convert_hf_imagegpt(
    state_dict: dict[str, torch.Tensor], vocab_size: int, path: str | os.PathLike = "<state dict>"
) -> dict[str, torch.Tensor]:
    """Map a Hugging Face ``ImageGPT`` state dict onto vtrain's keys.

    Args:
        state_dict: keys as in transformers (``transformer.wte.weight``, ``lm_head.weight``, ``score.weight``,
            ``transformer.h.0.attn.c_attn.weight``), with or without the ``transformer.`` prefix.
        vocab_size: the palette size k of the target model; ``wte`` must have k + 1 rows (the last is SOS).
        path: the file, for error messages.

    Returns:
        vtrain state dict (``wte.weight``, ``sos``, ``wpe``, ``blocks.{i}.attn.qkv.weight``, ``head.weight``,
        ``clf_head.weight``). Keys that have no place here are kept under their own name, so that the key
        check reports them.
    """
    body = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
    wte = body.pop("wte.weight", None)
    if wte is None or wte.ndim != 2 or wte.shape[0] != vocab_size + 1:
        found = None if wte is None else tuple(wte.shape)
        raise ValueError(
            f"{path}: expected an ImageGPT 'wte.weight' of {vocab_size + 1} rows (vocab_size colours + the "
            f"start token), found {found}"
        )
    out = {"wte.weight": wte[:vocab_size], "sos": wte[vocab_size]}
    if "wpe.weight" in body:
        out["wpe"] = body.pop("wpe.weight")
    if "ln_f.weight" in body:
        out["norm.weight"] = body.pop("ln_f.weight")
    if "lm_head.weight" in body:
        out["head.weight"] = body.pop("lm_head.weight")
    if "score.weight" in body:
        out["clf_head.weight"] = body.pop("score.weight")
    depth = 0
    while f"h.{depth}.ln_1.weight" in body:
        depth += 1
    for i in range(depth):
        for name in _HF_BIASES:
            bias = body.pop(f"h.{i}.{name}", None)
            if bias is not None and bias.abs().max() > 0:
                raise ValueError(
                    f"{path}: h.{i}.{name} is non-zero (max |b| = {bias.abs().max().item():.3g}); iGPT has "
                    "no biases (the converted official weights keep them at zero), so this checkpoint "
                    "cannot be loaded exactly"
                )
        for name in _HF_BUFFERS:
            body.pop(f"h.{i}.{name}", None)
        for hf_name, (name, conv1d) in _HF_BLOCK_KEYS.items():
            weight = body.pop(f"h.{i}.{hf_name}", None)
            if weight is not None:
                out[f"blocks.{i}.{name}"] = weight.t().contiguous() if conv1d else weight
    return {**out, **body}
