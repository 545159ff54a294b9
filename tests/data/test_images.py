import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtrain.data.images import CorruptImageError, ImageFileLoader, UnsupportedImageError, open_rgb


def _write_png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit PNG of ``values`` ([H, W] grey or [H, W, 3] RGB uint16), written by hand: PIL cannot write
    16-bit RGB, and writes 16-bit grey only through its "I;16" mode."""
    height, width = values.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2 if values.ndim == 3 else 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(png)
    return path


@pytest.fixture
def camera(shared) -> np.ndarray:
    """The real 8-bit grey photo ``camera.png`` (512 x 512)."""
    with Image.open(shared("misc_images/skimage/camera.png")) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_16_bit_grey_png_loads_as_its_8_bit_original(tmp_path, camera):
    path = _write_png16(tmp_path / "camera16.png", camera.astype(np.uint16) * 257)
    with Image.open(path) as image:
        assert image.mode == "I;16"  # what PIL's own convert("RGB") clips to almost white

    loaded = np.asarray(ImageFileLoader()(path))
    assert loaded.shape == (*camera.shape, 3) and loaded.dtype == np.uint8
    assert abs(loaded.mean() - camera.mean()) < 1
    assert np.array_equal(loaded[..., 0], camera) and np.array_equal(loaded[..., 2], camera)


def test_16_bit_rgb_png_and_pgm_load_as_their_8_bit_originals(tmp_path, shared, camera):
    with Image.open(shared("misc_images/skimage/astronaut.png")) as image:
        astronaut = np.asarray(image.convert("RGB"))
    rgb = open_rgb(_write_png16(tmp_path / "astronaut16.png", astronaut.astype(np.uint16) * 257))
    assert np.array_equal(np.asarray(rgb), astronaut)

    pgm = tmp_path / "camera16.pgm"  # PIL opens 16-bit PGM as 32-bit mode "I"
    pgm.write_bytes(b"P5\n512 512\n65535\n" + (camera.astype(np.uint16) * 257).astype(">u2").tobytes())
    assert np.array_equal(np.asarray(open_rgb(pgm))[..., 1], camera)


@pytest.mark.parametrize(
    ("values", "kind"),
    [(np.float32, "32-bit floats (PIL mode 'F')"), (np.int32, "32-bit integers (PIL mode 'I')")],
)
def test_32_bit_images_are_refused_naming_the_file(tmp_path, camera, values, kind):
    path = tmp_path / "camera.tif"
    Image.fromarray(camera.astype(values)).save(path)
    # refused also when corrupt files are skipped: the file is readable, its pixels have no 8-bit scale
    with pytest.raises(UnsupportedImageError) as error:
        ImageFileLoader(skip_corrupt=True)(path)
    assert str(error.value).startswith(f"cannot load {path}: its pixels are {kind}, which have no defined")


def test_corrupt_files_still_name_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(CorruptImageError, match=f"cannot read image {path}"):
        open_rgb(path)
    assert ImageFileLoader(skip_corrupt=True)(path) is None
