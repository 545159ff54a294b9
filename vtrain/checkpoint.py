"""Safe checkpoint reading (tensors and plain containers only, never pickled code) and the choice of the
checkpoint a run resumes from."""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def first_line(error: BaseException) -> str:
    """`TypeName: first line of the message`, for wrapping library errors in our own."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _pickled_code(path: Path, error: pickle.UnpicklingError) -> list[str]:
    """The globals (classes, functions) that made the weights-only unpickler refuse ``path``, read
    statically from the file's pickle (nothing is run), or else from torch's message (legacy files)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip archive (legacy format): torch's message names the first one
        names = re.findall(r"GLOBAL (\S+)", str(error))
    return sorted(set(names) - {"argparse.Namespace"})


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> Any:
    """Load a torch file onto the CPU with `weights_only=True`; `mmap=True` maps the tensors' bytes
    instead of reading them (a cheap check that the whole file is readable).

    Raises:
        FileNotFoundError: `path` is not a file.
        ValueError: naming the file, when it carries pickled Python objects other than tensors and plain
            containers (unpickling them could run code from the file, so it is refused), or when it is not
            a readable torch file (truncated, corrupt, another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist or is not a file")
    is_zip = zipfile.is_zipfile(path)  # what torch.save writes; a truncated one lost its central directory
    try:
        # argparse.Namespace only carries attributes: the official DETR training checkpoints store their
        # command-line `args` in one, and it cannot run code when unpickled.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except Exception as e:  # RuntimeError, EOFError, KeyError, UnpicklingError... depending on the bytes
        # `from None`: torch's own message advises retrying with the check switched off
        refused = _pickled_code(path, e) if isinstance(e, pickle.UnpicklingError) else []
        if refused:
            raise ValueError(
                f"refusing to load {path}: it carries pickled Python objects ({', '.join(refused)}), code "
                "that would run when unpickled; the file was not loaded. Only tensors and plain containers "
                "are accepted (re-save the weights with torch.save(model.state_dict(), ...))"
            ) from None
        if not is_zip:
            raise ValueError(
                f"cannot read {path}: not a torch checkpoint: expected the zip archive torch.save writes, "
                f"found {path.stat().st_size} bytes without a zip directory (a truncated file, or another "
                "format)"
            ) from None
        if isinstance(e, pickle.UnpicklingError):
            raise ValueError(
                f"cannot read {path}: its pickle holds more than tensors and plain containers; the file was "
                "not loaded"
            ) from None
        raise ValueError(
            f"cannot read {path}: a zip archive, but not a readable torch checkpoint ({first_line(e)})"
        ) from e


def _global_step(path: Path) -> int:
    """The training step stored in a Lightning checkpoint (-1 when it has none); raises ValueError when
    the file is unreadable (see `load_checkpoint`)."""
    checkpoint = load_checkpoint(path, mmap=True)
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    return step if isinstance(step, int) else -1


def resolve_resume(ckpt_path: str | os.PathLike, checkpoint_dir: str | os.PathLike) -> str | None:
    """The checkpoint a run resumes from, checked readable before training starts.

    ``ckpt_path`` is a file, or ``"last"``: ``checkpoint_dir/last.ckpt`` when it is readable; when it is
    missing or unreadable (a kill, a full disk, a foreign file), with a warning naming both files, the
    readable ``*.ckpt`` of ``checkpoint_dir`` with the highest global step (the newest on ties); None when
    ``checkpoint_dir`` holds no checkpoint at all (a run that has not saved one yet).

    Raises:
        FileNotFoundError: ``ckpt_path`` is a file name and no such file exists.
        ValueError: naming the file, when ``ckpt_path`` is unreadable or carries pickled code; for
            ``"last"``, naming each checkpoint of ``checkpoint_dir`` and why, when none is readable.
    """
    if str(ckpt_path) != "last":
        path = Path(ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        _global_step(path)
        return str(path)
    checkpoint_dir = Path(checkpoint_dir)
    last = checkpoint_dir / "last.ckpt"
    candidates = sorted(checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else []
    if not candidates:
        return None
    problems = {}
    if last.is_file():
        try:
            _global_step(last)
            return str(last)
        except ValueError as e:
            problems[last] = str(e)
    else:
        problems[last] = f"{last} does not exist"
    readable = []
    for path in candidates:
        if path == last:
            continue
        try:
            readable.append((_global_step(path), path.stat().st_mtime, path))
        except ValueError as e:
            problems[path] = str(e)
    if not readable:
        raise ValueError(
            f"ckpt_path=last: no readable checkpoint in {checkpoint_dir}: " + "; ".join(problems.values())
        )
    step, _, chosen = max(readable)
    logger.warning(
        "ckpt_path=last: %s is unusable (%s); resuming from %s instead, the newest readable checkpoint of "
        "the run (global step %d)",
        last,
        problems[last],
        chosen,
        step,
    )
    return str(chosen)


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
