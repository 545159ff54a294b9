"""`mode=flops`: the parameters and the FLOPs of one forward pass of the experiment's model, per top-level
module, counted by torch's own `torch.utils.flop_counter.FlopCounterMode` on CPU, in eval mode, batch 1.

Only the model is built (no data is read), and it is given a dummy input of its family's shape at the
experiment's size: images [1, 3, H, W] (ViT, LambdaResNet: `data.image_size`; DETR, with an all-False
padding mask: `data.eval_size` x `data.max_size`, 800 x 1333 on COCO; Mask R-CNN: the model's own
`min_size` x `max_size`; segmentation: `data.crop_size`), iGPT palette tokens [1, img_size ** 2], TTSR an
LR image and a reference (HR and reference `data.ref_size` square). `flops_image_size=[H, W]` sets another
size (TTSR: of the HR output and the reference; the LR input is a quarter of it).

FlopCounterMode counts a multiply-add as 2 FLOPs. The papers' "FLOPs" (DETR's 86 G, DeiT's 17.6 G for
ViT-B/16) are multiply-adds, so both are reported: GMACs = GFLOPs / 2 is the number to compare with them.
What is counted is what runs: attention is the full [L, S] product also under a causal mask (iGPT), and
at the widths the kernel is given (the FPT zero-pads queries and keys to the value width); Mask R-CNN's
RoI heads work on the proposals and detections of its (random) weights on random pixels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from vtrain.io import atomic_write_text
from vtrain.models.detr.model import DETR
from vtrain.models.detr.segmentation import DETRPanoptic
from vtrain.models.igpt.model import ImageGPT
from vtrain.models.ttsr.model import TTSR


def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's formula for the fused attention kernels (q k^T and attn v), for the CPU one that torch's
# registry leaves out: without it `F.scaled_dot_product_attention` counts 0 on CPU
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop}

# what FlopCounterMode calls the model's own operations and parameters (not inside any child module)
OWN = "(own)"


@dataclass
class ModuleCount:
    params: int
    flops: int

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9


@dataclass
class FlopReport:
    """Parameters and FLOPs (a multiply-add = 2) of one forward pass, in total and per top-level module."""

    params: int
    flops: int
    modules: dict[str, ModuleCount] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        def entry(count: ModuleCount) -> dict[str, Any]:
            return {**asdict(count), "gflops": count.flops / 1e9, "gmacs": count.gmacs}

        return {
            **entry(ModuleCount(self.params, self.flops)),
            "modules": {k: entry(v) for k, v in self.modules.items()},
        }


def count_flops(model: nn.Module, *inputs: Any) -> FlopReport:
    """Run `model(*inputs)` once under FlopCounterMode; per top-level child module its parameters and FLOPs,
    and under `(own)` what the model holds and computes outside its children.

    The weights stop requiring gradients (instead of `torch.no_grad`, under which the counter's module
    tracker fails on views of parameters)."""
    model.requires_grad_(False)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        model(*inputs)
    counts = {name: sum(per_op.values()) for name, per_op in counter.get_flop_counts().items()}

    def flops_in(module: nn.Module, name: str) -> int:
        # a container that is iterated rather than called (nn.ModuleList) is never seen by the counter:
        # its FLOPs are those of its members
        if name in counts:
            return counts[name]
        return sum(flops_in(child, f"{name}.{key}") for key, child in module.named_children())

    root = type(model).__name__
    modules = {
        name: ModuleCount(sum(p.numel() for p in child.parameters()), flops_in(child, f"{root}.{name}"))
        for name, child in model.named_children()
    }
    params = sum(p.numel() for p in model.parameters())
    flops = counter.get_total_flops()
    own = ModuleCount(
        params - sum(m.params for m in modules.values()), flops - sum(m.flops for m in modules.values())
    )
    if own.params or own.flops:
        modules[OWN] = own
    return FlopReport(params, flops, modules)


def input_size(cfg: DictConfig, model: nn.Module) -> tuple[int, int]:
    """[H, W] of the dummy image: `flops_image_size`, else the size the experiment evaluates at."""
    if cfg.get("flops_image_size"):
        height, width = cfg.flops_image_size
        return int(height), int(width)
    if isinstance(model, GeneralizedRCNN):  # the detector resizes its input to its eval size itself
        transform = model.transform
        # Detectron's TEST.SCALE where the model has one, else torchvision's eval size, min_size[-1]
        short_side = getattr(transform, "test_min_size", transform.min_size[-1])
        return int(short_side), int(transform.max_size)
    data = cfg.data
    if data.get("eval_size"):
        return int(data.eval_size), int(data.max_size)
    if data.get("ref_size"):  # super-resolution: the references' side, also the HR side
        return int(data.ref_size), int(data.ref_size)
    if data.get("crop_size"):  # segmentation: the training crop
        height, width = data.crop_size
        return int(height), int(width)
    return int(data.image_size), int(data.image_size)


def example_inputs(model: nn.Module, size: tuple[int, int]) -> tuple[tuple[Any, ...], str]:
    """A dummy batch of one for `model`'s forward, and a description of it."""
    h, w = size
    image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    if isinstance(model, ImageGPT):
        return (torch.zeros(1, model.seq_len, dtype=torch.long),), f"palette tokens [1, {model.seq_len}]"
    if isinstance(model, TTSR):
        lr = image[..., : h // 4, : w // 4]
        return (
            lr,
            image,
            image,
            image,
        ), f"LR [1, 3, {h // 4}, {w // 4}] (x4: {h} x {w}), reference [1, 3, {h}, {w}]"
    if isinstance(model, (DETR, DETRPanoptic)):
        mask = torch.zeros(1, h, w, dtype=torch.bool)
        return (image, mask), f"images [1, 3, {h}, {w}] and their padding mask [1, {h}, {w}] (no padding)"
    if isinstance(model, GeneralizedRCNN):
        return (
            [image[0]],
        ), f"one image [3, {h}, {w}] (random pixels; the RoI heads' work follows the detections)"
    return (image,), f"images [1, 3, {h}, {w}]"


def flops(cfg: DictConfig) -> None:
    """Print the parameter count and the GFLOPs / GMACs of one forward pass per top-level module; write
    them to `<run dir>/flops.json`."""
    model = instantiate(cfg.model).eval()
    inputs, described = example_inputs(model, input_size(cfg, model))
    report = count_flops(model, *inputs)

    name = cfg.model.get("name") or type(model).__name__
    document = {
        "model": name,
        "experiment": cfg.get("name"),
        "input": described,
        "note": "a multiply-add counts as 2 FLOPs (torch.utils.flop_counter); the papers' 'FLOPs' are GMACs",
        **report.as_dict(),
    }
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "flops.json"
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")

    rows = [(key, count.params, count.flops) for key, count in report.modules.items()]
    rows.append(("total", report.params, report.flops))
    width = max(len(row[0]) for row in rows)
    print(f"{name}, eval mode, batch 1, input {described}")
    print(f"{'module':<{width}}  {'params':>13}  {'GFLOPs':>9}  {'GMACs':>9}")
    for key, params, count in rows:
        print(f"{key:<{width}}  {params:>13,}  {count / 1e9:>9.4f}  {count / 2e9:>9.4f}")
    print(f"(GMACs = multiply-adds, what the papers call FLOPs) -> {path}")
