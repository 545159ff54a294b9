"""What gradient checkpointing (``model.grad_checkpointing=true``) saves and costs on a ViT training step,
run through scripts/bench.py:

    python scripts/bench.py memory --output docs/benchmarks.md     # ViT-B/16, batch 32 at 224 (CPU)
    python scripts/bench.py memory --device cuda --batch-size 128 --output docs/benchmarks.md
    python scripts/bench.py memory --model vit_ti16 --image-size 32 --batch-size 2   # toy, to check it runs

For the same model and batch, with checkpointing off and on (drop path on, so the recomputation must draw
the same masks):

* **saved for backward**: the bytes of the distinct tensors that autograd keeps from the forward pass for
  the backward pass (``torch.autograd.graph.saved_tensors_hooks`` over the loss's forward, the weights
  left out): the activations. With checkpointing these are the blocks' inputs plus what lies outside the
  blocks. Exact and the same on every device.
* **peak step memory**: the most memory a full step (forward, backward, AdamW) holds above what the
  weights, gradients and optimizer state hold before it, one block's recomputation included:
  ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the resident-set growth over a step after a warm-up
  step, in a fresh process per setting (the high-water mark reset through /proc/self/clear_refs).
* **time**: images/s of full steps, the two settings alternating within each round
  (``bench.alternating_rates``); checkpointing costs about one more forward pass.
* **gradients**: the largest difference between the two settings' gradients, relative to the largest
  gradient, from the same weights and random-number state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bench
import torch
import torch.nn.functional as F
from torch import nn

SETTINGS = {"off": False, "on": True}


def build(args: argparse.Namespace, checkpointing: bool, device: torch.device) -> nn.Module:
    import vtrain

    torch.manual_seed(0)  # the same weights in both settings
    model = vtrain.create_model(
        args.model,
        img_size=args.image_size,
        num_classes=1000,
        drop_path_rate=args.drop_path,
        weight_init="deit",  # a non-zero head, so that every block gets a gradient
        grad_checkpointing=checkpointing,
    )
    return model.to(device).train()


def batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, 1000, (args.batch_size,), generator=generator)
    return images.to(device), labels.to(device)


def loss_fn(args: argparse.Namespace, device: torch.device) -> Callable[[nn.Module], torch.Tensor]:
    images, labels = batch(args, device)
    return lambda model: F.cross_entropy(model(images), labels)


def saved_for_backward(model: nn.Module, loss: Callable[[nn.Module], torch.Tensor]) -> tuple[float, dict]:
    """MiB of the distinct non-weight tensors that autograd saves during the forward of ``loss(model)``,
    and the gradients [name -> tensor] of the backward that follows (from random-number seed 0)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        value = loss(model)
    value.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return sum(saved.values()) / 2**20, grads


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max |a - b| over every gradient, relative to the largest |a|."""
    if a.keys() != b.keys():
        raise RuntimeError(f"different parameters got gradients: {sorted(a.keys() ^ b.keys())}")
    scale = max(float(g.abs().max()) for g in a.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / scale


def peak_step_mib(args: argparse.Namespace, setting: str, device: torch.device) -> float:
    """Peak memory of one training step above the memory held before it (see the module docstring)."""
    if device.type == "cuda":
        step = bench.train_step(
            build(args, SETTINGS[setting], device), device, args.precision, loss_fn(args, device)
        )
        step()  # optimizer state and kernels
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        del step
        torch.cuda.empty_cache()
        return peak
    cmd = [sys.executable, __file__, "--child", setting, *args.forwarded]
    # large blocks from mmap, so memory freed after the warm-up step leaves the process and the timed
    # step's peak shows as resident-set growth
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def child(args: argparse.Namespace) -> None:
    """CPU: resident-set growth over one step after a warm-up step, printed as JSON."""
    device = torch.device("cpu")
    step = bench.train_step(
        build(args, SETTINGS[args.child], device), device, args.precision, loss_fn(args, device)
    )
    step()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    base = bench.rss_kib()
    step()
    print(json.dumps({"peak_mib": (bench.peak_rss_kib() - base) / 1024}))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.py memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="vit_b16", help="a vtrain ViT preset")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--drop-path", type=float, default=0.1, help="drop_path_rate (DeiT-B's 0.1)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per setting and round")
    # the saved-for-backward pass has already run each model forward and backward once
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps per setting before timing")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write the section to")
    parser.add_argument("--note", default="", help="a sentence on the conditions, added to the section")
    parser.add_argument("--child", choices=sorted(SETTINGS), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # what a CPU memory child needs to rebuild the same step
    args.forwarded = [
        f"--model={args.model}",
        f"--batch-size={args.batch_size}",
        f"--image-size={args.image_size}",
        f"--drop-path={args.drop_path}",
        f"--precision={args.precision}",
        "--device=cpu",
    ]
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    if args.child:
        child(args)
        return
    device = torch.device(args.device)
    started = time.perf_counter()
    # the fresh-process measurements first, before this process holds models of its own
    peak = {setting: peak_step_mib(args, setting, device) for setting in SETTINGS}
    models = {setting: build(args, flag, device) for setting, flag in SETTINGS.items()}
    loss = loss_fn(args, device)
    saved, grads = {}, {}
    for setting, model in models.items():
        saved[setting], grads[setting] = saved_for_backward(model, loss)
    difference = max_relative_difference(grads["off"], grads["on"])
    del grads
    steps = {s: bench.train_step(m, device, args.precision, loss) for s, m in models.items()}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    rates = bench.alternating_rates(steps, args.rounds, args.steps, args.batch_size)

    cuda = device.type == "cuda"
    where = (
        torch.cuda.get_device_name()
        if cuda
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    method = "CUDA allocator" if cuda else "resident-set growth in a fresh process"
    rows = [
        "| `model.grad_checkpointing` | saved for backward (MiB) | peak step memory (MiB) | img/s (median) "
        "| min-max |",
        "|---|---:|---:|---:|---:|",
    ]
    for setting in SETTINGS:
        r = rates[setting]
        rows.append(
            f"| {str(SETTINGS[setting]).lower()} | {saved[setting]:.0f} | {peak[setting]:.0f} | "
            f"{statistics.median(r):.2f} | {min(r):.2f}-{max(r):.2f} |"
        )
    slowdown = statistics.median(rates["off"]) / statistics.median(rates["on"])
    shown = [a for i, a in enumerate(argv) if "--note" not in argv[max(i - 1, 0) : i + 1]]
    command = " ".join(["python scripts/bench.py memory", *shown])
    body = (
        f"Written by `{command}` on {where}; torch {torch.__version__}; "
        f"{time.perf_counter() - started:.0f} s in all. {args.note}\n\n"
        f"`{args.model}` training step (cross-entropy, backward, AdamW) at {args.image_size} px, batch "
        f"{args.batch_size}, {args.precision}, drop path {args.drop_path}; {args.rounds} rounds of "
        f"{args.steps} steps per setting after {args.warmup} untimed. Saved for backward: the distinct "
        f"non-weight tensors autograd keeps from the forward pass (saved_tensors_hooks). Peak step memory: "
        f"above the weights, gradients and AdamW state, recomputation included ({method}).\n\n"
        + "\n".join(rows)
        + f"\n\nCheckpointing keeps {saved['on'] / saved['off']:.3f} of the saved activations "
        f"({saved['off'] - saved['on']:.0f} MiB less) and {peak['on'] / peak['off']:.3f} of the peak, for "
        f"{slowdown:.2f}x the step time. Gradients, same weights and seed: largest difference "
        f"{difference:.1e} of the largest gradient.\n"
    )
    print(body)
    if args.output:
        title = (
            f"Gradient checkpointing: {args.model} training step memory and time ({'GPU' if cuda else 'CPU'})"
        )
        bench.write_section(args.output, title, body)


if __name__ == "__main__":
    main(sys.argv[1:])
