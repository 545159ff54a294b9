"""iGPT's colour palette: k-means clusters of RGB pixels scaled to [-1, 1] (the paper's 9-bit palette has
k = 512), and the maps from pixels to cluster indices and back.

Fitting is mini-batch k-means (Sculley 2010) in torch after a k-means++ seeding, deterministic for a
seed. Palettes are stored as a float32 ``.npy`` of the centres ``[k, 3]`` in [-1, 1], the format of the
official ``kmeans_centers.npy`` (openai/image-gpt), which loads as is; the ``clusters`` list of a Hugging
Face ``preprocessor_config.json`` (``ImageGPTImageProcessor``, next to the ``openai/imagegpt-*`` weights)
loads too. A loaded palette keeps its order: token i is row i of the file, the id the weights were trained
with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from vtrain.io import atomic_write, remove_stale_temporaries


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 values in [0, 255] -> float32 in [-1, 1] (the official ``x / 127.5 - 1``)."""
    return images.float() / 127.5 - 1.0


def _nearest(pixels: torch.Tensor, centers: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centre [N] for pixels [N, 3] (squared Euclidean distance), in chunks."""
    c2 = (centers * centers).sum(1)
    out = [
        (c2 - 2 * part @ centers.T).argmin(dim=1)  # |p|^2 is the same for every centre
        for part in pixels.split(chunk)
    ]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=pixels.device)


def _kmeans_plus_plus(pixels: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to the squared distance to
    the nearest centre chosen so far (uniformly once every pixel coincides with a centre)."""
    first = torch.randint(len(pixels), (1,), generator=generator)
    centers = [pixels[first]]
    dist = ((pixels - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        weights = dist if dist.sum() > 0 else torch.ones_like(dist)
        index = torch.multinomial(weights, 1, generator=generator)
        centers.append(pixels[index])
        dist = torch.minimum(dist, ((pixels - pixels[index]) ** 2).sum(1))
    return torch.cat(centers)


def fit_palette(
    pixels: torch.Tensor,
    k: int = 512,
    steps: int = 200,
    batch_size: int = 8192,
    seed: int = 0,
    init_samples: int = 10000,
) -> torch.Tensor:
    """Fit k colour clusters.

    Args:
        pixels: [N, 3] float RGB in [-1, 1] (e.g. :func:`to_unit_range` of uint8 pixels), N >= k.
        k: number of clusters.
        steps: mini-batch updates.
        batch_size: pixels per update.
        seed: seeds the k-means++ seeding and the mini-batches; the same pixels and seed give the same
            palette.
        init_samples: pixels the k-means++ seeding looks at.

    Returns:
        centres [k, 3] float32 on the CPU, sorted by luma (so index order reads dark to light).
    """
    pixels = pixels.detach().float().cpu().reshape(-1, 3)
    if len(pixels) < k:
        raise ValueError(f"fit_palette: {len(pixels)} pixels are fewer than k = {k} clusters")
    generator = torch.Generator().manual_seed(seed)
    sample = pixels[torch.randperm(len(pixels), generator=generator)[:init_samples]]
    centers = _kmeans_plus_plus(sample, k, generator)
    counts = torch.zeros(k)
    for _ in range(steps):
        batch = pixels[torch.randint(len(pixels), (batch_size,), generator=generator)]
        assign = _nearest(batch, centers)
        sums = torch.zeros_like(centers).index_add_(0, assign, batch)
        n = torch.bincount(assign, minlength=k).float()
        counts += n
        # each centre moves to the running mean of every pixel assigned to it so far (rate n / count)
        seen = n > 0
        rate = (n[seen] / counts[seen])[:, None]
        centers[seen] = (1 - rate) * centers[seen] + rate * sums[seen] / n[seen, None]
    luma = centers @ torch.tensor([0.299, 0.587, 0.114])
    return centers[luma.argsort(stable=True)].contiguous()


class Palette:
    """k colours and the maps pixel <-> index.

    Args:
        centers: [k, 3] cluster centres, RGB in [-1, 1].
    """

    def __init__(self, centers: torch.Tensor | np.ndarray) -> None:
        centers = torch.as_tensor(np.asarray(centers), dtype=torch.float32)
        if centers.ndim != 2 or centers.shape[1] != 3 or len(centers) == 0:
            raise ValueError(f"Palette: expected centres of shape [k, 3], found {tuple(centers.shape)}")
        self.centers = centers

    def __len__(self) -> int:
        return len(self.centers)

    def quantize(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGB in [-1, 1] [..., 3] -> index of the nearest colour [...] int64."""
        shape = pixels.shape[:-1]
        index = _nearest(pixels.reshape(-1, 3).float(), self.centers.to(pixels.device))
        return index.reshape(shape)

    def quantize_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [..., 3, H, W] -> raster-order token sequences [..., H * W] int64."""
        pixels = to_unit_range(images).movedim(-3, -1)  # [..., H, W, 3]
        return self.quantize(pixels).flatten(-2)

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices [...] -> RGB in [-1, 1] [..., 3]."""
        return self.centers.to(indices.device)[indices]

    def to_images(self, tokens: torch.Tensor, size: int) -> torch.Tensor:
        """Token sequences [B, size * size] -> uint8 images [B, 3, size, size] (the official
        ``rint(127.5 * (c + 1))``)."""
        rgb = self.dequantize(tokens).reshape(len(tokens), size, size, 3)
        return torch.round(127.5 * (rgb + 1.0)).clamp(0, 255).to(torch.uint8).permute(0, 3, 1, 2)

    def entropy_bits(self, tokens: torch.Tensor) -> float:
        """Entropy in bits of the histogram of ``tokens`` over the k colours (a context-free code length)."""
        p = torch.bincount(tokens.flatten().cpu(), minlength=len(self)).double()
        p = p[p > 0] / p.sum()
        return float(-(p * p.log2()).sum())

    def save(self, path: str | os.PathLike) -> None:
        """Write the centres as a float32 ``.npy`` [k, 3] (the official ``kmeans_centers.npy`` format)."""
        # a concurrent reader or a kill mid-write never sees half a file (see vtrain.io)
        remove_stale_temporaries(Path(path).parent)
        with atomic_write(path) as f:
            np.save(f, self.centers.numpy())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Palette:
        """Read centres [k, 3] in [-1, 1], in the file's order: a ``.npy`` (ours or the official
        ``kmeans_centers.npy``) or a Hugging Face ``preprocessor_config.json`` (its ``clusters``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"palette file {path} does not exist")
        if path.suffix == ".json":
            centers = _read_hf_clusters(path)
        else:
            try:
                centers = np.load(path, allow_pickle=False)
            except ValueError as e:
                raise ValueError(f"{path}: not a NumPy .npy array of colour centres ({e})") from e
        if centers.ndim != 2 or centers.shape[1] != 3:
            raise ValueError(f"{path}: expected colour centres of shape [k, 3], found {centers.shape}")
        if np.abs(centers).max() > 1.0 + 1e-3:
            raise ValueError(
                f"{path}: expected colour centres in [-1, 1], found max |c| = {np.abs(centers).max()}"
            )
        return cls(centers)


def _read_hf_clusters(path: Path) -> np.ndarray:
    """The ``clusters`` [k, 3] of a Hugging Face ``ImageGPTImageProcessor`` config file."""
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from e
    clusters = config.get("clusters") if isinstance(config, dict) else None
    if clusters is None:
        raise ValueError(
            f"{path}: no 'clusters' key; expected the preprocessor_config.json of an ImageGPT image "
            "processor (openai/imagegpt-*), which lists the palette's colours"
        )
    try:
        return np.asarray(clusters, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: 'clusters' is not a [k, 3] list of numbers ({e})") from e


# the palette files that come with iGPT weights, looked for in the weights' folder, in this order
SHIPPED_PALETTES = ("preprocessor_config.json", "kmeans_centers.npy")


def shipped_palette(weights: str | os.PathLike) -> Path | None:
    """The palette that comes with a weights file: ``preprocessor_config.json`` (Hugging Face, when it has
    ``clusters``) or ``kmeans_centers.npy`` (official) in the same folder; None when there is neither."""
    folder = Path(weights).parent
    for name in SHIPPED_PALETTES:
        path = folder / name
        if path.is_file() and (path.suffix != ".json" or _has_clusters(path)):
            return path
    return None


def _has_clusters(path: Path) -> bool:
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and config.get("clusters") is not None
