"""DETR R50 training step against the official code and transformers, run through scripts/bench.py:

    python scripts/bench.py detr_vs --reference-dir /tmp/detr --output docs/benchmarks.md
    python scripts/bench.py detr_vs --profile vtrain   # torch.profiler table of one vtrain step

With ``--reference-dir`` (a checkout of https://github.com/facebookresearch/detr, not a package: ``git
clone https://github.com/facebookresearch/detr``) the official ``models.detr.DETR`` + ``SetCriterion`` +
``HungarianMatcher`` hold vtrain's weights (the module names are the same) and are checked to give the same
outputs first. transformers' ``DetrForObjectDetection`` (timm ResNet-50, its own loss) runs when installed.
Every contender does the full step: forward, Hungarian matching, set criterion with the auxiliary losses
of the 5 first decoder layers, backward, and the optimizer step each would train with (lr 1e-4, backbone
1e-5, weight decay 1e-4), the contenders alternating within each round. Random weights and images;
dropout on, as in training.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import types
from collections.abc import Callable
from pathlib import Path

import bench
import torch
from torch import nn

TITLE = "DETR R50 training step against facebookresearch/detr and transformers"
# facebookresearch/detr at the commit these numbers were taken against
OFFICIAL_COMMIT = "29901c51d7fe8712168b8d0d64351170bc0f83e0"
SIZES = ((512, 683), (512, 600))  # (height, width) of the two images; the second is padded


def batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    from vtrain.data.coco import pad_images

    g = torch.Generator().manual_seed(0)
    images, mask = pad_images([torch.randn(3, h, w, generator=g) for h, w in SIZES])
    return images.to(device), mask.to(device), bench.detr_targets(len(SIZES), 7, device)


def vtrain_detr() -> tuple[nn.Module, nn.Module]:
    from vtrain.models.detr import SetCriterion, detr_r50

    return detr_r50(backbone_weights="scratch"), SetCriterion(num_classes=91)


def official_detr(reference_dir: Path, weights: dict[str, torch.Tensor]) -> tuple[nn.Module, nn.Module, type]:
    """The official DETR R50 as its main.py builds it for COCO training (aux_loss on, costs 1 / 5 / 2,
    eos_coef 0.1), holding ``weights``. Its Backbone asks torchvision for ImageNet weights on the main
    process (a download): built as on a non-main rank instead, then overwritten by ``weights``."""
    if not (reference_dir / "models" / "detr.py").is_file():
        raise FileNotFoundError(
            f"--reference-dir {reference_dir}: no models/detr.py (expected facebookresearch/detr)"
        )
    sys.path.insert(0, str(reference_dir))
    import models.backbone as official_backbone
    from models.detr import DETR, SetCriterion
    from models.matcher import HungarianMatcher
    from models.position_encoding import PositionEmbeddingSine
    from models.transformer import Transformer
    from util.misc import NestedTensor

    official_backbone.is_main_process = lambda: False
    backbone = official_backbone.Backbone("resnet50", True, False, False)
    joiner = official_backbone.Joiner(backbone, PositionEmbeddingSine(128, normalize=True))
    joiner.num_channels = backbone.num_channels
    transformer = Transformer(d_model=256, return_intermediate_dec=True)
    model = DETR(joiner, transformer, num_classes=91, num_queries=100, aux_loss=True)
    model.load_state_dict(weights)
    weight_dict = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}
    weight_dict.update({f"{k}_{i}": v for i in range(5) for k, v in list(weight_dict.items())})
    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    criterion = SetCriterion(91, matcher, weight_dict, 0.1, ["labels", "boxes", "cardinality"])
    return model, criterion, NestedTensor


def transformers_detr() -> nn.Module:
    """transformers' DetrForObjectDetection with DETR R50's configuration, random weights."""
    import transformers

    config = transformers.DetrConfig(num_labels=91, auxiliary_loss=True, use_pretrained_backbone=False)
    return transformers.DetrForObjectDetection(config)


def vtrain_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of vtrain's detection task (conf/task/detection.yaml) over DetectionTask's groups."""
    import hydra
    from omegaconf import OmegaConf

    from vtrain.config import config_dir
    from vtrain.tasks.detection import DetectionTask

    task = OmegaConf.load(Path(config_dir()) / "task" / "detection.yaml")
    holder = types.SimpleNamespace(model=model, backbone_lr=task.backbone_lr, weight_decay=task.weight_decay)
    return hydra.utils.instantiate(task.optimizer)(DetectionTask.param_groups(holder))


def official_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The official main.py:131-139: AdamW, lr 1e-4, backbone 1e-5, weight decay 1e-4."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if "backbone" not in n]},
        {"params": [p for n, p in named if "backbone" in n], "lr": 1e-5},
    ]
    return torch.optim.AdamW(groups, lr=1e-4, weight_decay=1e-4)


def transformers_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """What transformers' Trainer builds by default with torch >= 2.8 (optim="adamw_torch_fused"), at
    DETR's rates."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if "backbone" not in n]},
        {"params": [p for n, p in named if "backbone" in n], "lr": 1e-5},
    ]
    return torch.optim.AdamW(groups, lr=1e-4, weight_decay=1e-4, fused=True)


def models(args: argparse.Namespace, device: torch.device, names: tuple[str, ...]) -> dict[str, tuple]:
    """name -> (model, loss of the model on the bench batch, optimizer factory); the official model holds
    vtrain's weights."""
    images, mask, targets = batch(device)
    torch.manual_seed(0)
    model, criterion = vtrain_detr()
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    def set_loss(c: nn.Module, forward: Callable) -> Callable:
        c.to(device)

        def loss(m: nn.Module) -> torch.Tensor:
            losses = c(forward(m), targets)
            return sum(losses[k] * w for k, w in c.weight_dict.items())

        return loss

    found = {}
    if "vtrain" in names:
        found["vtrain"] = (model, set_loss(criterion, lambda m: m(images, mask)), vtrain_optimizer)
    if "official" in names and args.reference_dir:
        official, official_criterion, nested_tensor = official_detr(args.reference_dir, weights)
        samples = nested_tensor(images, mask)
        found["official"] = (official, set_loss(official_criterion, lambda m: m(samples)), official_optimizer)
    if "transformers" in names and importlib.util.find_spec("transformers"):
        labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
        pixel_mask = (~mask).long()

        def hf_loss(m: nn.Module) -> torch.Tensor:
            return m(pixel_values=images, pixel_mask=pixel_mask, labels=labels).loss

        found["transformers"] = (transformers_detr(), hf_loss, transformers_optimizer)
    return found


def steps(args: argparse.Namespace, device: torch.device, names: tuple[str, ...]) -> dict[str, Callable]:
    """name -> one training step (forward, matching, losses, backward, optimizer) on the same batch."""
    return {
        name: bench.train_step(model, device, "fp32", loss, optimizer=optimizer)
        for name, (model, loss, optimizer) in models(args, device, names).items()
    }


def largest_difference(args: argparse.Namespace) -> float:
    """Largest absolute difference of vtrain's and the official outputs (eval mode, same weights, non-trivial
    frozen BatchNorm statistics), all decoder layers' logits and boxes."""
    torch.manual_seed(0)
    model, _ = vtrain_detr()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                buffer.copy_(torch.randn(buffer.shape, generator=g) * 0.1)
    official, _, nested_tensor = official_detr(args.reference_dir, model.state_dict())
    images, mask, _ = batch(torch.device("cpu"))
    with torch.no_grad():
        ours, theirs = model.eval()(images, mask), official.eval()(nested_tensor(images, mask))
    pairs = [(ours, theirs), *zip(ours["aux_outputs"], theirs["aux_outputs"], strict=True)]
    return max((a[k] - b[k]).abs().max().item() for a, b in pairs for k in ("pred_logits", "pred_boxes"))


def profile(args: argparse.Namespace, name: str) -> str:
    """torch.profiler table (self CPU time) of one training step after a warm-up step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = steps(args, torch.device(args.device), (name,))[name]
    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py detr_vs", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reference-dir", type=Path, default=None, help="a facebookresearch/detr checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", default=None, help="print a profile of one step of this contender")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write the section to")
    args = parser.parse_args(argv)
    if args.reference_dir and not (args.reference_dir / "models" / "detr.py").is_file():
        raise SystemExit(
            f"--reference-dir {args.reference_dir}: no models/detr.py (a facebookresearch/detr checkout)"
        )
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.profile:
        print(profile(args, args.profile))
        return
    difference = largest_difference(args) if args.reference_dir else None
    found = steps(args, device, ("vtrain", "official", "transformers"))
    for step in found.values():
        for _ in range(args.warmup):
            step()
    rates = bench.alternating_rates(found, args.rounds, 1, len(SIZES))
    labels = {
        "vtrain": "vtrain `detr_r50`, conf/task/detection.yaml's optimizer (fused AdamW)",
        "official": f"facebookresearch/detr {OFFICIAL_COMMIT[:7]} (its main.py's AdamW)",
        "transformers": "transformers `DetrForObjectDetection` (timm R50; Trainer's default fused AdamW)",
    }
    rows = [
        "| implementation | img/s (median of rounds) | min-max | vtrain / it: median of the rounds' ratios |",
        "|---|---:|---:|---:|",
    ]
    for name, r in rates.items():
        # within a round the contenders ran back to back: their ratio is what the machine's drift spares
        paired = statistics.median(a / b for a, b in zip(rates["vtrain"], r, strict=True))
        ratio = f"{paired:.2f}" if name != "vtrain" else ""
        rows.append(f"| {labels[name]} | {statistics.median(r):.3f} | {min(r):.3f}-{max(r):.3f} | {ratio} |")
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    same = (
        f" vtrain and the official code hold the same weights; the largest absolute difference of their "
        f"outputs (eval mode, all 6 decoder layers' logits and boxes) is {difference:.1e}."
        if difference is not None
        else ""
    )
    sizes = " and ".join(f"{h} x {w}" for h, w in SIZES)
    body = (
        f"Written by `python scripts/bench.py detr_vs {' '.join(argv)}`.\n\n"
        f"Training step (forward, Hungarian matching, set criterion with the auxiliary losses, backward, "
        f"optimizer step) of DETR R50, batch 2 ({sizes}, padded), 7 targets per image, fp32, on {where}; "
        f"torch {torch.__version__}; {args.rounds} rounds of one step, the implementations alternating "
        f"within each round.{same}\n\n" + "\n".join(rows) + "\n"
    )
    print(body)
    if args.output:
        bench.write_section(args.output, TITLE, body)
