"""LambdaNetworks benchmarks, run through scripts/bench.py:

    python scripts/bench.py lambda --output docs/benchmarks.md
    python scripts/bench.py lambda --device cuda --batch-size 32 --resnet-batch-size 64

1. One layer, forward + backward, on the same input [B, C, S, S] at S = 14, 28, 56, 64: the lambda layer
   (|k| = 16, |h| = 4, |u| = 1, lambda convolution r = 23) against multi-head self-attention of the same width
   and heads, once with the attention map written out (softmax(QK^T / sqrt(d)) V, the memory the paper
   compares against) and once through `F.scaled_dot_product_attention` (vtrain.layers.Attention, which on
   CPU and GPU runs fused kernels that never store the map).
2. Training throughput of LambdaResNet-50 against torchvision's ResNet-50 (full AdamW steps).

Peak memory of one step after a warm-up step (weights, optimizer state and one-off kernel set-up excluded):
`torch.cuda.max_memory_allocated` on CUDA; on CPU the resident-set growth over that step in a fresh child
process (Linux: the high-water mark is reset through /proc/self/clear_refs after the warm-up step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bench
import torch
from torch import nn

SIZES = (14, 28, 56, 64)
LAYERS = ("lambda", "attention_map", "attention_sdpa")
LAYER_LABELS = {
    "lambda": "lambda layer (r = 23)",
    "attention_map": "self-attention, map stored",
    "attention_sdpa": "self-attention, fused SDPA",
}
TITLE = "LambdaNetworks: lambda layer vs self-attention, LambdaResNet-50 vs ResNet-50"
RESNETS = {"lambda_resnet50": "vtrain `lambda_resnet50`", "resnet50": "torchvision `resnet50`"}


class AttentionWithMap(nn.Module):
    """Multi-head self-attention over the pixels of [B, C, H, W], holding the [B, heads, HW, HW] map."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).reshape(B, H * W, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (C // self.heads) ** -0.5).softmax(-1)  # [B, heads, HW, HW]
        out = (attn @ v).transpose(1, 2).reshape(B, H * W, C)
        return self.proj(out).transpose(1, 2).reshape(B, C, H, W)


class AttentionSDPA(nn.Module):
    """vtrain.layers.Attention (fused scaled-dot-product attention) over the pixels of [B, C, H, W]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        from vtrain.layers.attention import Attention

        self.attn = Attention(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        return self.attn(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, C, H, W)


def make_layer(name: str, dim: int) -> nn.Module:
    if name == "lambda":
        from vtrain.models.lambda_resnet import LambdaLayer

        return LambdaLayer(dim, dim, dim_k=16, heads=4, dim_u=1, r=23)
    return (AttentionWithMap if name == "attention_map" else AttentionSDPA)(dim, 4)


def layer_step(name: str, size: int, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """Forward + backward of one layer on a fixed random [batch, dim, size, size] input."""
    layer = make_layer(name, args.dim).to(device).train()
    x = torch.randn(args.batch_size, args.dim, size, size, device=device, requires_grad=True)

    def step() -> None:
        layer(x).square().mean().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def resnet_step(name: str, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """One training step (cross-entropy, backward, AdamW) of LambdaResNet-50 or torchvision's ResNet-50."""
    if name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50()
    else:
        import vtrain

        model = vtrain.create_model("lambda_resnet50")
    size, batch = args.image_size, args.resnet_batch_size
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    return bench.train_step(model, device, "fp32", lambda m: nn.functional.cross_entropy(m(images), labels))


def make_step(kind: str, name: str, size: int, args: argparse.Namespace, device: torch.device):
    return layer_step(name, size, args, device) if kind == "layer" else resnet_step(name, args, device)


def rate(step: Callable[[], None], items: int, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * items / (time.perf_counter() - start)


def peak_mib(kind: str, name: str, size: int, args: argparse.Namespace) -> float:
    """Peak memory of one step after a warm-up step; on CPU in a fresh child process."""
    if args.device.startswith("cuda"):
        device = torch.device(args.device)
        step = make_step(kind, name, size, args, device)
        step()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    cmd = [sys.executable, __file__, "--child", kind, name, str(size), *args.forwarded]
    # large blocks from mmap, so memory freed after the warm-up step leaves the process and the timed step's
    # peak shows as resident-set growth
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def child(args: argparse.Namespace) -> None:
    """Resident-set growth over one step, after a warm-up step has loaded kernels and optimizer state.
    Writing 5 to /proc/self/clear_refs (Linux) resets the high-water mark VmHWM to the current size."""
    kind, name, size = args.child
    step = make_step(kind, name, int(size), args, torch.device("cpu"))
    step()
    Path("/proc/self/clear_refs").write_text("5")
    base = bench.rss_kib()
    step()
    print(json.dumps({"peak_mib": (bench.peak_rss_kib() - base) / 1024}))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.py lambda", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dim", type=int, default=64, help="channels of the layer benchmark")
    parser.add_argument("--batch-size", type=int, default=2, help="layer benchmark batch")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per layer and size")
    parser.add_argument("--resnet-batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--resnet-steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-resnets", action="store_true", help="only the layer benchmark")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write the section to")
    parser.add_argument("--note", default="", help="a sentence on the conditions, added to the section")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # what a CPU memory child needs to rebuild the same step
    args.forwarded = [
        f"--dim={args.dim}",
        f"--batch-size={args.batch_size}",
        f"--resnet-batch-size={args.resnet_batch_size}",
        f"--image-size={args.image_size}",
        "--device=cpu",
    ]
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    if args.child:
        child(args)
        return
    torch.manual_seed(0)
    device = torch.device(args.device)
    started = time.perf_counter()

    rows = [
        "| feature map | context n | " + " | ".join(f"{LAYER_LABELS[n]}: img/s, MiB" for n in LAYERS) + " |",
        "|---|---:|" + "---:|" * len(LAYERS),
    ]
    for size in args.sizes:
        cells = []
        for name in LAYERS:
            speed = rate(layer_step(name, size, args, device), args.batch_size, args.steps, args.warmup)
            cells.append(f"{speed:.1f}, {peak_mib('layer', name, size, args):.1f}")
        rows.append(f"| {size}x{size} | {size * size} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)

    resnet_rows = []
    if not args.skip_resnets:
        resnet_rows = ["| model | img/s | peak memory (MiB) |", "|---|---:|---:|"]
        rates = {}
        for name, label in RESNETS.items():
            step = resnet_step(name, args, device)
            rates[name] = rate(step, args.resnet_batch_size, args.resnet_steps, args.warmup)
            memory = peak_mib("resnet", name, 0, args)
            resnet_rows.append(f"| {label} | {rates[name]:.2f} | {memory:.0f} |")
            print(resnet_rows[-1], flush=True)
        ratio = rates["lambda_resnet50"] / rates["resnet50"]

    cuda = device.type == "cuda"
    where = (
        torch.cuda.get_device_name()
        if cuda
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    shown = [a for i, a in enumerate(argv) if "--note" not in argv[max(i - 1, 0) : i + 1]]
    command = " ".join(["python scripts/bench.py lambda", *shown])
    body = (
        f"Written by `{command}` on {where}; torch {torch.__version__}; fp32; "
        f"{time.perf_counter() - started:.0f} s in all. {args.note}\n\n"
        f"One layer, forward + backward, batch {args.batch_size}, width {args.dim}, 4 heads "
        f"(lambda: |k| = 16, |u| = 1; self-attention: head width {args.dim // 4}, qkv and output "
        f"projections), {args.steps} timed steps after {args.warmup} warm-up. Memory: peak of one step "
        f"after a warm-up step, {'CUDA allocator' if cuda else 'resident-set growth in a fresh process'}.\n\n"
        + "\n".join(rows)
        + "\n"
    )
    if resnet_rows:
        body += (
            f"\nTraining step (cross-entropy, backward, AdamW) at {args.image_size} px, batch "
            f"{args.resnet_batch_size}, {args.resnet_steps} timed steps. LambdaResNet-50 / ResNet-50 "
            f"throughput: {ratio:.2f}.\n\n" + "\n".join(resnet_rows) + "\n"
        )
    print(body)
    if args.output:
        bench.write_section(args.output, TITLE, body)


if __name__ == "__main__":
    main(sys.argv[1:])
