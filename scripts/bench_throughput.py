"""Training throughput and peak memory of each family against what a user could install instead, run
through scripts/bench.py (scripts/gpu_check.sh runs it for every family on a GPU):

    python scripts/bench.py throughput --family vit --combos fp32 bf16 bf16+compile --jsonl out.jsonl
    python scripts/bench.py throughput --family detr --toy --device cpu      # toy sizes, to check it runs

Each combination of precision and compilation times the contenders of one family (vtrain's model first,
then the references installed from the package registries) on the same random batch, alternating within
each round, full optimizer steps (forward, loss, backward, AdamW) as bench.train_step does. One JSON line
per contender and combination goes to ``--jsonl`` as soon as it is measured (scripts/gpu_check.py turns
them into the GPU tables of docs/benchmarks.md). A contender that fails (a reference not installed, a
compile error) gets an ``error`` line and the others go on.

Peak memory: ``torch.cuda.max_memory_allocated`` over the warm-up steps minus what was allocated before
the contender was built; not measured on CPU (bench.py's fresh-process measurement is for that).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import bench
import torch
import torch.nn.functional as F
from torch import nn

# per family: batch and image size (GPU, --toy), the sizes users train at (DETR and FPT: a short side)
SIZES = {
    "vit": {"gpu": (128, 224), "toy": (2, 32)},
    "igpt": {"gpu": (16, 32), "toy": (2, 8)},
    "detr": {"gpu": (8, 800), "toy": (1, 96)},
    "lambda": {"gpu": (64, 224), "toy": (2, 64)},
    "ttsr": {"gpu": (9, 160), "toy": (1, 32)},
    "fpt": {"gpu": (2, 800), "toy": (1, 96)},
}
# a CPU-sized iGPT for --toy (the GPU runs the paper's iGPT-S at 32 x 32)
TOY_IGPT = dict(embed_dim=64, depth=2, num_heads=2)

Contender = tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]


def vit(name: str, batch: int, size: int, device: torch.device) -> Contender:
    if name == "vtrain vit_s16":
        import vtrain

        model = vtrain.create_model("vit_s16", img_size=size)
    else:
        import timm

        model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=size)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    return model, lambda m: F.cross_entropy(m(images), labels)


def igpt(name: str, batch: int, size: int, device: torch.device, toy: bool) -> Contender:
    import vtrain

    ours = vtrain.create_model("igpt_s", img_size=size, **(TOY_IGPT if toy else {}))
    tokens = torch.randint(0, ours.vocab_size, (batch, ours.seq_len), device=device)
    if name == "vtrain igpt_s":
        return ours, lambda m: F.cross_entropy(m(tokens).transpose(1, 2), tokens)
    from transformers import ImageGPTConfig, ImageGPTForCausalImageModeling

    config = ImageGPTConfig(
        vocab_size=ours.vocab_size + 1, n_positions=ours.seq_len, n_embd=ours.embed_dim, n_layer=ours.depth,
        n_head=ours.num_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    inputs = torch.cat([torch.full_like(tokens[:, :1], ours.vocab_size), tokens[:, :-1]], dim=1)  # SOS first
    model = ImageGPTForCausalImageModeling(config)
    return model, lambda m: F.cross_entropy(m(input_ids=inputs).logits.transpose(1, 2), tokens)


def detr(name: str, batch: int, size: int, device: torch.device) -> Contender:
    """DETR R50 with auxiliary losses at COCO sizes (short side `size`, the two aspect ratios of bench.py)."""
    from vtrain.data.coco import pad_images

    sizes = [(size, round(size * w / h)) for h, w in bench.DETR_SIZES]
    images, mask = pad_images([torch.randn(3, *sizes[i % 2]) for i in range(batch)])
    images, mask = images.to(device), mask.to(device)
    targets = bench.detr_targets(batch, 7, device)
    if name == "vtrain detr_r50":
        from vtrain.models.detr import SetCriterion, detr_r50

        model, criterion = detr_r50(backbone_weights="scratch"), SetCriterion(num_classes=91).to(device)

        def loss(m: nn.Module) -> torch.Tensor:
            losses = criterion(m(images, mask), targets)
            return sum(losses[k] * w for k, w in criterion.weight_dict.items())

        return model, loss
    from transformers import DetrConfig, DetrForObjectDetection

    model = DetrForObjectDetection(
        DetrConfig(use_pretrained_backbone=False, num_labels=91, auxiliary_loss=True)
    )
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    pixel_mask = (~mask).long()  # transformers: 1 on pixels, vtrain: True on padding
    return model, lambda m: m(pixel_values=images, pixel_mask=pixel_mask, labels=labels).loss


def optimizer_for(name: str) -> Callable[[nn.Module], torch.optim.Optimizer] | None:
    """The optimizer a contender trains with where it is not bench.train_step's default AdamW: DETR's
    from vtrain's detection task (fused AdamW) and from transformers' Trainer (fused with torch >= 2.8)."""
    import bench_detr_vs

    return {
        "vtrain detr_r50": bench_detr_vs.vtrain_optimizer,
        "transformers DetrForObjectDetection": bench_detr_vs.transformers_optimizer,
    }.get(name)


def lambda_resnet(name: str, batch: int, size: int, device: torch.device) -> Contender:
    if name == "vtrain lambda_resnet50":
        import vtrain

        model = vtrain.create_model("lambda_resnet50")
    elif name == "timm lambda_resnet50ts":
        import timm

        model = timm.create_model("lambda_resnet50ts", pretrained=False, img_size=size)
    else:
        import torchvision

        model = torchvision.models.resnet50()
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    return model, lambda m: F.cross_entropy(m(images), labels)


def ttsr(name: str, batch: int, size: int, device: torch.device) -> Contender:
    """The TTSR-rec step (L1 reconstruction) at the CUFED training size; no installable reference."""
    import vtrain
    from vtrain.models.ttsr.losses import reconstruction_loss

    model = vtrain.create_model("ttsr", vgg_weights="scratch")
    g = torch.Generator().manual_seed(0)
    lr, lr_up, hr, ref, rdu = (
        (torch.rand(batch, 3, s, s, generator=g) * 2 - 1).to(device)
        for s in (size // 4, size, size, size, size)
    )
    return model, lambda m: reconstruction_loss(m(lr, lr_up, ref, rdu).sr, hr)


def fpt(name: str, batch: int, size: int, device: torch.device) -> Contender:
    """Mask R-CNN R50 with the FPT neck and without it (plain FPN); no installable FPT reference."""
    import vtrain

    model = vtrain.create_model(
        name.split()[-1], backbone_weights="scratch", min_size=size, max_size=int(size * 1333 / 800)
    )
    g = torch.Generator().manual_seed(0)
    height, width = size, int(size * 1.5)
    images = [torch.rand(3, height, width, generator=g).to(device) for _ in range(batch)]
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 10 : height // 2, 20 : width // 2] = 1
    masks[1, height // 3 :, width // 3 :] = 1
    boxes = torch.tensor([[20, 10, width // 2, height // 2], [width // 3, height // 3, width, height]])
    target = {"boxes": boxes.float().to(device), "labels": torch.tensor([1, 5], device=device)}
    targets = [{**target, "masks": masks.to(device)} for _ in range(batch)]
    return model, lambda m: sum(m(images, targets).values())


# family -> contenders (vtrain's first: the ratios are vtrain / each reference) and the builder
FAMILIES: dict[str, tuple[tuple[str, ...], Callable[..., Contender]]] = {
    "vit": (("vtrain vit_s16", "timm vit_small_patch16_224"), vit),
    "igpt": (("vtrain igpt_s", "transformers ImageGPTForCausalImageModeling"), igpt),
    "detr": (("vtrain detr_r50", "transformers DetrForObjectDetection"), detr),
    "lambda": (("vtrain lambda_resnet50", "timm lambda_resnet50ts", "torchvision resnet50"), lambda_resnet),
    "ttsr": (("vtrain ttsr",), ttsr),
    "fpt": (("vtrain fpt_maskrcnn_r50", "vtrain maskrcnn_r50"), fpt),
}


def build(family: str, name: str, batch: int, size: int, device: torch.device, toy: bool) -> Contender:
    _, builder = FAMILIES[family]
    return builder(name, batch, size, device, toy) if family == "igpt" else builder(name, batch, size, device)


def measure(args: argparse.Namespace, combo: str, write: Callable[[dict], None]) -> None:
    """Time every contender of args.family in one precision (+compile), alternating within each round."""
    precision, _, compiled = combo.partition("+")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    names, _ = FAMILIES[args.family]
    common = {
        "family": args.family, "precision": precision, "compile": bool(compiled), "batch": args.batch_size,
        "size": args.size, "device": torch.cuda.get_device_name() if cuda else "cpu",
    }  # fmt: skip
    steps, peaks = {}, {}
    for name in names:
        torch.manual_seed(0)
        try:
            if cuda:
                torch.cuda.empty_cache()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            model, loss = build(args.family, name, args.batch_size, args.size, device, args.toy)
            step = bench.train_step(
                model,
                device,
                precision,
                loss,
                compile=bool(compiled),
                backend=args.backend,
                optimizer=optimizer_for(name),
            )
            start = time.perf_counter()
            for _ in range(args.warmup):
                step()
            common_warmup = time.perf_counter() - start
            steps[name] = step
            peaks[name] = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None
            print(f"{args.family} {combo} {name}: warm-up {common_warmup:.1f} s", flush=True)
        except Exception as error:  # one contender failing (not installed, compile error) leaves the rest
            traceback.print_exc()
            write({**common, "name": name, "error": f"{type(error).__name__}: {error}"[:300]})
    rates = bench.alternating_rates(steps, args.rounds, args.steps, args.batch_size)
    for name, found in rates.items():
        rate = {"img_s": statistics.median(found), "min": min(found), "max": max(found)}
        write(
            {
                **common,
                "name": name,
                **rate,
                "rounds": args.rounds,
                "steps": args.steps,
                "peak_mib": peaks[name],
            }
        )
    del steps
    if cuda:
        torch.cuda.empty_cache()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python scripts/bench.py throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--combos", nargs="+", default=["fp32", "bf16", "bf16+compile"], help="fp32 | bf16, +compile"
    )
    parser.add_argument("--toy", action="store_true", help="CPU-sized batches and images")
    parser.add_argument("--batch-size", type=int, default=None, help="default: SIZES (GPU or --toy)")
    parser.add_argument("--size", type=int, default=None, help="image side (DETR, FPT: short side)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (10 / 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation happens here)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (--toy: eager)")
    parser.add_argument("--jsonl", type=Path, default=None, help="file to append one JSON line per result")
    args = parser.parse_args(argv)
    batch, size = SIZES[args.family]["toy" if args.toy else "gpu"]
    args.batch_size, args.size = args.batch_size or batch, args.size or size
    args.steps = args.steps or (1 if args.toy else 10)
    if args.toy and args.backend == "inductor":
        args.backend = "eager"  # compiling C++ kernels for toy CPU models costs minutes and proves nothing
    for combo in args.combos:
        if combo.partition("+")[0] not in ("fp32", "bf16") or combo.partition("+")[2] not in ("", "compile"):
            parser.error(f"--combos: expected fp32, bf16, fp32+compile or bf16+compile, got {combo!r}")

    def write(result: dict) -> None:
        line = json.dumps(result)
        print(line, flush=True)
        if args.jsonl:
            with args.jsonl.open("a") as f:
                f.write(line + "\n")

    for combo in args.combos:
        measure(args, combo, write)


if __name__ == "__main__":
    main(sys.argv[1:])
