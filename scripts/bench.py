"""Speed and memory benchmarks; each writes its own section of a markdown file (docs/benchmarks.md).

    python scripts/bench.py vit --output docs/benchmarks.md    # ViT-S/16 training vs timm, alternating rounds
    python scripts/bench.py detr --output docs/benchmarks.md   # DETR R50 at the recipe sizes, matcher
    python scripts/bench.py vit --device cuda --batch-size 128 --precision bf16
    python scripts/bench.py data --output docs/benchmarks.md   # loaders per worker process vs timm's
    python scripts/bench.py memory --output docs/benchmarks.md # gradient checkpointing on a ViT-B/16 step
    python scripts/bench.py detr_vs --reference-dir DETR_CHECKOUT --output docs/benchmarks.md   # vs official
    python scripts/bench.py lambda_timm --output docs/benchmarks.md   # lambda layer / LambdaResNet vs timm

Training throughput is images per second of full optimizer steps (forward, loss, backward, AdamW). Peak
memory is `torch.cuda.max_memory_allocated` on CUDA; on CPU the growth of the resident set of a fresh
child process per model, measured over a few steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# DETR's eval-size COCO images: short side 800, long side up to 1333 (two typical aspect ratios).
DETR_SIZES = ((800, 1066), (800, 1199))


def vit_step(name: str, batch: int, device: torch.device, precision: str) -> Callable[[], None]:
    """One training step of vtrain's `vit_s16` or timm's `vit_small_patch16_224` on a fixed random batch."""
    if name == "vtrain":
        import vtrain

        model = vtrain.create_model("vit_s16")
    else:
        import timm

        model = timm.create_model("vit_small_patch16_224", pretrained=False)
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    return train_step(model, device, precision, lambda m: nn.functional.cross_entropy(m(images), labels))


def detr_targets(batch: int, boxes_per_image: int, device: torch.device) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(batch):
        centers = torch.rand(boxes_per_image, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(boxes_per_image, 2, generator=generator) * 0.3 + 0.05
        labels = torch.randint(1, 91, (boxes_per_image,), generator=generator)
        targets.append({"boxes": torch.cat([centers, sizes], 1).to(device), "labels": labels.to(device)})
    return targets


def detr_step(name: str, batch: int, device: torch.device, precision: str) -> Callable[[], None]:
    """One DETR R50 training step (set criterion with Hungarian matching) on COCO-sized padded images."""
    from vtrain.data.coco import pad_images
    from vtrain.models.detr import SetCriterion, detr_r50

    model, criterion = detr_r50(backbone_weights="scratch"), SetCriterion(num_classes=91).to(device)
    sizes = [DETR_SIZES[i % len(DETR_SIZES)] for i in range(batch)]
    images, mask = pad_images([torch.randn(3, h, w) for h, w in sizes])
    images, mask = images.to(device), mask.to(device)
    targets = detr_targets(batch, 7, device)  # COCO has about 7 objects per image

    def loss(m: nn.Module) -> torch.Tensor:
        losses = criterion(m(images, mask), targets)
        return sum(losses[k] * w for k, w in criterion.weight_dict.items())

    return train_step(model, device, precision, loss)


def train_step(
    model: nn.Module,
    device: torch.device,
    precision: str,
    loss_fn,
    compile: bool = False,
    backend: str = "inductor",
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
) -> Callable[[], None]:
    """One optimizer step of `loss_fn(model)` under bf16 autocast or in fp32; `compile`: the model's forward
    through `torch.compile` (the loss and the optimizer stay eager), compiled on the first step;
    `optimizer`: builds the optimizer from the model (on its device), by default AdamW at 1e-4."""
    model.to(device).train()
    if optimizer is None:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    else:
        opt = optimizer(model)
    dtype = torch.bfloat16 if precision == "bf16" else None
    forward = torch.compile(model, backend=backend) if compile else model

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(forward)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


BENCHMARKS = {"vit": (vit_step, ("vtrain", "timm")), "detr": (detr_step, ("vtrain",))}


def alternating_rates(
    steps: dict[str, Callable[[], None]],
    rounds: int,
    steps_per_round: int,
    batch_size: int,
    before_round: dict[str, Callable[[], object]] | None = None,
    after_round: Callable[[str, float], object] | None = None,
) -> dict[str, list[float]]:
    """Images/s of each contender in every round, the contenders timed in turn within each round (so that
    the machine's drift hits them alike). ``before_round``: per contender, untimed work before each of its
    rounds (a loader drains the batches its workers prefetched while the others were timed);
    ``after_round(name, rate)``: untimed, after each timed round (a loader waits for its workers to finish
    the batches they were asked for, so that they do not share the cores with the next contender's)."""
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            if before_round and name in before_round:
                before_round[name]()
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            rates[name].append(steps_per_round * batch_size / (time.perf_counter() - start))
            if after_round:
                after_round(name, rates[name][-1])
    return rates


def throughput(args: argparse.Namespace) -> dict[str, list[float]]:
    """Images/s per round for every contender, the contenders timed in turn within each round."""
    make, names = BENCHMARKS[args.benchmark]
    device = torch.device(args.device)
    torch.manual_seed(0)
    steps = {name: make(name, args.batch_size, device, args.precision) for name in names}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    return alternating_rates(steps, args.rounds, args.steps, args.batch_size)


def peak_memory_mib(args: argparse.Namespace, name: str) -> float:
    make, _ = BENCHMARKS[args.benchmark]
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        step = make(name, args.batch_size, torch.device(args.device), args.precision)
        for _ in range(3):
            step()
        return torch.cuda.max_memory_allocated() / 2**20
    cmd = [
        sys.executable,
        __file__,
        args.benchmark,
        "--child-memory",
        name,
        "--batch-size",
        str(args.batch_size),
        "--precision",
        args.precision,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def peak_rss_kib() -> int:
    """This process's resident-set high-water mark. VmHWM belongs to the current address space, whereas
    ru_maxrss survives exec and would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_kib() -> int:
    """This process's current resident set (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def child_memory(args: argparse.Namespace) -> None:
    make, _ = BENCHMARKS[args.benchmark]
    base = peak_rss_kib()
    step = make(args.child_memory, args.batch_size, torch.device("cpu"), args.precision)
    for _ in range(2):
        step()
    print(json.dumps({"peak_mib": (peak_rss_kib() - base) / 1024}))


def matcher_ms(device: torch.device, batch: int = 4, repeats: int = 50) -> tuple[float, float]:
    """Median and max milliseconds of one HungarianMatcher call for a batch of DETR R50 outputs (100
    queries, 92 logits) against about 7 targets per image, the cost matrix on `device`."""
    from vtrain.models.detr import HungarianMatcher

    matcher = HungarianMatcher()
    outputs = {
        "pred_logits": torch.randn(batch, 100, 92, device=device),
        "pred_boxes": torch.rand(batch, 100, 4, device=device) * 0.5 + 0.25,
    }
    targets = detr_targets(batch, 7, device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matcher(outputs, targets)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


def write_section(path: Path, title: str, body: str) -> None:
    """Put `## title` + body into the markdown file, replacing an existing section of that title."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    heading = f"## {title}"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{body}"
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + f"{heading}\n\n{body}" + ("" if end == -1 else "\n" + text[end + 1 :])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


# Benchmarks that live in their own file, scripts/bench_<name>.py, each with `main(argv)`; they reuse
# `write_section`, `peak_rss_kib`, `rss_kib`, `train_step` and `alternating_rates` from here.
MODULE_BENCHMARKS = (
    "igpt",
    "lambda",
    "lambda_timm",
    "ttsr",
    "fpt",
    "throughput",
    "detr_vs",
    "memory",
    "data",
    "data_steps",
)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in MODULE_BENCHMARKS:
        import importlib

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        module = importlib.import_module(f"bench_{sys.argv[1]}")
        module.main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("benchmark", choices=sorted([*BENCHMARKS, *MODULE_BENCHMARKS]))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: vit 128 / 16, detr 4 / 2 (CUDA / CPU)"
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write the section to")
    parser.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    defaults = {"vit": (128, 16), "detr": (4, 2)}[args.benchmark]
    args.batch_size = args.batch_size or defaults[0 if cuda else 1]
    args.steps = args.steps or (20 if cuda else (3 if args.benchmark == "vit" else 1))
    if args.child_memory:
        child_memory(args)
        return

    _, names = BENCHMARKS[args.benchmark]
    rates = throughput(args)
    memory = {name: peak_memory_mib(args, name) for name in names}
    device = (
        torch.cuda.get_device_name()
        if cuda
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    setting = (
        f"batch {args.batch_size}, {args.precision}, on {device}; torch {torch.__version__}; "
        f"{args.rounds} rounds of {args.steps} steps"
    )
    rows = ["| model | img/s (median of rounds) | min-max | peak memory (MiB) |", "|---|---:|---:|---:|"]
    labels = {
        "vtrain": f"vtrain `{'vit_s16' if args.benchmark == 'vit' else 'detr_r50'}`",
        "timm": "timm `vit_small_patch16_224`",
    }
    for name in names:
        r = rates[name]
        spread = f"{min(r):.2f}-{max(r):.2f}"
        rows.append(f"| {labels[name]} | {statistics.median(r):.2f} | {spread} | {memory[name]:.0f} |")
    command = " ".join(["python scripts/bench.py", *sys.argv[1:]])
    if args.benchmark == "vit":
        title = "ViT-S/16 training throughput and memory against timm"
        ratio = statistics.median(rates["vtrain"]) / statistics.median(rates["timm"])
        intro = (
            f"Training step at 224 px, {setting}, the two models alternating within each round. "
            f"vtrain / timm throughput: {ratio:.3f}."
        )
    else:
        title = "DETR R50 training throughput, memory and matcher time"
        median, worst = matcher_ms(torch.device(args.device))
        intro = (
            f"Training step (forward, Hungarian matching, set criterion with auxiliary losses, backward, "
            f"AdamW) on COCO-sized images ({' and '.join(f'{h}x{w}' for h, w in DETR_SIZES)}, padded), "
            f"7 targets per image, {setting}. HungarianMatcher for a batch of 4 (100 queries, 92 logits, "
            f"7 targets per image): median {median:.2f} ms, max {worst:.2f} ms over 50 calls."
        )
    body = f"Written by `{command}`.\n\n{intro}\n\n" + "\n".join(rows) + "\n"
    print(body)
    if args.output:
        write_section(args.output, title, body)


if __name__ == "__main__":
    main()
