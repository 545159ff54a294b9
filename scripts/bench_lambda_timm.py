"""vtrain's lambda layer and LambdaResNet-50 against timm's, run through scripts/bench.py:

    python scripts/bench.py lambda_timm --output docs/benchmarks.md
    python scripts/bench.py lambda_timm --profile   # torch.profiler table of vtrain's layer at 56 x 56

1. The layer, forward + backward, with the same weights where the configurations match: |u| = 1, stride 1,
   a lambda convolution (timm's bias zeroed: the paper's position lambdas have none), |k| = 16, 4 heads,
   r = 23 (the paper's) and r = 9 (timm's default); checked to give the same output first.
2. A training step (cross-entropy, backward, AdamW) of vtrain's `lambda_resnet50` (the paper's: every 3x3
   convolution a lambda layer, r = 23) and of timm's closest model, `lambda_resnet50ts` (lambda layers,
   r = 9, in the last two stages only, a tiered stem and SiLU): not the same network, so that ratio says
   what a user gets from each, not which layer is faster.

The contenders alternate within each round.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import bench
import torch
from torch import nn

TITLE = "LambdaNetworks: vtrain against timm"
LAYER_CASES = ((28, 23), (56, 23), (56, 9))  # (feature map side, lambda convolution size r)


def layer_pair(dim: int, size: int, r: int, heads: int = 4, dim_k: int = 16) -> tuple[nn.Module, nn.Module]:
    """vtrain's LambdaLayer holding the weights of a random timm LambdaLayer (qkv split, Conv3d kernel
    squeezed to 2-D, lambda-convolution bias zeroed)."""
    from timm.layers.lambda_layer import LambdaLayer as TimmLambdaLayer

    from vtrain.models.lambda_resnet import LambdaLayer

    torch.manual_seed(0)
    theirs = TimmLambdaLayer(dim, dim, feat_size=(size, size), stride=1, num_heads=heads, dim_head=dim_k, r=r)
    with torch.no_grad():
        theirs.conv_lambda.bias.zero_()
    ours = LambdaLayer(dim, dim, dim_k=dim_k, heads=heads, dim_u=1, r=r)
    q, k, v = theirs.qkv.weight.split([heads * dim_k, dim_k, dim // heads])
    weights = {"to_q.weight": q, "to_k.weight": k, "to_v.weight": v}
    weights["lambda_conv.weight"] = theirs.conv_lambda.weight.squeeze(-1)  # [k, 1, r, r, 1] -> [k, 1, r, r]
    for name in ("norm_q", "norm_v"):
        weights |= {f"{name}.{key}": t for key, t in getattr(theirs, name).state_dict().items()}
    ours.load_state_dict(weights)
    return ours, theirs


def layer_step(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        layer(x).square().mean().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    return step


def resnet_steps(args: argparse.Namespace, device: torch.device) -> dict[str, Callable[[], None]]:
    import timm

    import vtrain

    torch.manual_seed(0)
    images = torch.randn(args.resnet_batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 1000, (args.resnet_batch_size,), device=device)
    models = {
        "vtrain": vtrain.create_model("lambda_resnet50"),
        "timm": timm.create_model("lambda_resnet50ts"),
    }
    return {
        name: bench.train_step(m, device, "fp32", lambda mm: nn.functional.cross_entropy(mm(images), labels))
        for name, m in models.items()
    }


def profile(args: argparse.Namespace, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    ours, _ = layer_pair(args.dim, 56, 23)
    x = torch.randn(args.batch_size, args.dim, 56, 56, device=device, requires_grad=True)
    step = layer_step(ours.to(device).train(), x)
    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py lambda_timm", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2, help="layer benchmark batch")
    parser.add_argument("--resnet-batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed layer steps per round")
    parser.add_argument("--skip-resnets", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write the section to")
    return parser.parse_args(argv)


def median_ratio(rates: dict[str, list[float]]) -> float:
    return statistics.median(rates["vtrain"]) / statistics.median(rates["timm"])


def main(argv: list[str]) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.profile:
        print(profile(args, device))
        return
    rows = [
        "| feature map | r | vtrain img/s | timm img/s | vtrain / timm | largest abs. difference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for size, r in LAYER_CASES:
        ours, theirs = (m.to(device).train() for m in layer_pair(args.dim, size, r))
        x = torch.randn(args.batch_size, args.dim, size, size, device=device, requires_grad=True)
        with torch.no_grad():
            difference = (ours(x) - theirs(x)).abs().max().item()
        found = {"vtrain": layer_step(ours, x), "timm": layer_step(theirs, x)}
        for step in found.values():
            step()
        rates = bench.alternating_rates(found, args.rounds, args.steps, args.batch_size)
        ours_rate, theirs_rate = (statistics.median(rates[n]) for n in ("vtrain", "timm"))
        rows.append(
            f"| {size}x{size} | {r} | {ours_rate:.2f} | {theirs_rate:.2f} | {median_ratio(rates):.2f} | "
            f"{difference:.1e} |"
        )
        print(rows[-1], flush=True)
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} thread(s)"
    )
    body = (
        f"Written by `python scripts/bench.py lambda_timm {' '.join(argv)}` on {where}; torch "
        f"{torch.__version__}; fp32; {args.rounds} rounds, vtrain and timm alternating within each.\n\n"
        f"The lambda layer, forward + backward in training mode, batch {args.batch_size}, width {args.dim}, "
        f"|k| = 16, 4 heads, |u| = 1, the same weights (timm.layers.LambdaLayer, its lambda-convolution "
        f"bias zeroed), {args.steps} steps per round:\n\n" + "\n".join(rows) + "\n"
    )
    if not args.skip_resnets:
        found = resnet_steps(args, device)
        for step in found.values():
            step()
        rates = bench.alternating_rates(found, args.rounds, 1, args.resnet_batch_size)
        body += (
            f"\nTraining step (cross-entropy, backward, AdamW) at {args.image_size} px, batch "
            f"{args.resnet_batch_size}: vtrain `lambda_resnet50` (the paper's, lambda layers everywhere, "
            f"r = 23) {statistics.median(rates['vtrain']):.2f} img/s, timm `lambda_resnet50ts` (lambda "
            f"layers in the last two stages, r = 9) {statistics.median(rates['timm']):.2f} img/s: "
            f"{median_ratio(rates):.2f}. Not the same network (see scripts/bench_lambda_timm.py).\n"
        )
    print(body)
    if args.output:
        bench.write_section(args.output, TITLE, body)
