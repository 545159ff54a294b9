"""What every data set that reads image files shares (ImageNet here; COCO, Cityscapes,
CUFED later): opening an image as RGB, and skipping unreadable files when asked to, with a count of
the skipped files that all DataLoader worker processes add to.

    loader = ImageFileLoader(skip_corrupt=True)
    image = loader(path)  # PIL RGB image, or None when the file cannot be decoded
    DataLoader(dataset, collate_fn=collate_skip_corrupt)  # drops the None samples
    loader.skipped  # files skipped so far, summed over all worker processes
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.multiprocessing
from PIL import Image
from torch.utils.data import default_collate

log = logging.getLogger(__name__)

# What PIL raises for a file it cannot decode: OSError (truncated data, unidentified format, missing file),
# SyntaxError (broken PNG chunks), ValueError (bad headers), DecompressionBombError (absurd sizes).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class CorruptImageError(OSError):
    """An image file that cannot be decoded; the message names the file."""


class ImageFileLoader:
    """Opens an image file as an RGB PIL image.

    Args:
        skip_corrupt: when False an unreadable file raises CorruptImageError naming it; when True the
            loader logs the file, returns None and adds one to ``skipped``.

    The counter is a ``torch.multiprocessing.Value`` in shared memory, so the increments made inside
    DataLoader worker processes are visible to the main process.
    """

    def __init__(self, skip_corrupt: bool = False) -> None:
        self.skip_corrupt = skip_corrupt
        self._skipped = torch.multiprocessing.Value("i", 0)

    def __call__(self, path: str | Path) -> Image.Image | None:
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except _DECODE_ERRORS as error:
            if not self.skip_corrupt:
                raise CorruptImageError(f"cannot read image {path}: {error}") from error
            log.warning("skipping corrupt image %s: %s", path, error)
            with self._skipped.get_lock():
                self._skipped.value += 1
            return None

    @property
    def skipped(self) -> int:
        """Number of files skipped as corrupt so far, over all worker processes."""
        return self._skipped.value


def collate_skip_corrupt(batch: Sequence[Any]) -> Any:
    """``default_collate`` after dropping the samples that are None (skipped corrupt images).

    A batch can therefore be smaller than the loader's batch size. A batch with no readable sample left
    raises, since no model step can run on it.
    """
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        raise CorruptImageError(
            f"all {len(batch)} samples of a batch were unreadable images (skipped as corrupt); "
            "the data set is probably broken, see the warnings above for the file names"
        )
    return default_collate(kept)
