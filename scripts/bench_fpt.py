"""FPT benchmarks, run through scripts/bench.py:

    python scripts/bench.py fpt --output docs/benchmarks.md
    python scripts/bench.py fpt --neck-size 800 1216 --rcnn-size 800      # COCO sizes (slow on a CPU)

1. The neck alone: torchvision's FPN (ResNet-50 stages C2..C5 -> P2..P5, 256 channels) against FPN + FPT,
   forward (inference) on the C2..C5 maps of one ``--neck-size`` image: parameters, median time, and peak
   memory (``torch.cuda.max_memory_allocated`` on CUDA; on CPU the resident-set growth of a fresh child
   process over one forward pass). Also the number of query-key pairs the FPT's attentions score, at this
   size and at COCO's 800 x 1216, which is what its time grows with.
2. Mask R-CNN R50 training throughput with and without the FPT (full SGD steps, frozen BN as in the
   recipe), images resized by the detector to short side ``--rcnn-size``, 2 boxes + masks per image.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import bench
import torch
from torchvision.ops import FeaturePyramidNetwork

TITLE = "FPT: neck against FPN, Mask R-CNN R50 training with and without FPT"
STAGE_CHANNELS = (256, 512, 1024, 2048)
COCO_SIZE = (800, 1216)


def level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Spatial sizes of C2..C5 of a ResNet for a height x width image (strides 4..32, rounded up)."""
    sizes, h, w = [], -(-height // 2), -(-width // 2)
    for _ in range(4):
        h, w = -(-h // 2), -(-w // 2)
        sizes.append((h, w))
    return sizes


def attention_pairs(height: int, width: int) -> int:
    """Query-key pairs scored by the FPT's ST (every level with itself) and global GT (every level with
    every coarser one) for one image."""
    tokens = [h * w for h, w in level_sizes(height, width)]
    return sum(t * t for t in tokens) + sum(tokens[f] * tokens[c] for f in range(4) for c in range(f + 1, 4))


class Neck(torch.nn.Module):
    """C2..C5 -> FPN -> (FPT) -> P2..P5."""

    def __init__(self, fpt: bool) -> None:
        super().__init__()
        from vtrain.models.fpt import FeaturePyramidTransformer

        self.fpn = FeaturePyramidNetwork(list(STAGE_CHANNELS), 256)
        self.fpt = FeaturePyramidTransformer(256, 4) if fpt else None

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        levels = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values())
        return self.fpt(levels) if self.fpt is not None else levels


def neck_inputs(size: tuple[int, int], device: torch.device) -> list[torch.Tensor]:
    return [
        torch.randn(1, c, h, w, device=device)
        for c, (h, w) in zip(STAGE_CHANNELS, level_sizes(*size), strict=True)
    ]


def neck_forward(name: str, size: tuple[int, int], device: torch.device):
    neck = Neck(fpt=name == "fpt").to(device).eval()
    features = neck_inputs(size, device)

    def forward() -> None:
        with torch.no_grad():
            neck(features)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return neck, forward


def neck_memory_mib(name: str, args: argparse.Namespace) -> float:
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        _, forward = neck_forward(name, tuple(args.neck_size), torch.device(args.device))
        torch.cuda.reset_peak_memory_stats()
        forward()
        return torch.cuda.max_memory_allocated() / 2**20
    cmd = [sys.executable, str(Path(bench.__file__)), "fpt", "--child-neck", name, "--neck-size"]
    cmd += [str(s) for s in args.neck_size] + ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def rcnn_step(name: str, args: argparse.Namespace, device: torch.device):
    import vtrain

    model = vtrain.create_model(
        name, backbone_weights="scratch", min_size=args.rcnn_size, max_size=int(args.rcnn_size * 1333 / 800)
    )
    generator = torch.Generator().manual_seed(0)
    height, width = args.rcnn_size, int(args.rcnn_size * 1.5)
    images = [torch.rand(3, height, width, generator=generator, device="cpu").to(device)]
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 10 : height // 2, 20 : width // 2] = 1
    masks[1, height // 3 :, width // 3 :] = 1
    boxes = torch.tensor([[20, 10, width // 2, height // 2], [width // 3, height // 3, width, height]])
    targets = [
        {
            "boxes": boxes.float().to(device),
            "labels": torch.tensor([1, 5], device=device),
            "masks": masks.to(device),
        }
    ]
    model.to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

    def step() -> None:
        loss = sum(model(images, targets).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python scripts/bench.py fpt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--neck-size", type=int, nargs=2, default=[400, 608], metavar=("H", "W"))
    parser.add_argument("--rcnn-size", type=int, default=320, help="short side of the Mask R-CNN images")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before them")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write the section to")
    parser.add_argument("--child-neck", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.child_neck:
        base = bench.peak_rss_kib()
        _, forward = neck_forward(args.child_neck, tuple(args.neck_size), device)
        built = bench.peak_rss_kib()
        forward()
        print(
            json.dumps(
                {"peak_mib": (bench.peak_rss_kib() - built) / 1024, "weights_mib": (built - base) / 1024}
            )
        )
        return

    torch.manual_seed(0)
    h, w = args.neck_size
    rows = ["| neck | parameters | forward ms (median) | peak memory (MiB) |", "|---|---:|---:|---:|"]
    for name, label in (("fpn", "FPN"), ("fpt", "FPN + FPT")):
        neck, forward = neck_forward(name, (h, w), device)
        timed(forward, args.warmup)
        ms = statistics.median(timed(forward, args.repeats)) * 1000
        params = sum(p.numel() for p in neck.parameters())
        rows.append(f"| {label} | {params:,} | {ms:,.0f} | {neck_memory_mib(name, args):,.0f} |")
        del neck, forward
    rcnn = ["| model | images/s (median) | s / step |", "|---|---:|---:|"]
    for name in ("maskrcnn_r50", "fpt_maskrcnn_r50"):
        step = rcnn_step(name, args, device)
        timed(step, args.warmup)
        seconds = statistics.median(timed(step, args.repeats))
        rcnn.append(f"| `{name}` | {1 / seconds:.3f} | {seconds:.2f} |")
        del step
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    pairs, coco_pairs = attention_pairs(h, w), attention_pairs(*COCO_SIZE)
    command = " ".join(["python scripts/bench.py fpt", *(argv if argv is not None else sys.argv[1:])])
    body = (
        f"On {where}; torch {torch.__version__}; median of {args.repeats} repeats after "
        f"{args.warmup} warm-up runs.\n\n"
        f"Neck forward (inference, batch 1) on the ResNet-50 C2..C5 maps of a {h} x {w} image:\n\n"
        + "\n".join(rows)
        + f"\n\nThe FPT's ST and GT score {pairs:,} query-key pairs at {h} x {w} and {coco_pairs:,} at "
        f"{COCO_SIZE[0]} x {COCO_SIZE[1]} ({coco_pairs / pairs:.1f}x): its attention time grows with that "
        "number (fused attention kernels keep memory linear in the number of positions).\n\n"
        f"Mask R-CNN R50 training steps (batch 1, short side {args.rcnn_size}, SGD):\n\n"
        + "\n".join(rcnn)
        + f"\n\nCommand: `{command}`\n"
    )
    print(body)
    if args.output is not None:
        bench.write_section(args.output, TITLE, body)
