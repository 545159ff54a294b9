"""Training throughput (images/s) and peak memory of vtrain's ViT-S/16 against timm's
`vit_small_patch16_224`: same batch, same optimizer, same process, timed in alternating rounds so that
both see the same machine state. Writes a markdown table.

    python scripts/bench.py --output docs/benchmarks.md              # CPU here, CUDA when present
    python scripts/bench.py --device cuda --batch-size 128 --precision bf16
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

MODELS = ("vtrain", "timm")
DOC = """# Benchmarks

## ViT-S/16 training throughput and memory against timm

Written by `{command}` (`make bench`). The same batch of random images and labels goes through both
models, timed in alternating rounds in one process. Peak memory: on CUDA `torch.cuda.max_memory_allocated`,
on CPU the growth of the resident set of a fresh process per model.

{table}"""


def build(name: str) -> nn.Module:
    if name == "vtrain":
        import vtrain

        return vtrain.create_model("vit_s16")
    import timm

    return timm.create_model("vit_small_patch16_224", pretrained=False)


def make_step(model: nn.Module, batch: int, device: torch.device, precision: str) -> Callable[[], None]:
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def throughput(args: argparse.Namespace) -> dict[str, list[float]]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    steps = {}
    for name in MODELS:
        model = build(name)
        if args.compile:
            model.compile()
        steps[name] = make_step(model, args.batch_size, device, args.precision)
        for _ in range(args.warmup):
            steps[name]()
    rates: dict[str, list[float]] = {name: [] for name in MODELS}
    for _ in range(args.rounds):
        for name in MODELS:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))
    return rates


def peak_memory_mib(args: argparse.Namespace, name: str) -> float:
    """Peak memory of a few training steps of one model: CUDA max allocated, or on CPU the growth of the
    peak resident set of a fresh child process over its state after imports."""
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        step = make_step(build(name), args.batch_size, torch.device(args.device), args.precision)
        for _ in range(3):
            step()
        return torch.cuda.max_memory_allocated() / 2**20
    cmd = [
        sys.executable,
        __file__,
        "--child-memory",
        name,
        "--batch-size",
        str(args.batch_size),
        "--precision",
        args.precision,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def _peak_rss_kib() -> int:
    """This process's resident-set high-water mark. VmHWM belongs to the current address space, whereas
    ru_maxrss survives exec and would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_memory(args: argparse.Namespace) -> None:
    base = _peak_rss_kib()
    step = make_step(build(args.child_memory), args.batch_size, torch.device("cpu"), args.precision)
    for _ in range(3):
        step()
    print(json.dumps({"peak_mib": (_peak_rss_kib() - base) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA, 16 on CPU")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write the table to")
    parser.add_argument("--child-memory", choices=MODELS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (128 if cuda else 16)
    args.steps = args.steps or (20 if cuda else 3)
    if args.child_memory:
        child_memory(args)
        return

    rates = throughput(args)
    memory = {name: peak_memory_mib(args, name) for name in MODELS}
    device_name = (
        torch.cuda.get_device_name()
        if cuda
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    lines = [
        "| model | img/s (median of rounds) | min-max | peak memory (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for name, label in (("vtrain", "vtrain `vit_s16`"), ("timm", "timm `vit_small_patch16_224`")):
        r = rates[name]
        lines.append(
            f"| {label} | {statistics.median(r):.1f} | {min(r):.1f}-{max(r):.1f} | {memory[name]:.0f} |"
        )
    ratio = statistics.median(rates["vtrain"]) / statistics.median(rates["timm"])
    header = (
        f"ViT-S/16 training step (forward, backward, AdamW) at 224 px, batch {args.batch_size}, "
        f"{args.precision}{', torch.compile' if args.compile else ''}, on {device_name}; torch "
        f"{torch.__version__}; {args.rounds} alternating rounds of {args.steps} steps. "
        f"vtrain / timm throughput: {ratio:.3f}."
    )
    table = header + "\n\n" + "\n".join(lines) + "\n"
    print(table)
    if args.output:
        command = " ".join(["python scripts/bench.py", *sys.argv[1:]])
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(DOC.format(command=command, table=table))


if __name__ == "__main__":
    main()
