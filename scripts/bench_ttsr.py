"""TTSR benchmarks, run through scripts/bench.py:

    python scripts/bench.py ttsr --output docs/benchmarks.md
    python scripts/bench.py ttsr --device cuda --batch-size 9

1. Inference of the paper's `ttsr` on one CUFED5-sized image (HR 500 x 332, so LR 125 x 83) with one
   reference of the same size: seconds per image and peak memory.
2. Training step at the CUFED training size (HR 160 x 160, references 160 x 160): the reconstruction-only
   step (TTSR-rec) and the full TTSR step (perceptual + transferal perceptual + WGAN-GP with 2 critic
   updates), Adam, all as in vtrain.tasks.SuperResolutionTask.

Random weights and images (the numbers do not depend on them). Peak memory: `torch.cuda.max_memory_allocated`
on CUDA; on CPU the growth of the resident set of a fresh child process per measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bench
import torch

TITLE = "TTSR: inference on a CUFED5-sized image, training step at 160 x 160"
HR_SIZE = (332, 500)  # (height, width) of a typical CUFED5 image
TRAIN_SIZE = 160


def images(batch: int, hr: tuple[int, int], ref: tuple[int, int], device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=g) * 2 - 1).to(device)

    h, w = hr
    return {
        "lr": rand(batch, 3, h // 4, w // 4),
        "lr_up": rand(batch, 3, h, w),
        "hr": rand(batch, 3, h, w),
        "ref": rand(batch, 3, *ref),
        "ref_down_up": rand(batch, 3, *ref),
    }


def inference(args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    import vtrain

    model = vtrain.create_model("ttsr", vgg_weights="scratch").to(device).eval()
    batch = images(1, HR_SIZE, HR_SIZE, device)

    @torch.no_grad()
    def run() -> None:
        model(batch["lr"], batch["lr_up"], batch["ref"], batch["ref_down_up"])
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def train(args: argparse.Namespace, device: torch.device, full: bool) -> Callable[[], None]:
    """One optimizer step of SuperResolutionTask's training_step, without Lightning around it."""
    import vtrain
    from vtrain.models.ttsr import Discriminator
    from vtrain.models.ttsr.losses import (
        PerceptualLoss,
        critic_loss,
        generator_adversarial_loss,
        reconstruction_loss,
        transferal_perceptual_loss,
    )

    model = vtrain.create_model("ttsr", vgg_weights="scratch").to(device).train()
    lte = list(model.LTE.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("LTE.")]
    opt_g = torch.optim.Adam([{"params": rest}, {"params": lte, "lr": 1e-5}], lr=1e-4)
    batch = images(args.batch_size, (TRAIN_SIZE, TRAIN_SIZE), (TRAIN_SIZE, TRAIN_SIZE), device)
    if full:
        perceptual = PerceptualLoss().to(device)
        critic = Discriminator(TRAIN_SIZE).to(device)
        opt_d = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.0, 0.9))

    def step() -> None:
        out = model(batch["lr"], batch["lr_up"], batch["ref"], batch["ref_down_up"])
        loss = reconstruction_loss(out.sr, batch["hr"])
        if full:
            loss = loss + 1e-2 * perceptual(out.sr, batch["hr"])
            textures = model.texture_features(out.sr)
            loss = loss + 1e-2 * transferal_perceptual_loss(textures, out.S, out.T_lv3, out.T_lv2, out.T_lv1)
            critic.requires_grad_(True)
            for _ in range(2):
                d_loss, _ = critic_loss(critic, out.sr, batch["hr"])
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            critic.requires_grad_(False)
            loss = loss + 1e-3 * generator_adversarial_loss(critic, out.sr)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def make(what: str, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    return inference(args, device) if what == "inference" else train(args, device, full=what == "train_full")


def seconds(step: Callable[[], None], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def peak_mib(what: str, args: argparse.Namespace) -> float:
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        step = make(what, args, torch.device(args.device))
        step()
        return torch.cuda.max_memory_allocated() / 2**20
    cmd = [sys.executable, bench.__file__, "ttsr", "--child", what, "--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def child(args: argparse.Namespace) -> None:
    base = bench.peak_rss_kib()
    step = make(args.child, args, torch.device("cpu"))
    step()
    print(json.dumps({"peak_mib": (bench.peak_rss_kib() - base) / 1024}))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/bench.py ttsr",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="training batch (default: 9 CUDA, 1 CPU)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default: 10 CUDA, 2 CPU)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-full", action="store_true", help="leave out the full-loss training step")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write the section to")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (9 if cuda else 1)
    args.repeats = args.repeats or (10 if cuda else 2)
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    if args.child:
        child(args)
        return
    torch.manual_seed(0)
    device = torch.device(args.device)
    h, w = HR_SIZE
    train_size = f"batch {args.batch_size}, {TRAIN_SIZE} x {TRAIN_SIZE}"
    labels = {
        "inference": f"inference, LR {w // 4} x {h // 4} -> HR {w} x {h}, one reference {w} x {h}",
        "train_rec": f"training step, TTSR-rec (L1), {train_size}",
        "train_full": f"training step, TTSR (all losses, 2 critic steps), {train_size}",
    }
    rows = ["| what | seconds (median) | min-max | peak memory (MiB) |", "|---|---:|---:|---:|"]
    for what in ("inference", "train_rec") if args.skip_full else labels:
        times = seconds(make(what, args, device), args.repeats, args.warmup)
        memory = peak_mib(what, args)
        spread = f"{min(times):.3f}-{max(times):.3f}"
        rows.append(f"| {labels[what]} | {statistics.median(times):.3f} | {spread} | {memory:.0f} |")
        print(rows[-1], flush=True)
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    command = " ".join(["python scripts/bench.py ttsr", *argv])
    body = (
        "The paper's `ttsr` (16 + 16 + 8 + 4 residual blocks, 64 features), fp32, random weights, "
        f"on {where}; "
        f"torch {torch.__version__}; {args.repeats} timed runs after {args.warmup} warm-up. "
        "Inference includes the texture search over every reference position (a 10,375 x 10,375 relevance "
        "matrix at this size).\n\n" + "\n".join(rows) + f"\n\n`{command}`\n"
    )
    print(body)
    if args.output:
        bench.write_section(args.output, TITLE, body)
