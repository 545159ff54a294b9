"""Reading pickled data files without running code from them.

``pickle.load`` calls whatever global a file names (``os.system`` with an argument of the file's choosing,
say), so a crafted data file runs code the moment it is read. Data pickles need none of that: dicts,
lists, strings, bytes and numbers are pickle opcodes of their own, and numpy arrays need only the few
numpy functions that rebuild them. :func:`load_data_pickle` allows exactly those globals and refuses the
file, naming it and the global, on any other.

    content = load_data_pickle(path, encoding="latin1")  # a CIFAR batch: dict of lists, bytes, arrays
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    from numpy._core import multiarray, numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray, numeric


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for ``bytes``: latin-1 text to bytes, and
    nothing else (any other codec name is refused, so no codec module is looked up)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(
            f"_codecs.encode is allowed for (str, 'latin1') only, found {encoding!r}"
        )
    return text.encode(encoding)


# (module, name) -> the object unpickling may use. numpy 1.x writes ``numpy.core.*``, numpy 2
# ``numpy._core.*``; both map to the installed numpy's objects (nothing is imported by name).
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # ndarray.__reduce__ (pickle protocols 0 to 4)
    ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
    # ndarray.__reduce_ex__(5), the default protocol from Python 3.14: the same array from its raw buffer
    ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
    # how Python 3 writes a bytes object at pickle protocol 2
    ("_codecs", "encode"): _latin1_bytes,
}


class RefusedPickleError(ValueError):
    """A data pickle that names a Python global outside ``ALLOWED_GLOBALS``; the message names the file."""


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise RefusedPickleError(f"{module}.{name}")
        return allowed


def load_data_pickle(path: str | os.PathLike, encoding: str = "ASCII") -> Any:
    """Unpickle the data file ``path``, allowing only plain containers, strings, bytes, numbers and numpy
    arrays (``ALLOWED_GLOBALS``).

    Args:
        path: the pickle file.
        encoding: how Python 2 byte strings are decoded (as ``pickle.load``); "latin1" keeps the bytes of
            Python 2 numpy arrays intact.

    Raises:
        RefusedPickleError: the file names another global (a function or class that unpickling would call,
            which could run code); the message names the file and the global and says it was not loaded.
        pickle.UnpicklingError, EOFError, ValueError: the file is not a readable pickle.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            return _DataUnpickler(f, encoding=encoding).load()
        except RefusedPickleError as error:
            allowed = ", ".join(f"{module}.{name}" for module, name in ALLOWED_GLOBALS)
            raise RefusedPickleError(
                f"refusing to load {path}: it names the Python global {error}, which unpickling would call "
                f"(it could run code from the file); the file was not loaded. Data pickles may hold only "
                f"dicts, lists, tuples, strings, bytes, numbers and numpy arrays (allowed globals: {allowed})"
            ) from None
