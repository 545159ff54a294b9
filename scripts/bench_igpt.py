"""iGPT benchmarks, run through scripts/bench.py:

    python scripts/bench.py igpt --output docs/benchmarks.md                # CPU-sized model (see below)
    python scripts/bench.py igpt --device cuda --preset igpt_s --batch-size 32 --sample-tokens 512

1. Sampling speed at 32x32 (1024 tokens, 512 colours): completing images from their top half (512 given
   tokens) with the key/value cache (one position per layer pass) against recomputing the whole prefix at
   every token (the official sampler), same model, same random numbers, over the first ``--sample-tokens``
   positions of the bottom half. The cached sampler's tokens/s is given after its single pass over the
   prefix (the per-token cost that decides the speed of drawing whole images) and with that pass counted.
   The two must draw the same tokens (checked).
2. Training throughput (full AdamW steps, next-pixel loss) of vtrain's ImageGPT against transformers'
   ``ImageGPTForCausalImageModeling`` of the same size (dropout 0 in both), the two alternating within
   each round.

``--preset`` picks the size (igpt_s on CUDA); on CPU the default is a reduced model of width 256, 4 layers
and 8 heads at the same 32x32 x 512-colour shape, so the recomputing sampler finishes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import bench
import torch
import torch.nn.functional as F
from torch import nn

TITLE = "iGPT: KV-cache sampling and training throughput against transformers' ImageGPT"
CPU_SIZE = dict(embed_dim=256, depth=4, num_heads=8)


def build(args: argparse.Namespace) -> nn.Module:
    import vtrain

    size = {} if args.preset != "cpu" else CPU_SIZE
    return vtrain.create_model("igpt_s" if args.preset == "cpu" else args.preset, **size, img_size=32)


def sampling_rates(
    model: nn.Module, args: argparse.Namespace, device: torch.device
) -> dict[str, list[float]]:
    """Per round: tokens/s of the cached sampler after its pass over the prefix ("cache"), of the same
    sampler with that pass included ("cache_with_prefix") and of the recomputing sampler ("recompute")."""
    model.eval()
    prefix = torch.randint(
        0, model.vocab_size, (args.sample_batch, 512), generator=torch.Generator().manual_seed(0)
    )
    prefix = prefix.to(device)

    def run(use_cache: bool, tokens: int) -> tuple[torch.Tensor, float]:
        generator = torch.Generator(device).manual_seed(1)
        start = time.perf_counter()
        out = model.sample(
            prefix=prefix, top_k=args.top_k, generator=generator, use_cache=use_cache, length=512 + tokens
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    if not torch.equal(run(True, args.sample_tokens)[0], run(False, args.sample_tokens)[0]):
        raise AssertionError("cached and recomputing samplers drew different tokens")
    rates: dict[str, list[float]] = {"cache": [], "cache_with_prefix": [], "recompute": []}
    n = args.sample_batch * args.sample_tokens
    for _ in range(args.rounds):
        first = run(True, 1)[1]  # the pass over the prefix and the first token
        cached = run(True, args.sample_tokens)[1]
        rates["cache"].append(args.sample_batch * (args.sample_tokens - 1) / max(cached - first, 1e-9))
        rates["cache_with_prefix"].append(n / cached)
        rates["recompute"].append(n / run(False, args.sample_tokens)[1])
    return rates


def training_steps(args: argparse.Namespace, device: torch.device) -> dict[str, Callable[[], None]]:
    """One AdamW step of each implementation on the same random token batch."""
    from transformers import ImageGPTConfig, ImageGPTForCausalImageModeling

    ours = build(args)
    config = ImageGPTConfig(
        vocab_size=ours.vocab_size + 1, n_positions=ours.seq_len, n_embd=ours.embed_dim, n_layer=ours.depth,
        n_head=ours.num_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    theirs = ImageGPTForCausalImageModeling(config)
    tokens = torch.randint(0, ours.vocab_size, (args.batch_size, ours.seq_len), device=device)
    inputs = torch.cat([torch.full_like(tokens[:, :1], ours.vocab_size), tokens[:, :-1]], dim=1)  # SOS first

    def ours_loss(m: nn.Module) -> torch.Tensor:
        return F.cross_entropy(m(tokens).transpose(1, 2), tokens)

    def theirs_loss(m: nn.Module) -> torch.Tensor:
        return F.cross_entropy(m(input_ids=inputs).logits.transpose(1, 2), tokens)

    return {
        "vtrain": bench.train_step(ours, device, args.precision, ours_loss),
        "transformers": bench.train_step(theirs, device, args.precision, theirs_loss),
    }


def training_rates(args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    steps = training_steps(args, device)
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    return bench.alternating_rates(steps, args.rounds, args.steps, args.batch_size)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default=None, help="igpt_s / igpt_m / ...; default igpt_s (CUDA), 'cpu'")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default 32 / 4)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--sample-batch", type=int, default=None, help="default 8 / 2 (CUDA / CPU)")
    parser.add_argument("--sample-tokens", type=int, default=None, help="bottom-half positions sampled")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write the section to")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.preset = args.preset or ("igpt_s" if cuda else "cpu")
    args.batch_size = args.batch_size or (32 if cuda else 4)
    args.steps = args.steps or (10 if cuda else 1)
    args.sample_tokens = args.sample_tokens or (512 if cuda else 32)
    args.sample_batch = args.sample_batch or (8 if cuda else 2)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build(args).to(device)
    size = f"width {model.embed_dim}, {model.depth} layers, {model.num_heads} heads, 32x32"
    size += f", {model.vocab_size} colours"
    label = args.preset if args.preset != "cpu" else "CPU-sized"
    sample = sampling_rates(model, args, device)
    del model
    train = training_rates(args, device)

    hardware = (
        torch.cuda.get_device_name()
        if cuda
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    speedup = statistics.median(sample["cache"]) / statistics.median(sample["recompute"])
    speedup_prefix = statistics.median(sample["cache_with_prefix"]) / statistics.median(sample["recompute"])
    ratio = statistics.median(train["vtrain"]) / statistics.median(train["transformers"])
    rows = ["| | median | min-max |", "|---|---:|---:|"]
    for name, label_ in (
        ("cache", "sampling with the KV cache, after its prefix pass (tokens/s)"),
        ("cache_with_prefix", "sampling with the KV cache, prefix pass included (tokens/s)"),
        ("recompute", "sampling, prefix recomputed at every token (tokens/s)"),
    ):
        r = sample[name]
        rows.append(f"| {label_} | {statistics.median(r):.1f} | {min(r):.1f}-{max(r):.1f} |")
    for name, label_ in (
        ("vtrain", "training, vtrain `ImageGPT` (img/s)"),
        ("transformers", "training, transformers `ImageGPTForCausalImageModeling` (img/s)"),
    ):
        r = train[name]
        rows.append(f"| {label_} | {statistics.median(r):.2f} | {min(r):.2f}-{max(r):.2f} |")
    command = " ".join(["python scripts/bench.py igpt", *argv])
    intro = (
        f"{label} model ({size}) on {hardware}, {args.precision}; torch {torch.__version__}; "
        f"{args.rounds} rounds. Sampling: batch {args.sample_batch}, completing positions "
        f"512-{511 + args.sample_tokens} from the top half (same tokens drawn by both samplers): "
        f"**KV cache {speedup:.1f}x faster per token** ({speedup_prefix:.1f}x with its one pass over the "
        f"512-token prefix counted). Training: batch {args.batch_size}, {args.steps} steps per "
        f"round, next-pixel loss, AdamW: **vtrain / transformers throughput {ratio:.2f}**."
    )
    body = f"Written by `{command}`.\n\n{intro}\n\n" + "\n".join(rows) + "\n"
    print(body)
    if args.output:
        bench.write_section(args.output, TITLE, body)
