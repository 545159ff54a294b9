"""Loader throughput: images per second of each training pipeline, per DataLoader worker process, run
through scripts/bench.py:

    python scripts/bench.py data --output docs/benchmarks.md              # every pipeline, workers 0 1 2
    python scripts/bench.py data --pipelines imagenet --workers 0 1 2 4 8 --rounds 5
    python scripts/bench.py data --pipelines imagenet_gpu_decode --device cuda   # scripts/gpu_check.sh

Every row is a training loader as a run builds it (the data module's ``train_dataloader()``: seeded
sampler, per-sample seeding, the recipe's augmentation, collate), timed by whole batches. Within one
pipeline and one worker count the rows alternate within each round (``bench.alternating_rates``), so the
ratio to the reference row is measured under the same machine load; before each of its rounds a row
drains the batches its workers prefetched while the others were timed, and after each of its rounds it
waits for its workers to make the batches its loader asked them for, so that they do not share the cores
with the next row's. Rows:

    imagenet  DeiT's augmentation (the vit_s16_imagenet experiment's data keys: recipe timm, timm's
              create_transform with RandAugment rand-m9-mstd0.5-inc1 and random erasing 0.25, 224 px) from
              the ImageNet folder layout; the reference: timm's own ``create_dataset`` + ``create_loader``
              on the same files with the same augmentation (``use_prefetcher=False``, so its workers also
              normalise and erase, as vtrain's do).
    coco      DETR's augmentation (multi-scale resize, random crop) of ``data/coco``, batch 4.
    cifar     the CIFAR-10 recipe (random crop with padding 4, flip), batch 128, from the python batches.
    cityscapes the FPN / FPT recipe (random scale 0.5-2, 512 x 1024 crop, flip) of ``data/cityscapes``.
    imagenet_gpu_decode
              the ``data/imagenet`` recipe (random-resized crop, flip) with ``decode=cpu`` against
              ``decode=tensor`` and ``decode=gpu``: the workers send JPEG bytes, the batch is decoded with
              nvJPEG and augmented on ``--device`` (on a CPU device: torchvision's CPU decoder, only to
              check that it runs).

Data: ``--imagenet`` (default ../shared/data/imagenet: 100 real ImageNet training JPEGs of 183 k pixels
on average, ImageNet's own mean), each file linked ``--copies`` times into a temporary folder layout;
without it, 500 x 375 quality-90 JPEGs cut from the photos scikit-image ships. ``--coco`` (default
../shared/data/coco_tiny: 80 real COCO images), CIFAR-10 from ``--cifar`` (../shared/data/cifar10) or the
tiny set, Cityscapes-layout scenes: the tiny set's, upscaled to Cityscapes' 2048 x 1024.

The imagenet, coco and cifar pipelines also have a ``vtrain (shards)`` row: the same loader from the same
images converted to shards first (``vtrain.data.shards.convert``, 64 MiB shards; ``data.format=shards``).
The ``decode=tensor`` rows (imagenet from folders and shards, coco from shards) decode with torchvision in
the workers and resample uint8 tensors, the same draws (``data.decode=tensor``, vtrain.data.tensor_decode).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bench
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
EXPERIMENTS = REPO / "conf" / "experiment"


@dataclass
class Data:
    """Where each pipeline reads (folders built under ``tmp``), and the device of the GPU-decode row."""

    imagenet: Path
    coco: Path
    cifar: Path
    cityscapes: Path
    device: str
    # each pipeline's folders converted by `python -m vtrain.data.shards` (data.format=shards)
    shards: dict[str, Path]


def deit_data_keys() -> dict:
    """The data keys of the vit_s16_imagenet experiment (DeiT-S's recipe), read from its config."""
    return OmegaConf.to_container(OmegaConf.load(EXPERIMENTS / "vit_s16_imagenet.yaml").data)


def _train_loader(datamodule) -> Iterable:
    datamodule.setup("fit")
    return datamodule.train_dataloader()


def _common(workers: int, batch: int) -> dict:
    return dict(batch_size=batch, num_workers=workers, persistent_workers=workers > 0, pin_memory=False)


def imagenet_deit(
    data: Data, workers: int, batch: int, format: str = "folders", decode: str = "cpu"
) -> Iterable:
    from vtrain.data.classification import ClassificationDataModule

    keys = deit_data_keys()
    return _train_loader(
        ClassificationDataModule(
            dataset="imagenet",
            root=str(data.shards["imagenet"] if format == "shards" else data.imagenet),
            format=format,
            num_classes=1000,
            image_size=keys["image_size"],
            recipe=keys["recipe"],
            mean=keys["mean"],
            std=keys["std"],
            timm_train=keys["timm_train"],
            decode=decode,
            **_common(workers, batch),
        )
    )


def imagenet_timm(data: Data, workers: int, batch: int) -> Iterable:
    """timm's loader as its train.py builds it, with DeiT's augmentation (deit main.py defaults)."""
    from timm.data import create_dataset, create_loader

    from vtrain.data.transforms import keep_zero_bit_posterize

    keys = deit_data_keys()
    dataset = create_dataset("", root=str(data.imagenet / "train"), split="train", is_training=True)
    timm_train = keys["timm_train"]
    loader = create_loader(
        dataset,
        input_size=keys["image_size"],
        batch_size=batch,
        is_training=True,
        use_prefetcher=False,
        interpolation="bicubic",
        mean=tuple(keys["mean"]),
        std=tuple(keys["std"]),
        num_workers=workers,
        persistent_workers=workers > 0,
        **timm_train,
    )
    # Pillow 13 rejects the 0-bit posterize of rand-m9-mstd0.5-inc1 (see vtrain.data.transforms)
    keep_zero_bit_posterize(loader.dataset.transform)
    return loader


def coco_detr(data: Data, workers: int, batch: int, format: str = "folders", decode: str = "cpu") -> Iterable:
    from vtrain.data.detection import DetectionDataModule

    root = data.shards["coco"] if format == "shards" else data.coco
    module = DetectionDataModule(root=str(root), format=format, decode=decode, **_common(workers, batch))
    return _train_loader(module)


def cifar(data: Data, workers: int, batch: int, format: str = "folders") -> Iterable:
    from vtrain.data.classification import ClassificationDataModule

    stats = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
    return _train_loader(
        ClassificationDataModule(
            dataset="cifar10",
            root=str(data.shards["cifar"] if format == "shards" else data.cifar),
            format=format,
            num_classes=10,
            image_size=32,
            recipe="cifar",
            **stats,
            **_common(workers, batch),
        )
    )


def cityscapes(data: Data, workers: int, batch: int) -> Iterable:
    from vtrain.data.cityscapes import SegmentationDataModule

    return _train_loader(SegmentationDataModule(root=str(data.cityscapes), **_common(workers, batch)))


def _imagenet_recipe(data: Data, workers: int, batch: int, decode: str):
    from vtrain.data.classification import ClassificationDataModule

    return ClassificationDataModule(
        dataset="imagenet",
        root=str(data.imagenet),
        num_classes=1000,
        image_size=224,
        recipe="imagenet",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        decode=decode,
        **_common(workers, batch),
    )


class _OnDevice:
    """A loader whose batches are moved to ``device`` as Lightning does, then (decode=gpu) decoded and
    augmented there by the data module's ``on_after_batch_transfer`` path; synchronised per batch."""

    def __init__(self, datamodule, device: str) -> None:
        self.datamodule, self.device = datamodule, torch.device(device)
        self.loader = _train_loader(datamodule)

    def __iter__(self) -> Iterator:
        from lightning_fabric.utilities.apply_func import move_data_to_device

        for batch in self.loader:
            batch = move_data_to_device(batch, self.device)
            if self.datamodule.decode == "gpu":
                batch = self.datamodule.decode_batch(batch, self.device)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            yield batch


def imagenet_cpu_decode(data: Data, workers: int, batch: int) -> Iterable:
    return _OnDevice(_imagenet_recipe(data, workers, batch, "cpu"), data.device)


def imagenet_tensor_decode(data: Data, workers: int, batch: int) -> Iterable:
    return _OnDevice(_imagenet_recipe(data, workers, batch, "tensor"), data.device)


def imagenet_gpu_decode(data: Data, workers: int, batch: int) -> Iterable:
    import vtrain.data.gpu_decode as gpu_decode

    if not data.device.startswith("cuda"):
        # the device path on the CPU (torchvision's CPU decoder), to check that it runs
        gpu_decode.cuda_available = lambda: True
    return _OnDevice(_imagenet_recipe(data, workers, batch, "gpu"), data.device)


Build = Callable[[Data, int, int], Iterable]


@dataclass
class Row:
    name: str
    build: Build


# pipeline -> (batch size, its rows, the reference row first)
ROWS: dict[str, tuple[int, list[Row]]] = {
    "imagenet": (
        64,
        [
            Row("timm create_loader (folders)", imagenet_timm),
            Row("vtrain (folders)", imagenet_deit),
            Row("vtrain (shards)", functools.partial(imagenet_deit, format="shards")),
            Row("vtrain decode=tensor (folders)", functools.partial(imagenet_deit, decode="tensor")),
            Row(
                "vtrain decode=tensor (shards)",
                functools.partial(imagenet_deit, format="shards", decode="tensor"),
            ),
        ],
    ),
    "coco": (
        4,
        [
            Row("vtrain (folders)", coco_detr),
            Row("vtrain (shards)", functools.partial(coco_detr, format="shards")),
            Row(
                "vtrain decode=tensor (shards)",
                functools.partial(coco_detr, format="shards", decode="tensor"),
            ),
        ],
    ),
    "cifar": (
        128,
        [
            Row("vtrain (python batches)", cifar),
            Row("vtrain (shards)", functools.partial(cifar, format="shards")),
        ],
    ),
    "cityscapes": (2, [Row("vtrain (folders)", cityscapes)]),
    "imagenet_gpu_decode": (
        64,
        [
            Row("vtrain decode=cpu", imagenet_cpu_decode),
            Row("vtrain decode=tensor", imagenet_tensor_decode),
            Row("vtrain decode=gpu", imagenet_gpu_decode),
        ],
    ),
}
TOY_BATCH = 4
SHARD_BYTES = 64 * 2**20  # small enough that the benchmark sets span several shards
TITLE = "Loader throughput per worker process"


def _photos(count: int) -> list:
    """``count`` 500 x 375 RGB crops of the photos scikit-image ships (ImageNet's typical size)."""
    import skimage.data
    from PIL import Image

    names = ("astronaut", "chelsea", "coffee", "rocket", "camera")
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in names]
    generator = torch.Generator().manual_seed(0)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)].resize((750, 560))
        left, top = (int(torch.randint(0, high, (), generator=generator)) for high in (250, 185))
        crops.append(photo.crop((left, top, left + 500, top + 375)))
    return crops


def imagenet_folders(source: Path | None, copies: int, out: Path) -> Path:
    """An ImageNet folder layout under ``out``: ``source``'s training JPEGs linked ``copies`` times, or
    synthetic 500 x 375 quality-90 JPEGs; val holds one image per class (setup reads it)."""
    from vtrain.data.imagenet import IMAGENET_WNIDS

    if source is not None:
        files = sorted((source / "train").glob("*/*"))
    else:
        synthetic = out / "synthetic"
        files = []
        for i, photo in enumerate(_photos(100)):
            path = synthetic / IMAGENET_WNIDS[i * 10] / f"{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo.save(path, quality=90)
            files.append(path)
    for split, repeats in (("train", copies), ("val", 1)):
        for file in files:
            folder = out / split / file.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(repeats):
                (folder / f"{k}_{file.name}").symlink_to(file.resolve())
    return out


def coco_folders(source: Path, out: Path) -> Path:
    """``source`` (a COCO train split) as both splits of a COCO layout under ``out``."""
    (out / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (out / "annotations" / f"instances_{split}2017.json").symlink_to(
            (source / "annotations" / "instances_train2017.json").resolve()
        )
        (out / f"{split}2017").symlink_to((source / "train2017").resolve())
    return out


def cityscapes_folders(out: Path) -> Path:
    """The tiny Cityscapes-layout set, its images and label maps upscaled to Cityscapes' 2048 x 1024."""
    from PIL import Image

    from vtrain.data.tiny import build_tiny

    root = build_tiny("cityscapes_tiny", out / "cityscapes")
    for path in root.rglob("*.png"):
        with Image.open(path) as image:
            nearest = "gtFine" in path.parts
            image.resize((2048, 1024), Image.NEAREST if nearest else Image.BILINEAR).save(path)
    return root


def prepare(args: argparse.Namespace, tmp: Path) -> Data:
    from vtrain.data.shards.convert import convert
    from vtrain.data.tiny import build_tiny

    imagenet_source = args.imagenet if args.imagenet and (args.imagenet / "train").is_dir() else None
    wanted = set(args.pipelines)
    imagenet = tmp / "imagenet"
    if wanted & {"imagenet", "imagenet_gpu_decode"}:
        imagenet_folders(imagenet_source, args.copies, imagenet)
    coco = tmp / "coco"
    if "coco" in wanted:
        if args.coco is not None and (args.coco / "train2017").is_dir():
            coco_folders(args.coco, coco)
        else:
            coco = build_tiny("coco_tiny", coco)
    cifar_root = args.cifar if args.cifar and args.cifar.is_dir() else None
    if "cifar" in wanted and cifar_root is None:
        cifar_root = build_tiny("cifar10_tiny", tmp / "cifar10")
    city = cityscapes_folders(tmp) if "cityscapes" in wanted else tmp / "cityscapes"
    cifar_root = cifar_root or tmp / "cifar10"
    shards = {}
    for pipeline, dataset, root in (
        ("imagenet", "imagenet", imagenet),
        ("coco", "coco", coco),
        ("cifar", "cifar10", cifar_root),
    ):
        if pipeline in wanted:
            shards[pipeline] = tmp / f"{pipeline}_shards"
            convert(dataset, root, shards[pipeline], SHARD_BYTES)
    return Data(imagenet, coco, cifar_root, city, args.device, shards)


def _stream(loader: Iterable) -> Iterator:
    while True:
        yield from loader


def measure(pipeline: str, workers: int, args: argparse.Namespace, data: Data) -> list[dict]:
    """One JSON-ready result per row of ``pipeline`` at ``workers`` worker processes."""
    batch, rows = ROWS[pipeline]
    batch = TOY_BATCH if args.toy else batch
    streams = {row.name: _stream(row.build(data, workers, batch)) for row in rows}
    steps = {name: (lambda s=stream: next(s)) for name, stream in streams.items()}
    # a worker keeps two batches ready (DataLoader's prefetch_factor); untimed at the start of a round
    prefetched = 2 * workers

    def drain(step: Callable[[], object]) -> Callable[[], None]:
        return lambda: [step() for _ in range(prefetched)]

    for step in steps.values():
        for _ in range(args.warmup + prefetched):
            step()

    def settle(_: str, rate: float) -> None:
        # the loader has asked its workers for `prefetched` more batches; let them make those at the rate
        # just measured (with a margin) before the next row is timed, rather than alongside it
        time.sleep(1.25 * prefetched * batch / rate)

    rates = bench.alternating_rates(
        steps,
        args.rounds,
        args.steps,
        batch,
        before_round={n: drain(s) for n, s in steps.items()},
        after_round=settle if workers else None,
    )
    reference = statistics.median(rates[rows[0].name])
    results = []
    for row in rows:
        r = rates[row.name]
        median = statistics.median(r)
        results.append(
            dict(
                pipeline=pipeline,
                row=row.name,
                workers=workers,
                batch=batch,
                img_s=median,
                per_worker=median / max(workers, 1),
                min=min(r),
                max=max(r),
                ratio=median / reference,
                device=data.device,
            )
        )
    for stream in streams.values():
        stream.close()
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| pipeline | loader | workers | batch | img/s (median) | min-max | img/s per worker | / first row |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['pipeline']} | {r['row']} | {r['workers']} | {r['batch']} | {r['img_s']:.1f} | "
            f"{r['min']:.1f}-{r['max']:.1f} | {r['per_worker']:.1f} | {r['ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


DRAFT_TITLE = "Reduced-size JPEG decoding (PIL Image.draft) under DeiT's random-resized crop"


def draft_study(files: list[Path], size: int, draws: int) -> dict:
    """How often DeiT's training crop (RandomResizedCrop(size), scale 0.08-1, ratio 3/4-4/3, bicubic) would
    let PIL decode a JPEG at 1/2, 1/4 or 1/8 of its size (the crop still at least ``size`` on both sides
    after the reduction, so the resize still shrinks), what it saves, and how far its pixels are from the
    full decode, next to two differences the augmentation itself makes: bicubic against bilinear, and the
    crop one source pixel to the right."""
    import time

    import numpy as np
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop

    scale, ratio = [0.08, 1.0], [3 / 4, 4 / 3]  # torchvision's and timm's defaults, DeiT's crop

    def crop(path: Path, box: tuple[int, int, int, int], reduce: int, mode=Image.BICUBIC) -> np.ndarray:
        with Image.open(path) as image:
            width = image.width
            if reduce > 1:
                image.draft("RGB", (image.width // reduce, image.height // reduce))
            scale = round(width / image.width)  # the reduction PIL chose: ceil(width / scale) pixels wide
            left, top, right, bottom = (side / scale for side in box)
            image = image.convert("RGB")
            return np.asarray(
                image.resize((size, size), mode, box=(left, top, right, bottom)), dtype=np.float32
            )

    counts = {1: 0, 2: 0, 4: 0, 8: 0}
    full_s = draft_s = applicable_full_s = applicable_draft_s = 0.0
    differences: dict[str, list[float]] = {"draft": [], "bilinear": [], "shift": []}
    crops = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for path in files:
            with Image.open(path) as image:
                probe = Image.new("1", image.size)  # get_params reads only the size
            crops += [
                (path, probe.size, RandomResizedCrop.get_params(probe, scale, ratio)) for _ in range(draws)
            ]
    for path, (width, _), (top, left, h, w) in crops:
        reduce = max([r for r in (2, 4, 8) if min(h, w) // r >= size], default=1)
        counts[reduce] += 1
        box = (left, top, left + w, top + h)
        previous_full, previous_draft = full_s, draft_s
        start = time.perf_counter()
        full = crop(path, box, 1)
        full_s += time.perf_counter() - start
        start = time.perf_counter()
        reduced = crop(path, box, reduce)
        draft_s += time.perf_counter() - start
        if reduce > 1:
            applicable_full_s += full_s - previous_full
            applicable_draft_s += draft_s - previous_draft
            differences["draft"].append(float(np.abs(full - reduced).mean()))
            differences["bilinear"].append(float(np.abs(full - crop(path, box, 1, Image.BILINEAR)).mean()))
            shifted = (
                (left + 1, top, left + w + 1, top + h)
                if left + w < width
                else (left - 1, top, left + w - 1, top + h)
            )
            differences["shift"].append(float(np.abs(full - crop(path, shifted, 1)).mean()))
    total = sum(counts.values())
    return dict(
        samples=total,
        share={r: c / total for r, c in counts.items()},
        speedup=full_s / draft_s,
        speedup_applicable=applicable_full_s / applicable_draft_s if applicable_draft_s else float("nan"),
        **{f"mean_abs_{k}": (statistics.mean(v) if v else float("nan")) for k, v in differences.items()},
    )


def write_draft_study(args: argparse.Namespace, argv: list[str]) -> None:
    from PIL import features

    files = sorted((args.imagenet / "train").glob("*/*"))
    if not files:
        raise SystemExit(f"bench.py data --draft: no ImageNet training files under {args.imagenet / 'train'}")
    study = draft_study(files, 224, args.draft)
    print(json.dumps(study))
    reduced = sum(v for r, v in study["share"].items() if r > 1)
    expected = 1 / (1 - reduced + reduced / study["speedup_applicable"]) if reduced else 1.0
    share = ", ".join(f"1/{r}: {100 * v:.1f} %" for r, v in study["share"].items() if r > 1)
    body = (
        f"Written by `python scripts/bench.py data {' '.join(argv)}` on {len(files)} real ImageNet training "
        f"JPEGs ({study['samples']} crops). Pillow {features.version('pil')} decodes JPEGs with "
        f"libjpeg-turbo {features.version('libjpeg_turbo')} (`PIL.features.check_feature('libjpeg_turbo')` "
        f"is {features.check_feature('libjpeg_turbo')}): the fast decoder is already the one in use.\n\n"
        f"DeiT's crop (scale 0.08-1, ratio 3/4-4/3, to 224 px) leaves at least 224 px on both sides after a "
        f"reduced-size decode at {share} of the crops (the rest: full size). On those, decoding at the "
        f"reduced size and resizing differs from the full decode by {study['mean_abs_draft']:.2f} grey "
        f"levels "
        f"(mean absolute, 0-255), against {study['mean_abs_bilinear']:.2f} for bicubic against bilinear and "
        f"{study['mean_abs_shift']:.2f} for the same crop one source pixel over: within the augmentation's "
        f"own noise. Decode plus crop and resize: {study['speedup_applicable']:.2f}x faster on those crops, "
        f"so {expected:.3f}x over all crops (measured: {study['speedup']:.2f}x, the second decode of a file "
        "warmer in the caches). Not adopted: at ImageNet's image sizes the crop almost "
        "never allows a reduction (it pays for photos several times larger than the crop, which no recipe "
        "here trains on), so an option would change nothing a run measures.\n"
    )
    print(body)
    if args.output:
        bench.write_section(args.output, DRAFT_TITLE, body)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="bench.py data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pipelines", nargs="+", choices=list(ROWS), default=[p for p in ROWS if "gpu" not in p]
    )
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed batches per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches after the loader starts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--imagenet", type=Path, default=SHARED / "imagenet")
    parser.add_argument("--copies", type=int, default=3, help="links to each ImageNet file")
    parser.add_argument("--coco", type=Path, default=SHARED / "coco_tiny")
    parser.add_argument("--cifar", type=Path, default=SHARED / "cifar10")
    parser.add_argument("--toy", action="store_true", help=f"batches of {TOY_BATCH}, to check that it runs")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write the section to")
    parser.add_argument("--title", default=TITLE, help="of the section --output writes")
    parser.add_argument("--jsonl", type=Path, default=None, help="also append one JSON line per result")
    parser.add_argument(
        "--draft",
        type=int,
        default=0,
        metavar="DRAWS",
        help="only the Image.draft study, DRAWS crops per file",
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.draft:
        write_draft_study(args, argv)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        data = prepare(args, Path(tmp))
        for pipeline in args.pipelines:
            for workers in args.workers:
                for result in measure(pipeline, workers, args, data):
                    results.append(result)
                    print(json.dumps(result), flush=True)
                    if args.jsonl:
                        with args.jsonl.open("a") as f:
                            f.write(json.dumps(result) + "\n")
    load = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    command = " ".join(["python scripts/bench.py data", *argv])
    setting = (
        f"{platform.processor() or 'CPU'} with {cores} cores; torch {torch.__version__}; "
        f"{args.rounds} rounds of {args.steps} batches, the rows of a pipeline alternating within each "
        f"round; load average {load:.1f} at the end"
    )
    body = f"Written by `{command}` ({setting}).\n\n{table(results)}"
    print(body)
    if args.output:
        bench.write_section(args.output, args.title, body)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(sys.argv[1:])
