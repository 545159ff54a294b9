"""Export ViT and DETR for inference: ONNX (onnxruntime, TensorRT, ...) or TorchScript (LibTorch).

    python -m vtrain.export --model vit_s16 --pretrained vit_s16.pth --output vit_s16.onnx --check
    python -m vtrain.export --checkpoint outputs/run/checkpoints/last.ckpt --format onnx \\
        --output detr.onnx --image-size 800 800 --dynamic-batch --check

The model is a preset built by :func:`vtrain.create_model` (``--model``, ``--pretrained``, ``--set KEY=VALUE``
constructor overrides) or rebuilt from a vtrain Lightning checkpoint (``--checkpoint``): the run config that
:class:`vtrain.modes.common.SaveConfig` stores under ``vtrain_config`` gives the model, its ``state_dict``
the weights.
The file is read with ``weights_only=True`` and only model builders of ``vtrain.models`` are instantiated
from its config, so a checkpoint cannot run code.

The exported graphs run in eval mode at a fixed image size (H, W); the batch size is fixed unless
``--dynamic-batch``:

- ViT: ``images`` [B, 3, H, W] float32, normalized as in training -> ``logits`` [B, num_classes] (the pooled
  features [B, D] with ``--set num_classes=0``). H, W is the model's ``img_size`` (another ``--image-size``
  resamples the position embeddings first).
- DETR: ``images`` [B, 3, H, W] float32 and ``mask`` [B, H, W] bool, True on padding ->
  ``pred_logits`` [B, Q, num_classes + 1] (last = no object) and ``pred_boxes`` [B, Q, 4] (cx, cy, w, h in
  [0, 1] of each image's unpadded size); the auxiliary decoder outputs are left out. The mask is an input
  because the graph has one fixed size: an image of any other size is pasted top-left into an H x W canvas,
  and DETR's outputs depend on where the padding is (the sine position encoding counts unpadded cells only,
  attention ignores padded cells), so without the mask padded images would be detected differently than in
  training and evaluation. Unpadded images take an all-False mask.

Exporter (measured on torch 2.15, onnxscript 0.7.2, onnxruntime 1.32, CPU): the default is the torch.export
based one (``dynamo=True``, ``--exporter dynamo``). Both exporters reproduce the eager outputs of ViT and
DETR to ~1e-6; the dynamo one is the maintained path (the TorchScript-based ``dynamo=False`` exporter is
deprecated since torch 2.9), names its dynamic batch dimension ``batch`` and keeps graphs readable, but it
writes opset 18 natively and its down-conversion to opset 17 produced a DETR graph onnxruntime rejects
(``Split`` with the opset-18 ``num_outputs`` attribute), so ``--opset`` below 18 needs
``--exporter legacy``. The legacy exporter runs 2.5-15x faster (DETR-R50 at 800 x 800: 17 s of CPU against
44 s, check included; ``detr_tiny``: 0.7 s against 10 s).
ONNX files are self-contained below 2 GB of weights; larger models (ViT-H/14) keep them in ``FILE.data``.

TorchScript is traced (``torch.jit.trace``; DETR's dict output and ViT's shape check do not script). It is
deprecated in torch 2.15 and offered for existing LibTorch deployments; a traced graph accepts any batch size.

``--check`` (and :func:`check_export`) runs the file with onnxruntime (CPUExecutionProvider) or
``torch.jit.load`` on random inputs (DETR: random bottom/right padding) and compares with the eager model:
max |exported - eager| must stay within ``ATOL[kind] * max(1, max |eager|)``, i.e. float32 reordering
error (1e-4 for ViT logits, 1e-3 for DETR, whose ResNet and 2 x 6 attention layers accumulate more).
With ``--dynamic-batch`` a second batch size is checked too.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from vtrain.checkpoint import fit_state_dict, load_checkpoint
from vtrain.models import create_model
from vtrain.models.detr import DETR
from vtrain.models.pretrained import replaced_by_checkpoint
from vtrain.models.vit import VisionTransformer

logger = logging.getLogger("vtrain.export")  # not "__main__" under python -m

FORMATS = ("onnx", "torchscript")
EXPORTERS = ("dynamo", "legacy")
# float32 tolerance of the check, relative to max(1, max |eager output|)
ATOL = {"classification": 1e-4, "detection": 1e-3}
DETR_IMAGE_SIZE = (800, 800)
# ONNX files are protobufs, limited to 2 GiB; larger weights go to an external data file
ONNX_INLINE_LIMIT = 2**31 - 2**26


class DETRInference(nn.Module):
    """DETR for export: (images, mask) -> (pred_logits, pred_boxes), without the auxiliary outputs."""

    def __init__(self, detr: DETR) -> None:
        super().__init__()
        self.detr = detr

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W], mask [B, H, W] bool (True on padding)
        -> pred_logits [B, Q, num_classes + 1], pred_boxes [B, Q, 4] normalized cx, cy, w, h"""
        out = self.detr(images, mask)
        return out["pred_logits"], out["pred_boxes"]


@dataclass
class ExportSpec:
    """What is exported: the module, its input/output names, kind (key of :data:`ATOL`) and image size."""

    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    kind: str
    image_size: tuple[int, int]


def inference_spec(model: nn.Module, image_size: Sequence[int] | None = None) -> ExportSpec:
    """Wrap ``model`` (put in eval mode) for export at ``image_size`` (H, W).

    ``image_size`` defaults to a ViT's ``img_size`` and to 800 x 800 for DETR; a ViT built for another size
    has its position embeddings resampled (in place).

    Raises:
        ValueError: ``model`` is neither a ViT nor a DETR, or ``image_size`` is not two positive ints.
    """
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise ValueError(f"image size must be two positive ints H W, got {list(image_size)}")
    model.eval()
    if isinstance(model, VisionTransformer):
        size = tuple(image_size) if image_size is not None else model.img_size
        if size != model.img_size:
            logger.info("resampling the ViT position embeddings from %s to %s", model.img_size, size)
            model.set_img_size(size)
        return ExportSpec(model, ["images"], ["logits"], "classification", size)
    if isinstance(model, DETR):
        size = tuple(image_size) if image_size is not None else DETR_IMAGE_SIZE
        module = DETRInference(model).eval()
        return ExportSpec(module, ["images", "mask"], ["pred_logits", "pred_boxes"], "detection", size)
    raise ValueError(f"export supports ViT (VisionTransformer) and DETR models, got {type(model).__name__}")


def random_inputs(
    spec: ExportSpec, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, ...]:
    """Random inputs on the module's device: images [B, 3, H, W] ~ N(0, 1) and, for DETR, a mask [B, H, W]
    with image 0 unpadded and the others padded at the bottom and right by up to half their size."""
    device = next(spec.module.parameters()).device
    h, w = spec.image_size
    images = torch.randn(batch_size, 3, h, w, generator=generator)
    if spec.kind != "detection":
        return (images.to(device),)
    mask = torch.zeros(batch_size, h, w, dtype=torch.bool)
    for i in range(1, batch_size):
        pad_h, pad_w = (int(torch.randint(0, n // 2 + 1, (1,), generator=generator)) for n in (h, w))
        mask[i, h - pad_h :] = True
        mask[i, :, w - pad_w :] = True
    images = images.masked_fill(mask[:, None], 0.0)  # padding is zeros, as vtrain.data pads
    return images.to(device), mask.to(device)


def _check_targets(node: Any, path: Path) -> None:
    """Refuse `_target_`s that are not model builders of vtrain.models: instantiating them from a file
    could call anything (a prefix test is not enough: ``vtrain.export.os.system`` resolves to os.system)."""
    from hydra.utils import get_object

    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None:
            found = None
            if str(target).startswith("vtrain."):  # only vtrain modules are imported to resolve it
                with contextlib.suppress(Exception):
                    found = get_object(str(target))
            if not str(getattr(found, "__module__", "")).startswith("vtrain.models"):
                raise ValueError(
                    f"{path}: vtrain_config.model names _target_ {target!r}; only model builders of "
                    "vtrain.models (e.g. vtrain.create_model) are built from a checkpoint"
                )
        for value in node.values():
            _check_targets(value, path)
    elif isinstance(node, list):
        for value in node:
            _check_targets(value, path)


def model_from_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Rebuild the network of a vtrain Lightning checkpoint from its stored config and load its weights.

    The file (read with ``weights_only=True``) must hold ``vtrain_config`` (the run config, with a ``model``
    node) and ``state_dict`` (the task's, network keys under ``model.``). The weights files of the stored
    config (``pretrained``, ``backbone_weights``, ``vgg_weights``) are ignored: the weights come from the
    checkpoint.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: naming ``path``: unreadable, not a vtrain checkpoint, or the weights do not fit.
    """
    from hydra.utils import instantiate

    path = Path(path)
    checkpoint = load_checkpoint(path)
    config = checkpoint.get("vtrain_config") if isinstance(checkpoint, dict) else None
    state_dict = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if (
        not isinstance(config, dict)
        or not isinstance(config.get("model"), dict)
        or not isinstance(state_dict, dict)
    ):
        found = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is not a vtrain Lightning checkpoint: expected 'vtrain_config' with a 'model' node and "
            f"'state_dict', found {found} (for a bare state dict use --model NAME --pretrained {path})"
        )
    model_config = dict(config["model"])
    _check_targets(model_config, path)
    model_config = replaced_by_checkpoint(model_config)
    try:
        model = instantiate(model_config)
    except Exception as e:
        raise ValueError(f"{path}: cannot build vtrain_config.model ({type(e).__name__}: {e})") from e
    network = {
        k.removeprefix("model."): v
        for k, v in state_dict.items()
        if isinstance(k, str) and k.startswith("model.")
    }
    fit_state_dict(model, network, path)
    return model


def build_model(
    name: str | None = None,
    pretrained: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """The network to export: ``vtrain.create_model(name, pretrained, **overrides)`` or, given
    ``checkpoint``, :func:`model_from_checkpoint` (then ``name``, ``pretrained`` and ``overrides`` must be
    unset)."""
    if checkpoint is not None:
        if name is not None or pretrained is not None or overrides:
            raise ValueError(
                "a checkpoint brings its own model: give either checkpoint or name/pretrained/overrides"
            )
        return model_from_checkpoint(checkpoint)
    if name is None:
        raise ValueError("give a model name (a vtrain preset) or a vtrain checkpoint")
    try:
        return create_model(name, pretrained=pretrained, **(overrides or {}))
    except TypeError as e:  # an override the constructor does not take
        raise ValueError(f"cannot build {name} with overrides {overrides}: {e}") from e


def export_model(
    spec: ExportSpec,
    output: str | os.PathLike,
    format: str = "onnx",
    batch_size: int = 1,
    dynamic_batch: bool = False,
    opset: int = 18,
    exporter: str = "dynamo",
) -> list[Path]:
    """Write ``spec.module`` to ``output`` and return the files written (ONNX weights over 2 GB go to
    ``output.data``).

    Args:
        spec: from :func:`inference_spec`.
        output: the file to write (its folder is created).
        format: ``onnx`` or ``torchscript``.
        batch_size: batch size of the example inputs, and of the graph unless ``dynamic_batch``.
        dynamic_batch: ONNX only: the batch dimension is symbolic (``batch``). Traced TorchScript accepts
            any batch size anyway.
        opset: ONNX opset; the dynamo exporter needs >= 18.
        exporter: ``dynamo`` (torch.export based) or ``legacy`` (TorchScript based) ONNX exporter.

    Raises:
        ValueError: an unknown format or exporter, or an opset the exporter cannot write.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if format == "onnx" and exporter == "dynamo" and opset < 18:
        raise ValueError(
            f"the dynamo ONNX exporter writes opset 18 or newer (its conversion down to {opset} gave invalid "
            "DETR graphs); use --exporter legacy for opset < 18"
        )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    data = output.with_name(output.name + ".data")
    data.unlink(missing_ok=True)  # a weights file left by an earlier export would be reported as ours
    # torch.export specialises a dimension traced at size 1, so a dynamic batch is traced at 2
    example = random_inputs(spec, max(batch_size, 2) if dynamic_batch else batch_size)
    with torch.no_grad(), warnings.catch_warnings():
        # tracing warns that ViT's image-size check and DETR's loop over decoder layers become constants:
        # both are, by design, fixed in an exported graph. torch.jit and the legacy exporter warn they are
        # deprecated (see the module docstring).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based")
        # DETR's two inputs share the one `batch` dimension, which the exporter reports
        warnings.filterwarnings("ignore", category=UserWarning, message="# The axis name: batch")
        if format == "torchscript":
            torch.jit.trace(spec.module, example, check_trace=False).save(str(output))
            return [output]
        large = sum(p.numel() * p.element_size() for p in spec.module.parameters()) > ONNX_INLINE_LIMIT
        kwargs: dict[str, Any] = {}
        if dynamic_batch and exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1)
            kwargs["dynamic_shapes"] = tuple({0: batch} for _ in example)
        elif dynamic_batch:
            kwargs["dynamic_axes"] = {name: {0: "batch"} for name in spec.input_names + spec.output_names}
        torch.onnx.export(
            spec.module,
            example,
            str(output),
            input_names=spec.input_names,
            output_names=spec.output_names,
            opset_version=opset,
            dynamo=exporter == "dynamo",
            external_data=large,
            verbose=False,
            **kwargs,
        )
    return [output, data] if data.is_file() else [output]


def check_export(
    spec: ExportSpec,
    path: str | os.PathLike,
    format: str = "onnx",
    batch_sizes: Sequence[int] = (1,),
    seed: int = 0,
) -> dict[str, float]:
    """Run the exported ``path`` and ``spec.module`` on the same random inputs and compare.

    ONNX runs in onnxruntime (CPUExecutionProvider), TorchScript in ``torch.jit.load`` on the CPU; the eager
    module runs where its parameters are.

    Returns:
        max |exported - eager| per output name over ``batch_sizes``.

    Raises:
        AssertionError: an output has another shape, or a difference exceeds
            ``ATOL[spec.kind] * max(1, max |eager|)``.
    """
    generator = torch.Generator().manual_seed(seed)
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
            feeds = {name: x.cpu().numpy() for name, x in zip(spec.input_names, inputs, strict=True)}
            return [torch.from_numpy(y) for y in session.run(spec.output_names, feeds)]

    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
            scripted = torch.jit.load(str(path), map_location="cpu")

        def run(inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
            out = scripted(*(x.cpu() for x in inputs))
            return list(out) if isinstance(out, tuple) else [out]

    diffs = dict.fromkeys(spec.output_names, 0.0)
    nonzero: set[str] = set()
    for batch_size in batch_sizes:
        inputs = random_inputs(spec, batch_size, generator)
        with torch.no_grad():
            eager = spec.module(*inputs)
            exported = run(inputs)
        eager = eager if isinstance(eager, tuple) else (eager,)
        for name, ref, got in zip(spec.output_names, eager, exported, strict=True):
            ref = ref.float().cpu()
            if got.shape != ref.shape:
                raise AssertionError(
                    f"{path}: output {name} has shape {tuple(got.shape)} at batch size {batch_size}, "
                    f"the eager model gives {tuple(ref.shape)}"
                )
            diff = (got.float() - ref).abs().max().item()
            tolerance = ATOL[spec.kind] * max(1.0, ref.abs().max().item())
            if not diff <= tolerance:
                raise AssertionError(
                    f"{path}: output {name} differs from the eager model by {diff:.3g} at batch size "
                    f"{batch_size} (tolerance {tolerance:.3g})"
                )
            diffs[name] = max(diffs[name], diff)
            nonzero.update([name] if ref.any() else [])
    for name in spec.output_names:
        if name not in nonzero:
            logger.warning(
                "%s: the eager %s are all zero (an untrained head?): nothing was compared", path, name
            )
    return diffs


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vtrain.export",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n" + "\n\n".join(__doc__.split("\n\n")[1:5]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a vtrain preset, e.g. vit_s16, detr_r50 (see vtrain.list_models())")
    source.add_argument("--checkpoint", type=Path, help="a vtrain Lightning checkpoint (.ckpt) to export")
    parser.add_argument("--pretrained", type=Path, help="weights for --model (timm/official/vtrain file)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=_parse_override,
        metavar="KEY=VALUE",
        help="constructor override for --model, e.g. --set num_classes=10 (repeatable; YAML values)",
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", type=Path, required=True, help="file to write (.onnx or .pt)")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size (ViT: img_size; DETR: 800 800)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of the graph (default 1)")
    parser.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension (ONNX)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument(
        "--exporter", choices=EXPORTERS, default="dynamo", help="ONNX exporter: torch.export based or legacy"
    )
    parser.add_argument("--check", action="store_true", help="compare the exported file with the eager model")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and (args.pretrained is not None or args.overrides):
        parser.error("--pretrained and --set go with --model; a --checkpoint brings its own model")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 with a one-line message on errors)."""
    args = parse_args(argv)
    # vtrain's messages only: the ONNX optimizer logs every initializer it merges and op it cannot fold
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    logging.getLogger("vtrain").setLevel(logging.INFO)
    try:
        model = build_model(args.model, args.pretrained, args.checkpoint, dict(args.overrides))
        spec = inference_spec(model, args.image_size)
        files = export_model(
            spec, args.output, args.format, args.batch_size, args.dynamic_batch, args.opset, args.exporter
        )
        size = sum(f.stat().st_size for f in files) / 2**20
        print(f"wrote {', '.join(map(str, files))} ({size:.1f} MiB)")
        if args.check:
            batch_sizes = [args.batch_size]
            if args.dynamic_batch or args.format == "torchscript":
                batch_sizes.append(args.batch_size + 2)
            diffs = check_export(spec, args.output, args.format, batch_sizes)
            shown = ", ".join(f"{name} {diff:.2e}" for name, diff in diffs.items())
            print(f"check passed (batch sizes {batch_sizes}): max abs diff {shown}")
    except (ValueError, FileNotFoundError, AssertionError) as e:
        print(f"vtrain.export: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
