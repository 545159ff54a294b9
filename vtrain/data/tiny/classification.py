"""Tiny stand-ins of the classification sets: CIFAR-10 / CIFAR-100 pickles from the scikit-learn digits,
an ImageNet folder (and Kaggle) layout from photos in the scikit-image / scikit-learn wheels. Also the
helpers the other tiny sets share (the digits, the photos, writing files)."""

import csv
import io
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from vtrain.data.imagenet import IMAGENET_WNIDS

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# Digit images for the CIFAR stand-ins ---------------------------------------------------------------


def _digit_pools() -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The 1797 scikit-learn digits ``[N, 8, 8]`` in [0, 1], and per digit class the indices of its train
    and test samples (test = the last 20 % of the class, so the two never share a sample)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, test = [], []
    for digit in range(10):
        indices = np.flatnonzero(digits.target == digit)
        n_test = len(indices) // 5
        train.append(indices[:-n_test])
        test.append(indices[-n_test:])
    return digits.images / 16.0, train, test


def _cycle(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws from pool that use every element before reusing any."""
    return np.resize(rng.permutation(pool), n)


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A light foreground and a dark background RGB colour (luma >= 150 and <= 90 of 255): random hues,
    but always light ink on a dark ground, so that a small model learns the set in a few CPU minutes."""
    luma = np.array([0.299, 0.587, 0.114])
    while True:
        foreground, background = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
        if luma @ foreground >= 150 and luma @ background <= 90:
            return foreground, background


def _scaled(digit: np.ndarray, size: int) -> np.ndarray:
    """An 8 x 8 digit in [0, 1] scaled to size x size with bicubic interpolation, in [0, 1]."""
    image = Image.fromarray(np.rint(digit * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0


def _paint(alpha: np.ndarray, rng: np.random.Generator, noise_std: float = 4.0) -> np.ndarray:
    """A 32 x 32 RGB uint8 image: ``alpha`` (a [32, 32] ink mask) in one colour on another, plus noise."""
    foreground, background = _contrasting_colours(rng)
    image = background + alpha[..., None] * (foreground - background)
    image += rng.normal(0.0, noise_std, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _one_digit(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = int(rng.integers(20, 27))
    y, x = rng.integers(0, 32 - size + 1, size=2)
    alpha = np.zeros((32, 32), np.float32)
    alpha[y : y + size, x : x + size] = _scaled(digit, size)
    return _paint(alpha, rng)


def _two_digits(tens: np.ndarray, units: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size, gap = int(rng.integers(12, 16)), int(rng.integers(0, 3))
    y = int(rng.integers(0, 32 - size + 1))
    x = int(rng.integers(0, 32 - (2 * size + gap) + 1))
    alpha = np.zeros((32, 32), np.float32)
    alpha[y : y + size, x : x + size] = _scaled(tens, size)
    alpha[y : y + size, x + size + gap : x + 2 * size + gap] = _scaled(units, size)
    return _paint(alpha, rng)


def _cifar_rows(images: list[np.ndarray]) -> np.ndarray:
    """HWC images -> CIFAR rows ``[N, 3072]`` uint8 (channel-major, as in the official batches)."""
    return np.stack(images).transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _write_pickle(path: Path, content: dict) -> None:
    # Bytes keys, like the official Python 2 batches read with pickle.load(encoding="bytes"). Protocol 4
    # rather than their 2: Python 3 writes protocol-2 bytes as latin-1 text, 1.5x larger.
    with path.open("wb") as f:
        pickle.dump(content, f, protocol=4)


def _cifar_batch(label: str, rows: np.ndarray, labels: dict[bytes, list[int]], names: list[str]) -> dict:
    return {
        b"batch_label": label.encode(),
        **labels,
        b"data": rows,
        b"filenames": [name.encode() for name in names],
    }


def build_cifar10_tiny(root: str | Path, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` (see the module docstring); returns that folder."""
    images, train_pools, test_pools = _digit_pools()
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per_batch, n_batches = 600, 5
    for split, pools, per_class in (("train", train_pools, 300), ("test", test_pools, 30)):
        picks = [(label, int(i)) for label in range(10) for i in _cycle(pools[label], per_class, rng)]
        picks = [picks[j] for j in rng.permutation(len(picks))]
        rows = _cifar_rows([_one_digit(images[i], rng) for _, i in picks])
        labels = [label for label, _ in picks]
        # The file name keeps the index of the scikit-learn digit, which shows train and test are disjoint.
        names = [f"{DIGIT_NAMES[label]}_digits{i:04d}_{n:05d}.png" for n, (label, i) in enumerate(picks)]
        if split == "test":
            batch = _cifar_batch("testing batch 1 of 1", rows, {b"labels": labels}, names)
            _write_pickle(folder / "test_batch", batch)
            continue
        for b in range(n_batches):
            part = slice(b * per_batch, (b + 1) * per_batch)
            batch = _cifar_batch(
                f"training batch {b + 1} of {n_batches}", rows[part], {b"labels": labels[part]}, names[part]
            )
            _write_pickle(folder / f"data_batch_{b + 1}", batch)
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [name.encode() for name in DIGIT_NAMES],
        b"num_vis": 3072,
    }
    _write_pickle(folder / "batches.meta", meta)
    return folder


def build_cifar100_tiny(root: str | Path, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python`` (see the module docstring); returns that folder."""
    images, train_pools, test_pools = _digit_pools()
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    fine_names = [f"{fine:02d}" for fine in range(100)]
    coarse_names = [f"{5 * c:02d}-{5 * c + 4:02d}" for c in range(20)]
    for split, pools, per_class in (("train", train_pools, 5), ("test", test_pools, 2)):
        picks = [
            (fine, int(rng.choice(pools[fine // 10])), int(rng.choice(pools[fine % 10])))
            for fine in range(100)
            for _ in range(per_class)
        ]
        picks = [picks[j] for j in rng.permutation(len(picks))]
        rows = _cifar_rows([_two_digits(images[i], images[j], rng) for _, i, j in picks])
        fine = [f for f, _, _ in picks]
        labels = {b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine]}
        names = [f"{fine_names[f]}_digits{i:04d}-{j:04d}_{n:05d}.png" for n, (f, i, j) in enumerate(picks)]
        batch_label = "training batch 1 of 1" if split == "train" else "testing batch 1 of 1"
        _write_pickle(folder / split, _cifar_batch(batch_label, rows, labels, names))
    meta = {
        b"fine_label_names": [name.encode() for name in fine_names],
        b"coarse_label_names": [name.encode() for name in coarse_names],
    }
    _write_pickle(folder / "meta", meta)
    return folder


# Photo crops for the ImageNet stand-in -------------------------------------------------------------

# (wnid, ImageNet-1k class name, source photo): each class is one real photo from a wheel.
IMAGENET_TINY_PHOTOS = (
    ("n02123045", "tabby, tabby cat", "skimage chelsea"),
    ("n02389026", "sorrel", "skimage horse"),  # a binary horse silhouette
    ("n03785016", "moped", "skimage motorcycle"),
    ("n03877845", "palace", "sklearn china.jpg"),  # the Summer Palace
    ("n04266014", "space shuttle", "skimage rocket"),
    ("n04326547", "stone wall", "skimage brick"),
    ("n04350905", "suit, suit of clothes", "skimage astronaut"),
    ("n04485082", "tripod", "skimage camera"),
    ("n07920052", "espresso", "skimage coffee"),
    ("n11939491", "daisy", "sklearn flower.jpg"),
)


def _photo(source: str) -> np.ndarray:
    """A photo from the scikit-learn / scikit-image wheels as ``[H, W, 3]`` uint8 RGB."""
    package, name = source.split()
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        image = load_sample_image(name)
    else:
        import skimage.data

        image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def _random_crops(photo: np.ndarray, n: int, size: int, rng: np.random.Generator) -> Iterator[Image.Image]:
    """n crops covering 25-100 % of the photo's area, aspect ratio 3/4-4/3, maybe flipped, resized to size."""
    height, width = photo.shape[:2]
    for _ in range(n):
        area = rng.uniform(0.25, 1.0) * height * width
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        h = min(height, round(np.sqrt(area / ratio)))
        w = min(width, round(np.sqrt(area * ratio)))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = Image.fromarray(photo[top : top + h, left : left + w])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield crop.resize((size, size), Image.BICUBIC)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def build_imagenet_tiny(root: str | Path, seed: int = 0) -> Path:
    """Write the folder layout under ``root`` and the Kaggle layout under ``root/kaggle``; returns root.

    30 train and 10 val images per class; train and val crops come from separate random streams.
    The Kaggle PredictionString holds the wnid and the whole image as its box (the photo has no boxes).
    """
    root = Path(root)
    kaggle, size, per_class = root / "kaggle", 80, (30, 10)
    kaggle_data = kaggle / "ILSVRC" / "Data" / "CLS-LOC"
    val_images = []
    for c, (wnid, _, source) in enumerate(IMAGENET_TINY_PHOTOS):
        photo = _photo(source)
        train_crops = _random_crops(photo, per_class[0], size, np.random.default_rng([seed, c, 0]))
        for i, crop in enumerate(train_crops):
            content = _jpeg(crop)
            _write(root / "train" / wnid / f"{wnid}_{i}.JPEG", content)
            _write(kaggle_data / "train" / wnid / f"{wnid}_{i}.JPEG", content)
        val_crops = _random_crops(photo, per_class[1], size, np.random.default_rng([seed, c, 1]))
        val_images += [(wnid, _jpeg(crop)) for crop in val_crops]

    # Validation ids are shuffled across classes, as in ILSVRC-2012, so a file name does not give the class.
    ids = np.random.default_rng([seed, len(IMAGENET_TINY_PHOTOS)]).permutation(len(val_images)) + 1
    solution = []
    named = sorted(zip((f"ILSVRC2012_val_{i:08d}" for i in ids), val_images, strict=True))
    for image_id, (wnid, content) in named:
        _write(root / "val" / wnid / f"{image_id}.JPEG", content)
        _write(kaggle_data / "val" / f"{image_id}.JPEG", content)
        solution.append((image_id, f"{wnid} 0 0 {size - 1} {size - 1}"))
    with (kaggle / "LOC_val_solution.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("ImageId", "PredictionString"))
        writer.writerows(solution)
    # All 1000 wnids, so the line number is the class index as in the real file; names only for ours.
    names = {wnid: name for wnid, name, _ in IMAGENET_TINY_PHOTOS}
    mapping = "".join(f"{wnid} {names[wnid]}\n" if wnid in names else f"{wnid}\n" for wnid in IMAGENET_WNIDS)
    (kaggle / "LOC_synset_mapping.txt").write_text(mapping)
    return root
