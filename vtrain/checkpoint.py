"""Safe checkpoint reading: tensors and plain containers only, never pickled code."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch


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
