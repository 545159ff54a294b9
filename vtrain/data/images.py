"""What every data set that reads image files shares (ImageNet, COCO, Cityscapes, CUFED): opening an
image as 8-bit RGB (16-bit images scaled down, not clipped), checking its size against its annotations,
and skipping unreadable files when asked to, with a count of the skipped files that all DataLoader worker
processes add to.

    loader = ImageFileLoader(skip_corrupt=True)
    image = loader(path)  # PIL RGB image, or None when the file cannot be decoded
    DataLoader(dataset, collate_fn=collate_skip_corrupt)  # drops the None samples
    loader.skipped  # files skipped so far, summed over all worker processes
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch.multiprocessing
from PIL import Image
from torch.utils.data import default_collate

log = logging.getLogger(__name__)

# What PIL raises for a file it cannot decode: OSError (truncated data, unidentified format, missing file),
# SyntaxError (broken PNG chunks), ValueError (bad headers), DecompressionBombError (absurd sizes).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


# Modes that PIL converts to 8-bit RGB without losing their range: 8 bits (or fewer) per channel. PIL
# already reduces 16-bit RGB(A) PNGs to these (keeping each value's high byte) when it decodes them.
_EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}
)
# 16-bit grey; PIL's own ``convert("RGB")`` clips every value above 255, which turns the image almost white.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# PIL opens 16-bit grey PGM files (and, in older versions, PNG files) as 32-bit mode "I", values 0 .. 65535.
_SIXTEEN_BIT_IN_I = frozenset({"PNG", "PPM"})


# start-of-frame markers of baseline, extended sequential and progressive Huffman-coded JPEGs
_PLAIN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
# markers that are followed by a length: every one but SOI, EOI, TEM and the restart markers
_NO_LENGTH = frozenset({0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)})


def jpeg_frame(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(start-of-frame marker, precision in bits, height, width, components) of a JPEG file's first frame
    header, None when ``data`` is not a JPEG whose header reads."""
    if data[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _NO_LENGTH:
            position += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn, not DHT / JPG / DAC
            if position + 10 > len(data):
                return None
            header = data[position + 4 : position + 10]
            height, width = int.from_bytes(header[1:3], "big"), int.from_bytes(header[3:5], "big")
            return marker, header[0], height, width, header[5]
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def plain_jpeg(frame: tuple[int, int, int, int, int] | None) -> bool:
    """Whether a JPEG with this frame header (:func:`jpeg_frame`) is a plain 8-bit grey or colour one
    (baseline, extended or progressive Huffman-coded; 1 or 3 components), which nvJPEG and torchvision's
    ``decode_jpeg`` turn into RGB: not CMYK / YCCK, 12-bit, lossless or arithmetic-coded."""
    if frame is None:
        return False
    marker, precision, height, width, components = frame
    return marker in _PLAIN_FRAMES and precision == 8 and components in (1, 3) and height > 0 and width > 0


def width_height(image: Any) -> tuple[int, int]:
    """(width, height) in pixels of a PIL image (or anything with its ``size``) or a [..., H, W] tensor."""
    if isinstance(image, torch.Tensor):
        return image.shape[-1], image.shape[-2]
    return image.size


class CorruptImageError(OSError):
    """An image file that cannot be decoded; the message names the file."""


class UnsupportedImageError(ValueError):
    """An image whose pixels have no defined 8-bit scaling (32-bit integer or float); names the file."""


class ImageSizeError(ValueError):
    """An image whose size differs from the one its annotations give; names both files and both sizes."""


def to_rgb(image: Image.Image, path: str | Path) -> Image.Image:
    """An opened image as 8-bit RGB.

    8-bit (and palette, CMYK, ...) images convert as PIL converts them; 16-bit grey images are scaled to
    8 bits (``value >> 8``, so ``v * 257`` gives back ``v``) rather than clipped at 255.

    Raises:
        UnsupportedImageError: naming ``path``, for 32-bit integer or float pixels ("I" from formats other
            than PNG / PGM, "F"), whose range is not defined, and for modes PIL cannot convert.
    """
    if image.mode in _EIGHT_BIT_MODES:
        return image.convert("RGB")
    sixteen_bit = image.mode in _SIXTEEN_BIT_MODES or (
        image.mode == "I" and image.format in _SIXTEEN_BIT_IN_I
    )
    if sixteen_bit:
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UnsupportedImageError(
                f"cannot load {path}: expected 16-bit values in 0 .. 65535 for its mode {image.mode!r}, "
                f"found {values.min()} .. {values.max()}"
            )
        return Image.fromarray((values >> 8).astype(np.uint8)).convert("RGB")
    kind = {"I": "32-bit integers", "F": "32-bit floats"}.get(image.mode, "of a kind PIL cannot make RGB")
    raise UnsupportedImageError(
        f"cannot load {path}: its pixels are {kind} (PIL mode {image.mode!r}), which have no defined "
        "scaling to 8-bit RGB; expected an 8-bit or 16-bit image (convert the file, e.g. to a 16-bit PNG)"
    )


def open_rgb(path: str | Path | BinaryIO, name: str | Path | None = None) -> Image.Image:
    """The image file ``path`` (or an open binary file, e.g. the bytes of a shard member, named ``name`` in
    errors) as 8-bit RGB (see :func:`to_rgb`).

    Raises:
        CorruptImageError: naming the file, when it cannot be decoded.
        UnsupportedImageError: naming the file, when its pixels cannot be scaled to 8 bits.
    """
    name = path if name is None else name
    try:
        image = Image.open(path)
    except _DECODE_ERRORS as error:
        raise CorruptImageError(f"cannot read image {name}: {error}") from error
    with image:
        try:
            image.load()
        except _DECODE_ERRORS as error:
            raise CorruptImageError(f"cannot read image {name}: {error}") from error
        return to_rgb(image, name)


def check_image_size(path: str | Path, image: Any, width: int, height: int, source: str) -> None:
    """Raise ImageSizeError unless ``image`` (read from ``path``) is ``width`` x ``height`` pixels, the size
    that ``source`` (e.g. "instances_train2017.json, image 42") gives it: annotations drawn for another size
    would not line up with the pixels (boxes clipped wrongly, masks rasterised at the wrong size)."""
    found = width_height(image)
    if found != (width, height):
        raise ImageSizeError(
            f"{path}: the image is {found[0]} x {found[1]} pixels (width x height) but {source} gives "
            f"{width} x {height}; its annotations would not line up with the pixels. Correct the width and "
            "height there, or replace the image with the one that was annotated"
        )


class ImageFileLoader:
    """Opens an image file as an 8-bit RGB PIL image (:func:`open_rgb`).

    Args:
        skip_corrupt: when False an unreadable file raises CorruptImageError naming it; when True the
            loader logs the file, returns None and adds one to ``skipped``. Images whose pixels cannot be
            scaled to 8 bits (UnsupportedImageError) always raise: they are not corrupt, only unusable.

    The counter is a ``torch.multiprocessing.Value`` in shared memory, so the increments made inside
    DataLoader worker processes are visible to the main process.
    """

    def __init__(self, skip_corrupt: bool = False) -> None:
        self.skip_corrupt = skip_corrupt
        self._skipped = torch.multiprocessing.Value("i", 0)

    def read(self, path: str | Path) -> bytes:
        """The encoded bytes of the image file at ``path`` (a shard-backed loader reads them from its shard
        instead); OSError when there are none."""
        return Path(path).read_bytes()

    def open(self, path: str | Path) -> Image.Image:
        """The image at ``path`` (a shard-backed loader reads it from its shard instead)."""
        return open_rgb(path)

    def __call__(self, path: str | Path) -> Image.Image | None:
        try:
            return self.open(path)
        except CorruptImageError as error:
            return self.skip(path, error)

    def skip(self, path: str | Path, error: CorruptImageError) -> None:
        """Raises ``error`` (an unreadable ``path``), or with ``skip_corrupt`` logs it and counts it."""
        if not self.skip_corrupt:
            raise error
        log.warning("skipping corrupt image %s: %s", path, error.__cause__)
        with self._skipped.get_lock():
            self._skipped.value += 1

    @property
    def skipped(self) -> int:
        """Number of files skipped as corrupt so far, over all worker processes."""
        return self._skipped.value


class RereadingLoader:
    """A loader that reads the files of another :class:`ImageFileLoader` (``source``: from folders or from
    shards) as bytes and decodes them its own way (``data.decode=tensor`` / ``gpu``); what it cannot decode
    ``source`` opens. Corrupt files raise or are skipped and counted in ``source``'s ``skipped``."""

    def __init__(self, source: ImageFileLoader | None = None) -> None:
        self.source = ImageFileLoader() if source is None else source

    @property
    def skip_corrupt(self) -> bool:
        return self.source.skip_corrupt

    @property
    def skipped(self) -> int:
        """Files skipped as corrupt so far (``source``'s count, over all worker processes)."""
        return self.source.skipped

    def read(self, path: str | Path) -> bytes:
        """The bytes of ``path``; empty when there are none (``source`` then raises or skips, naming it)."""
        try:
            return self.source.read(path)
        except OSError:
            return b""


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
