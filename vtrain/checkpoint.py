"""Safe checkpoint reading: tensors and plain containers only, never pickled code."""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def first_line(error: BaseException) -> str:
    """`TypeName: first line of the message`, for wrapping library errors in our own."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Load a torch file onto the CPU with `weights_only=True`.

    Raises:
        FileNotFoundError: `path` is not a file.
        ValueError: naming the file, when it carries pickled Python objects other than tensors and plain
            containers (unpickling them could run code from the file, so it is refused), or when it is not
            a readable torch file (truncated, corrupt, another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist or is not a file")
    try:
        # argparse.Namespace only carries attributes: the official DETR training checkpoints store their
        # command-line `args` in one, and it cannot run code when unpickled.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # RuntimeError, EOFError, KeyError, UnpicklingError... depending on the bytes
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and refused:
            raise ValueError(
                f"refusing to load {path}: it carries pickled Python objects ({refused.group(1)}), which "
                "could run code when unpickled; only tensors and plain containers are accepted "
                "(re-save it with torch.save(model.state_dict(), ...))"
            ) from None
        raise ValueError(f"cannot read {path}: not a torch checkpoint ({first_line(e)})") from e


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torch file (``weights_only=True``) and return the network's state dict inside it.

    Accepts a bare state dict, one under ``model`` (official DETR, torchvision-style files) or
    ``state_dict``, and a vtrain Lightning checkpoint, whose network keys start with ``model.``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is unreadable, carries pickled Python objects (other than an
            ``argparse.Namespace``, as in the official DETR training checkpoints), or holds no state dict
            of tensors.
    """
    state_dict = load_checkpoint(path)
    if isinstance(state_dict, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(state_dict.get(wrapper), dict):
                state_dict = state_dict[wrapper]
                break
        # a vtrain Lightning checkpoint keeps the network under the task module's `model` attribute
        network = {
            k.removeprefix("model."): v
            for k, v in state_dict.items()
            if isinstance(k, str) and k.startswith("model.")
        }
        state_dict = network or state_dict
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        found = list(state_dict)[:8] if isinstance(state_dict, dict) else type(state_dict).__name__
        raise ValueError(f"{path} holds no state dict of tensors (found {found})")
    return state_dict


def format_keys(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def fit_state_dict(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike,
    strict: bool = True,
    allowed_missing: frozenset[str] = frozenset(),
) -> None:
    """Load ``state_dict`` into ``module`` after checking every key, naming ``path`` in any error.

    Mis-shaped keys always raise; missing (other than ``allowed_missing``) and unexpected keys raise when
    ``strict`` and are logged otherwise.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict and k not in allowed_missing]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} {tuple(v.shape)} (model {tuple(expected[k].shape)})"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [f"mis-shaped keys {format_keys(mis_shaped)}"] if mis_shaped else []
    if strict:
        problems += [f"missing keys {format_keys(missing)}"] if missing else []
        problems += [f"unexpected keys {format_keys(unexpected)}"] if unexpected else []
    if problems:
        raise ValueError(f"{path} does not fit {type(module).__name__}: {'; '.join(problems)}")
    if missing or unexpected:
        logger.warning(
            "%s: loaded non-strictly; missing %s; unexpected %s",
            path,
            format_keys(missing) or "none",
            format_keys(unexpected) or "none",
        )
    module.load_state_dict(state_dict, strict=False)
