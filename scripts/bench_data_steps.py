"""DeiT's training pipeline step by step: milliseconds per image of each step, with ``data.decode=cpu``
(PIL, timm's steps as timm runs them) and ``data.decode=tensor`` (torchvision's decoder, the crop and flip
on the uint8 tensor, timm's PIL steps from RandAugment on), run through scripts/bench.py:

    python scripts/bench.py data_steps --output docs/benchmarks.md
    python scripts/bench.py data_steps --imagenet DIR --rounds 5

One process, one thread (as in a loader worker), every sample seeded as a worker seeds it; the two paths
alternate within each round over the same files (``--imagenet``, default ../shared/data/imagenet: 100 real
ImageNet training JPEGs), and each step's time is its median over the rounds. Where the loader benchmark
(``bench.py data``) gives the images per second of whole loaders, this says where the time goes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import bench
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TITLE = "Loader: DeiT's pipeline step by step"
# what each step of either path does, in pipeline order
STEP_NAMES = {
    "decode": "decode (PIL: + RGB conversion)",
    "RandomResizedCropAndInterpolation": "random-resized crop, bicubic",
    "TimmCropOnTensor": "random-resized crop, bicubic",
    "RandomHorizontalFlip": "horizontal flip",
    "PlanesToPIL": "tensor to PIL image",
    "RandAugment": "RandAugment rand-m9-mstd0.5-inc1 (timm, PIL)",
    "MaybeToTensor": "ToTensor + Normalize",
    "Normalize": "ToTensor + Normalize",
    "NormalizedTensor": "ToTensor + Normalize",
    "RandomErasing": "random erasing 0.25 (timm)",
}


def pipelines() -> dict[str, tuple]:
    """(decode, steps) of each path: ``decode(bytes)`` -> the image the steps take."""
    import io

    from omegaconf import OmegaConf
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import v2

    from vtrain.data.images import open_rgb
    from vtrain.data.transforms import build_classification_transforms

    keys = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "experiment" / "vit_s16_imagenet.yaml").data)
    options = dict(
        image_size=keys["image_size"],
        recipe="timm",
        mean=keys["mean"],
        std=keys["std"],
        timm_train=keys["timm_train"],
    )

    def steps(tensor_images: bool) -> list:
        pipeline = build_classification_transforms(train=True, tensor_images=tensor_images, **options)
        flat = []
        for (
            step
        ) in pipeline.transforms:  # the cpu path nests timm's Compose; its ToPILImage passes PIL through
            if isinstance(step, (v2.ToPILImage, v2.ToPureTensor)):
                continue
            flat.extend(getattr(step, "transforms", [step]))
        return flat

    def pil(data: bytes):
        return open_rgb(io.BytesIO(data))

    def tensor(data: bytes):
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)

    return {"decode=cpu": (pil, steps(False)), "decode=tensor": (tensor, steps(True))}


def profile(files: list[bytes], rounds: int) -> dict[str, dict[str, float]]:
    """Per path, per step name, the median over rounds of the milliseconds per image."""
    torch.set_num_threads(1)
    paths = pipelines()
    per_round: dict[str, dict[str, list[float]]] = {path: defaultdict(list) for path in paths}
    for _ in range(rounds):
        for path, (decode, steps) in paths.items():
            spent: dict[str, float] = defaultdict(float)
            for seed, data in enumerate(files):
                random.seed(seed)
                np.random.seed(seed)
                torch.manual_seed(seed)
                start = time.perf_counter()
                image = decode(data)
                spent[STEP_NAMES["decode"]] += time.perf_counter() - start
                for step in steps:
                    start = time.perf_counter()
                    image = step(image)
                    spent[STEP_NAMES.get(type(step).__name__, type(step).__name__)] += (
                        time.perf_counter() - start
                    )
            for name, seconds in spent.items():
                per_round[path][name].append(1000 * seconds / len(files))
    return {
        path: {name: statistics.median(v) for name, v in steps.items()} for path, steps in per_round.items()
    }


def table(result: dict[str, dict[str, float]]) -> str:
    cpu, tensor = result["decode=cpu"], result["decode=tensor"]
    names = list(dict.fromkeys([*tensor, *cpu]))  # the tensor path's order: it has every step but one
    lines = ["| step | decode=cpu ms | decode=tensor ms |", "|---|---:|---:|"]
    for name in names:
        a, b = cpu.get(name), tensor.get(name)
        lines.append(f"| {name} | {'-' if a is None else f'{a:.3f}'} | {'-' if b is None else f'{b:.3f}'} |")
    total_cpu, total_tensor = sum(cpu.values()), sum(tensor.values())
    lines.append(
        f"| **total** | **{total_cpu:.3f}** | **{total_tensor:.3f}** ({total_cpu / total_tensor:.2f}x) |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="bench.py data_steps", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--imagenet", type=Path, default=SHARED / "imagenet")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write the section to")
    args = parser.parse_args(argv)
    files = sorted((args.imagenet / "train").glob("*/*"))
    if not files:
        raise SystemExit(f"bench.py data_steps: no ImageNet training files under {args.imagenet / 'train'}")
    result = profile([f.read_bytes() for f in files], args.rounds)
    command = " ".join(["python scripts/bench.py data_steps", *argv])
    body = (
        f"Written by `{command}` on {len(files)} real ImageNet training JPEGs; torch {torch.__version__}, "
        f"1 thread, {args.rounds} rounds, the two paths alternating; each step's median over the rounds, "
        f"in milliseconds per image.\n\n{table(result)}"
    )
    print(body)
    if args.output:
        bench.write_section(args.output, TITLE, body)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(sys.argv[1:])
