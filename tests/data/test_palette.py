"""The k-means colour palette: recovery of known clusters, determinism, round trips, the official format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vtrain.data.palette import Palette, fit_palette, shipped_palette, to_unit_range
from vtrain.io import temporary_sibling


def _clustered_pixels(centers: torch.Tensor, n: int = 4000, std: float = 0.02) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(len(centers), (n,), generator=g)
    return (centers[pick] + std * torch.randn(n, 3, generator=g)).clamp(-1, 1)


def test_kmeans_recovers_well_separated_colours():
    truth = torch.tensor(
        [[-0.8, -0.8, -0.8], [0.8, -0.8, -0.8], [-0.8, 0.8, -0.8], [-0.8, -0.8, 0.8], [0.8, 0.8, 0.8]]
    )
    centers = fit_palette(_clustered_pixels(truth), k=5, steps=50, batch_size=1024, seed=0)
    # every true colour has a centre within the noise, whatever the order
    nearest = torch.cdist(truth, centers).min(dim=1).values
    assert nearest.max() < 0.02
    luma = centers @ torch.tensor([0.299, 0.587, 0.114])
    assert torch.all(luma[1:] >= luma[:-1]), "centres are sorted dark to light"


def test_fit_is_deterministic_for_a_seed():
    pixels = torch.rand(5000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a = fit_palette(pixels, k=32, steps=20, batch_size=512, seed=3)
    b = fit_palette(pixels, k=32, steps=20, batch_size=512, seed=3)
    c = fit_palette(pixels, k=32, steps=20, batch_size=512, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="fewer than k"):
        fit_palette(pixels[:10], k=32)


def test_quantize_dequantize_round_trip_and_images():
    palette = Palette(torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [1.0, -1.0, -1.0]]))
    assert torch.equal(palette.quantize(palette.centers), torch.arange(3))
    indices = torch.tensor([[2, 0], [1, 1]])
    assert torch.equal(palette.quantize(palette.dequantize(indices)), indices)
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    images[0, 0] = 250  # red
    images[1] = 255  # white
    tokens = palette.quantize_images(images)
    assert tokens.tolist() == [[2, 2, 2, 2], [1, 1, 1, 1]]
    back = palette.to_images(tokens, 2)
    assert back.dtype == torch.uint8 and back.shape == (2, 3, 2, 2)
    assert back[0, :, 0, 0].tolist() == [255, 0, 0]
    assert palette.entropy_bits(tokens) == pytest.approx(1.0)
    assert to_unit_range(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]


def test_save_load_and_the_official_npy_format(tmp_path):
    centers = np.random.default_rng(0).uniform(-1, 1, size=(512, 3)).astype(np.float32)
    np.save(tmp_path / "kmeans_centers.npy", centers)  # the official file: float32 [512, 3] in [-1, 1]
    palette = Palette.load(tmp_path / "kmeans_centers.npy")
    assert len(palette) == 512 and np.array_equal(palette.centers.numpy(), centers)
    palette.save(tmp_path / "sub" / "p.npy")
    assert np.array_equal(np.load(tmp_path / "sub" / "p.npy"), centers)
    np.save(tmp_path / "bad.npy", centers[:, :2])
    with pytest.raises(ValueError, match=r"bad\.npy: expected colour centres of shape \[k, 3\]"):
        Palette.load(tmp_path / "bad.npy")
    np.save(tmp_path / "scale.npy", centers * 255)
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        Palette.load(tmp_path / "scale.npy")
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        Palette.load(tmp_path / "nope.npy")


def test_the_hugging_face_preprocessor_config_and_the_palette_shipped_with_weights(tmp_path):
    centers = np.random.default_rng(0).uniform(-1, 1, size=(512, 3)).astype(np.float32)
    config = {"image_processor_type": "ImageGPTImageProcessor", "clusters": centers.tolist()}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    palette = Palette.load(tmp_path / "preprocessor_config.json")
    assert np.array_equal(palette.centers.numpy(), centers)  # the file's order, never re-sorted
    assert shipped_palette(tmp_path / "pytorch_model.bin") == tmp_path / "preprocessor_config.json"
    # no clusters: not a palette, and not taken as one beside weights (the official .npy is)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": 32}))
    with pytest.raises(ValueError, match="preprocessor_config.json: no 'clusters' key"):
        Palette.load(tmp_path / "preprocessor_config.json")
    assert shipped_palette(tmp_path / "pytorch_model.bin") is None
    np.save(tmp_path / "kmeans_centers.npy", centers)
    assert shipped_palette(tmp_path / "model.safetensors") == tmp_path / "kmeans_centers.npy"


def test_a_failed_save_keeps_the_old_palette_and_a_killed_writers_temporary_is_removed(tmp_path, monkeypatch):
    path = tmp_path / "igpt_palette.npy"
    old = Palette(torch.zeros(4, 3))
    old.save(path)
    killed = Path(str(temporary_sibling(path)).replace(f".{os.getpid()}@", ".999999999@"))
    killed.write_bytes(b"half a palette")  # left by a writer that was killed, pid 999999999 is gone

    def write_half_then_fail(file, array):
        file.write(b"\x93NUMPY half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        Palette(torch.ones(4, 3)).save(path)
    assert np.array_equal(Palette.load(path).centers.numpy(), old.centers.numpy())
    assert sorted(tmp_path.iterdir()) == [path]
