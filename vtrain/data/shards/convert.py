"""``python -m vtrain.data.shards DATASET --root SRC --out DST``: a data set's folders into shards.

Each split is read with the folder reader vtrain trains from (so the shards hold exactly its samples, in
its order, with its labels), each image file's bytes are copied unchanged into the tar, its annotations
next to it as JSON. Every image is test-decoded on the way (JPEGs at 1/8 scale, which reads every byte);
unreadable or missing files are kept as they are (the shard reader then fails or skips them exactly as the
folder reader does) and reported with their count and names, on stderr and in the manifest.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from vtrain.data.cifar import CIFAR, VARIANTS
from vtrain.data.cityscapes import CityscapesSegmentation
from vtrain.data.coco import CocoDetection
from vtrain.data.coco_panoptic import CocoPanoptic
from vtrain.data.cufed import CUFED5, CUFEDTrain
from vtrain.data.cufed import images_in as cufed_images
from vtrain.data.imagenet import IMAGENET_WNIDS, ImageNet
from vtrain.data.images import _DECODE_ERRORS
from vtrain.data.shards.format import (
    FORMAT,
    LABEL_MEMBER,
    MANIFEST,
    SEGMENTATION_MEMBER,
    VERSION,
    SplitWriter,
)
from vtrain.io import atomic_write_bytes, atomic_write_text, remove_stale_temporaries, temporary_sibling

log = logging.getLogger(__name__)

DATASETS = ("imagenet", "cifar10", "cifar100", "coco", "coco_panoptic", "cityscapes", "cufed")
# CUFED: the official dataset_dir's training pairs and CUFED5 test folder (data.train_dir, data.test_dir)
CUFED_SPLITS = {"train": "train", "test": "test/CUFED5"}

# (source file name, members, labels) of one sample, and a reason when its image is unreadable
Sample = tuple[str, dict[str, bytes], dict[str, int], str | None]


def check_image(data: bytes) -> str | None:
    """None when ``data`` decodes as an image, else why not. JPEGs decode at 1/8 scale (PIL's draft mode
    still entropy-decodes every block, so truncated or broken data is found at a fraction of the cost)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except _DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return None


def _read_image(path: Path) -> tuple[bytes, str | None]:
    """The file's bytes (empty when it cannot be read) and why it is unreadable, if it is."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return b"", f"cannot read the file: {error.strerror or error}"
    return data, check_image(data)


def _read_images(paths: list[Path], workers: int) -> Iterator[tuple[bytes, str | None]]:
    """:func:`_read_image` of each path, in order, ``workers`` processes reading and decoding."""
    if workers <= 1:
        yield from map(_read_image, paths)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_read_image, paths, chunksize=16)


def _image_extension(file: str) -> str:
    return Path(file).suffix.lower() or ".jpg"


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def imagenet_samples(root: Path, split: str, workers: int) -> tuple[Iterator[Sample], dict[str, Any]]:
    """ImageNet (either layout) ``split``: the image, its label as ``.cls`` and ``.json``."""
    dataset = ImageNet(root, split)
    split_dir = Path(dataset.root)
    files = [Path(path).relative_to(split_dir).as_posix() for path, _ in dataset.samples]

    def samples() -> Iterator[Sample]:
        read = _read_images([Path(path) for path, _ in dataset.samples], workers)
        for file, (_, label), (data, problem) in zip(files, dataset.samples, read, strict=True):
            info = {"label": label, "wnid": IMAGENET_WNIDS[label], "file": file}
            members = {_image_extension(file): data, ".cls": str(label).encode(), ".json": _json(info)}
            yield file, members, {"labels": label}, problem

    counts = dataset.scan_counts.counts
    return samples(), {"classes": list(IMAGENET_WNIDS), "scan_counts": counts, "source": str(split_dir)}


def cifar_samples(root: Path, variant: str, split: str) -> tuple[Iterator[Sample], dict[str, Any]]:
    """CIFAR ``split``: each 32 x 32 image as a lossless PNG, its labels as ``.cls`` and ``.json``."""
    dataset = CIFAR(root, split, variant=variant)
    has_coarse = "coarse" in VARIANTS[variant].label_keys
    coarse = CIFAR(root, split, variant=variant, label="coarse") if has_coarse else None

    def samples() -> Iterator[Sample]:
        for index, (image, label) in enumerate(zip(dataset.images, dataset.targets, strict=True)):
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            labels = {"labels": int(label)}
            if coarse is not None:
                labels["coarse_labels"] = int(coarse.targets[index])
            file = f"{split}/{index:06d}.png"
            members = {".png": png.getvalue(), ".cls": str(int(label)).encode(), ".json": _json(labels)}
            yield file, members, labels, None

    extra: dict[str, Any] = {"classes": dataset.classes, "source": str(dataset.root)}
    if coarse is not None:
        extra["coarse_classes"] = coarse.classes
    return samples(), extra


def coco_samples(root: Path, split: str, workers: int) -> tuple[Iterator[Sample], dict[str, Any]]:
    """COCO-format ``split``: each image with ``.json`` {"image": its entry, "annotations": all of its
    annotations, crowds included}, as in the annotation file."""
    dataset = CocoDetection(root, split, train=False)
    entries = [dataset.coco.imgs[image_id] for image_id in dataset.ids]

    def samples() -> Iterator[Sample]:
        read = _read_images([dataset.image_folder / entry["file_name"] for entry in entries], workers)
        for entry, (data, problem) in zip(entries, read, strict=True):
            annotations = dataset.coco.imgToAnns[entry["id"]]
            members = {
                _image_extension(entry["file_name"]): data,
                ".json": _json({"image": entry, "annotations": annotations}),
            }
            yield entry["file_name"], members, {}, problem

    return samples(), {"source": str(dataset.image_folder)}


def coco_panoptic_samples(root: Path, split: str, workers: int) -> tuple[Iterator[Sample], dict[str, Any]]:
    """COCO-panoptic-format ``split``: each image with its segment PNG (``.seg.png``, the file's bytes) and
    ``.json`` {"image": its entry, "annotation": its entry of the panoptic file (segments_info)}."""
    dataset = CocoPanoptic(root, split)
    entries = [dataset.images[image_id] for image_id in dataset.ids]

    def samples() -> Iterator[Sample]:
        read = _read_images([dataset.image_folder / entry["file_name"] for entry in entries], workers)
        for entry, (data, problem) in zip(entries, read, strict=True):
            annotation = dataset.annotations.get(entry["id"])
            members = {_image_extension(entry["file_name"]): data}
            if annotation is not None:
                png = dataset.segmentation_folder / annotation["file_name"]
                if png.is_file():
                    members[SEGMENTATION_MEMBER] = png.read_bytes()
                else:
                    problem = problem or f"its segment PNG {png} does not exist"
            members[".json"] = _json({"image": entry, "annotation": annotation})
            yield entry["file_name"], members, {}, problem

    return samples(), {"source": str(dataset.image_folder)}


def cityscapes_samples(root: Path, split: str, workers: int) -> tuple[Iterator[Sample], dict[str, Any]]:
    """Cityscapes ``split``: each ``leftImg8bit`` image with its ``gtFine`` label-id PNG (``.labelids.png``,
    the file's bytes) and ``.json`` {"file", "label_file"} (paths under ``leftImg8bit/`` / ``gtFine/``)."""
    dataset = CityscapesSegmentation(root, split)
    image_dir = root / "leftImg8bit" / split
    files = [path.relative_to(image_dir).as_posix() for path in dataset.images]

    def samples() -> Iterator[Sample]:
        read = _read_images(dataset.images, workers)
        for file, label, (data, problem) in zip(files, dataset.labels, read, strict=True):
            label_bytes, label_problem = _read_image(label)
            info = {"file": f"{split}/{file}", "label_file": label.relative_to(root / "gtFine").as_posix()}
            members = {".png": data, LABEL_MEMBER: label_bytes, ".json": _json(info)}
            problem = problem or (label_problem and f"its label file {label}: {label_problem}")
            yield file, members, {}, problem

    return samples(), {"source": str(image_dir), "scan_counts": dataset.scan_counts.counts}


def cufed_samples(root: Path, split: str, workers: int) -> tuple[Iterator[Sample], dict[str, Any]]:
    """CUFED training pairs ("train": ``input/*`` then ``ref/*``) or CUFED5 ("test": ``NNN_<level>.*``):
    one sample per image file, its bytes and ``.json`` {"file"}, in the folder readers' order."""
    folder = root / CUFED_SPLITS[split]
    if split == "train":
        dataset = CUFEDTrain(folder)
        paths = [*dataset.inputs, *dataset.refs]
    else:
        dataset = CUFED5(folder)
        paths = cufed_images(folder, [])
    files = [path.relative_to(folder).as_posix() for path in paths]

    def samples() -> Iterator[Sample]:
        for file, (data, problem) in zip(files, _read_images(paths, workers), strict=True):
            yield file, {_image_extension(file): data, ".json": _json({"file": file})}, {}, problem

    return samples(), {"source": str(folder), "scan_counts": dataset.scan_counts.counts}


def _copy_annotations(root: Path, out: Path, names: Iterable[str]) -> None:
    """Copy ``annotations/<name>`` (files, or folders such as the panoptic PNGs) from ``root`` to ``out``,
    each atomically (a folder is copied to a temporary name, then renamed)."""
    for name in names:
        source, target = root / "annotations" / name, out / "annotations" / name
        if source.is_dir():
            temporary = temporary_sibling(target)
            shutil.copytree(source, temporary)
            if target.exists():
                shutil.rmtree(target)
            os.replace(temporary, target)
        elif source.is_file():
            atomic_write_bytes(target, source.read_bytes())


def write_split(
    out: Path, directory: Path, samples: Iterable[Sample], shard_bytes: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """Write one split's shards and index files; its manifest entry, with the unreadable images."""
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)
    writer = SplitWriter(directory, shard_bytes)
    unreadable: list[str] = []
    try:
        for file, members, labels, problem in samples:
            if problem is not None:
                unreadable.append(file)
                log.warning("unreadable image %s: %s (kept as it is, read as from folders)", file, problem)
            writer.add(members, file, **labels)
    except BaseException:
        writer.abort()
        raise
    entry = writer.finish(**extra)
    entry["dir"] = directory.relative_to(out).as_posix()
    entry["unreadable"] = {"count": len(unreadable), "files": unreadable}
    return entry


def _coco_splits(root: Path, kind: str) -> list[str]:
    """The splits with an ``annotations/<kind>_<split>2017.json`` (kind "instances" or "panoptic")."""
    names = sorted(p.name for p in (root / "annotations").glob(f"{kind}_*2017.json"))
    return [re.fullmatch(rf"{kind}_(.+)2017\.json", name).group(1) for name in names]


def convert(dataset: str, root: str | Path, out: str | Path, shard_bytes: int, workers: int = 1) -> dict:
    """Convert ``dataset`` under ``root`` into shards under ``out``; returns the manifest.

    ``out`` must not hold a conversion already (delete it first); the manifest is written last, so an
    interrupted conversion leaves a directory that the readers refuse.
    """
    if dataset not in DATASETS:
        raise ValueError(f"DATASET must be one of {DATASETS}, found {dataset!r}")
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a directory")
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out / MANIFEST} exists: {out} holds a conversion already; delete it first")
    out.mkdir(parents=True, exist_ok=True)
    plans: dict[str, tuple[str, Callable[[], tuple[Iterator[Sample], dict[str, Any]]]]] = {}
    if dataset == "imagenet":
        for split in ("train", "val"):
            if (root / split).is_dir() or (root / "ILSVRC" / "Data" / "CLS-LOC" / split).is_dir():
                plans[split] = (split, lambda split=split: imagenet_samples(root, split, workers))
    elif dataset in VARIANTS:
        for split in ("train", "test"):
            plans[split] = (split, lambda split=split: cifar_samples(root, dataset, split))
    elif dataset == "coco":
        for split in _coco_splits(root, "instances"):
            plans[split] = (f"{split}2017", lambda split=split: coco_samples(root, split, workers))
            # the annotation files too: vtrain indexes a split from its file, COCOeval scores against it
            _copy_annotations(root, out, [f"instances_{split}2017.json"])
    elif dataset == "cityscapes":
        for split in ("train", "val", "test"):
            if (root / "leftImg8bit" / split).is_dir() and (root / "gtFine" / split).is_dir():
                plans[split] = (split, lambda split=split: cityscapes_samples(root, split, workers))
    elif dataset == "cufed":
        for split, folder in CUFED_SPLITS.items():
            if (root / folder).is_dir():
                plans[split] = (folder, lambda split=split: cufed_samples(root, split, workers))
    else:
        for split in _coco_splits(root, "panoptic"):
            plans[split] = (f"{split}2017", lambda split=split: coco_panoptic_samples(root, split, workers))
            # the panoptic file and its PNGs, which PQ is scored against (PanopticEvaluator reads them by
            # name), and the instances file for box / mask AP when there is one
            names = [f"panoptic_{split}2017.json", f"panoptic_{split}2017", f"instances_{split}2017.json"]
            _copy_annotations(root, out, names)
    if not plans:
        raise FileNotFoundError(f"no {dataset} split found under {root}")
    splits = {}
    for split, (folder, plan) in plans.items():
        samples, extra = plan()
        if (out / folder).exists():
            shutil.rmtree(out / folder)  # a killed conversion's shards (no manifest was written)
        splits[split] = write_split(out, out / folder, samples, shard_bytes, extra)
        unreadable = splits[split]["unreadable"]
        print(
            f"{dataset} {split}: {splits[split]['samples']} samples in {splits[split]['shards']} shards "
            f"({splits[split]['bytes'] / 2**20:.1f} MiB) -> {out / folder}; {unreadable['count']} unreadable"
            + (f": {', '.join(unreadable['files'])}" if unreadable["count"] else ""),
            file=sys.stderr,
        )
    manifest = {"format": FORMAT, "version": VERSION, "dataset": dataset, "source": str(root)}
    manifest["splits"] = splits
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def parse_size(text: str) -> int:
    """Bytes from "512MB", "1GB", "100KB" or a plain number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a size such as 512MB or 1GB, found {text!r}")
    return int(float(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vtrain.data.shards",
        description="Convert a data set's folders into webdataset tar shards (see docs/data.md).",
    )
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--root", required=True, help="the data set's folder, as data.root for folders")
    parser.add_argument("--out", required=True, help="the shard directory to write (data.root for shards)")
    parser.add_argument("--shard-size", type=parse_size, default=parse_size("512MB"), help="default 512MB")
    parser.add_argument("--workers", type=int, default=1, help="processes reading and test-decoding images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        convert(args.dataset, args.root, args.out, args.shard_size, args.workers)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
