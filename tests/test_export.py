"""ONNX / TorchScript export of ViT and DETR, checked against the eager model with onnxruntime."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vtrain.export import build_model, check_export, export_model, inference_spec, main
from vtrain.models import create_model

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
# a 2-block ViT-Ti on 32 x 32 images: 16 patches of 8 x 8
TINY_VIT = dict(img_size=32, patch_size=8, depth=2, num_classes=10)
DETR_SIZE = (64, 96)


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("vit_ti16", **TINY_VIT)
    # the ViT head starts at zero, which would make every logit 0 and the comparison vacuous
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model


def save_vtrain_checkpoint(path: Path, model: torch.nn.Module, model_config: dict) -> None:
    """A minimal checkpoint as vtrain.cli writes it: the task's state dict and the run config."""
    state_dict = {f"model.{k}": v for k, v in model.state_dict().items()}
    state_dict["criterion.empty_weight"] = torch.ones(3)  # task-level keys are not the network's
    torch.save({"state_dict": state_dict, "vtrain_config": {"model": model_config}, "epoch": 3}, path)


def input_shapes(path: Path) -> dict[str, list]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}


def test_vit_onnx_dynamic_batch_matches_eager(tmp_path: Path) -> None:
    spec = inference_spec(tiny_vit())
    files = export_model(spec, tmp_path / "vit.onnx", "onnx", batch_size=2, dynamic_batch=True)
    assert files == [tmp_path / "vit.onnx"]  # small weights stay inside the file
    assert input_shapes(files[0]) == {"images": ["batch", 3, 32, 32]}
    diffs = check_export(spec, files[0], "onnx", batch_sizes=(1, 5))
    assert diffs["logits"] < 1e-4

    # the check fails when the exported graph is not the eager model
    with torch.no_grad():
        spec.module.blocks[1].mlp.fc2.weight.mul_(1.1)
    with pytest.raises(AssertionError, match="logits differs from the eager model"):
        check_export(spec, files[0], "onnx", batch_sizes=(2,))


def test_vit_legacy_exporter_fixed_batch_and_resampled_size(tmp_path: Path) -> None:
    spec = inference_spec(tiny_vit(), image_size=(48, 40))
    assert spec.module.pos_embed.shape == (1, 1 + 6 * 5, 192)
    path = tmp_path / "vit17.onnx"
    export_model(spec, path, "onnx", batch_size=2, opset=17, exporter="legacy")
    assert input_shapes(path) == {"images": [2, 3, 48, 40]}
    assert onnx.load(str(path)).opset_import[0].version == 17
    assert check_export(spec, path, "onnx", batch_sizes=(2,))["logits"] < 1e-4
    with pytest.raises(ValueError, match="opset 18 or newer"):
        export_model(spec, path, "onnx", opset=17, exporter="dynamo")


def test_detr_onnx_with_padding_mask_matches_eager(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = inference_spec(
        create_model("detr_tiny", backbone_weights="scratch", num_classes=5, enc_layers=1, dec_layers=1),
        DETR_SIZE,
    )
    path = tmp_path / "detr.onnx"
    export_model(spec, path, "onnx", batch_size=1, dynamic_batch=True)
    assert input_shapes(path) == {"images": ["batch", 3, *DETR_SIZE], "mask": ["batch", *DETR_SIZE]}
    # batch 3 pads images 1 and 2 at the bottom and right
    diffs = check_export(spec, path, "onnx", batch_sizes=(1, 3))
    assert diffs["pred_logits"] < 1e-3 and diffs["pred_boxes"] < 1e-3

    # the mask is a real input: padding that covers feature cells (stride 32) changes the detections of
    # the same pixels, in the exported graph as in the eager model
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, *DETR_SIZE)
    mask = torch.zeros(2, *DETR_SIZE, dtype=torch.bool)
    mask[1, 32:] = True
    mask[1, :, 64:] = True
    padded = session.run(None, {"images": images.numpy(), "mask": mask.numpy()})
    unpadded = session.run(None, {"images": images.numpy(), "mask": torch.zeros_like(mask).numpy()})
    with torch.no_grad():
        eager = spec.module(images, mask)
    for got, ref in zip(padded, eager, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), ref, rtol=0, atol=1e-3)
    assert abs(padded[0][1] - unpadded[0][1]).max() > 1e-2
    assert abs(padded[0][0] - unpadded[0][0]).max() < 1e-5  # image 0 is unpadded either way


def test_detr_torchscript_from_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = create_model("detr_tiny", backbone_weights="scratch", num_classes=3, enc_layers=1, dec_layers=1)
    config = {
        "_target_": "vtrain.create_model",
        "name": "detr_tiny",
        # files the run started from need not exist where it is exported
        "pretrained": str(tmp_path / "gone.pth"),
        "backbone_weights": str(tmp_path / "gone_resnet.pth"),
        "num_classes": 3,
        "enc_layers": 1,
        "dec_layers": 1,
    }
    save_vtrain_checkpoint(tmp_path / "run.ckpt", trained, config)

    model = build_model(checkpoint=tmp_path / "run.ckpt")
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    spec = inference_spec(model, DETR_SIZE)
    path = tmp_path / "detr.pt"
    export_model(spec, path, "torchscript", batch_size=2)
    diffs = check_export(spec, path, "torchscript", batch_sizes=(2, 3))
    assert diffs["pred_logits"] < 1e-3 and diffs["pred_boxes"] < 1e-3


def test_cli_exports_a_checkpoint_and_checks_it(tmp_path: Path) -> None:
    config = {"_target_": "vtrain.create_model", "name": "vit_ti16", "pretrained": None, **TINY_VIT}
    save_vtrain_checkpoint(tmp_path / "vit.ckpt", tiny_vit(), config)
    output = tmp_path / "out" / "vit.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "vtrain.export", "--checkpoint", str(tmp_path / "vit.ckpt"), "--output",
         str(output), "--dynamic-batch", "--batch-size", "2", "--check"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "check passed (batch sizes [2, 4]): max abs diff logits" in proc.stdout
    assert "all zero" not in proc.stderr
    assert output.is_file()


def test_errors_name_the_model_or_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = str(tmp_path / "x.onnx")
    assert main(["--model", "vit_s61", "--output", output]) == 1
    assert "unknown model 'vit_s61'. Did you mean 'vit_s16'" in capsys.readouterr().err

    assert main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--output", output]) == 1
    assert f"{tmp_path / 'missing.ckpt'} does not exist" in capsys.readouterr().err

    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    assert main(["--checkpoint", str(tmp_path / "notes.ckpt"), "--output", output]) == 1
    assert f"cannot read {tmp_path / 'notes.ckpt'}" in capsys.readouterr().err

    torch.save(tiny_vit().state_dict(), tmp_path / "bare.pth")
    assert main(["--checkpoint", str(tmp_path / "bare.pth"), "--output", output]) == 1
    assert f"{tmp_path / 'bare.pth'} is not a vtrain Lightning checkpoint" in capsys.readouterr().err

    # a checkpoint's config must not make the exporter call arbitrary functions
    marker = tmp_path / "pwned"
    for target in ("os.system", "vtrain.export.os.system"):
        evil = {"_target_": target, "command": f"touch {marker}"}
        torch.save({"state_dict": {}, "vtrain_config": {"model": evil}}, tmp_path / "evil.ckpt")
        assert main(["--checkpoint", str(tmp_path / "evil.ckpt"), "--output", output]) == 1
        assert f"names _target_ '{target}'; only model builders" in capsys.readouterr().err
    assert not marker.exists()

    save_vtrain_checkpoint(
        tmp_path / "vit.ckpt", tiny_vit(), {"_target_": "vtrain.create_model", "name": "vit_ti16"}
    )
    assert main(["--checkpoint", str(tmp_path / "vit.ckpt"), "--output", output]) == 1
    assert (
        f"{tmp_path / 'vit.ckpt'} does not fit VisionTransformer: mis-shaped keys" in capsys.readouterr().err
    )
    assert not Path(output).exists()
