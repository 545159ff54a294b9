"""DeiT distillation in the classification task: the loss as deit losses.py combines the two heads (hard and
soft), the teacher sees the student's Mixup'd batch, teachers from local timm / torchvision files with errors
naming the key and the file, and deit_distilled_tiny end to end with a teacher trained in the test: the
checkpoint holds the student only, and eval / predict of it need no teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from hydra.utils import instantiate
from PIL import Image

from tests.conftest import SMOKE
from tests.numerics import assert_close_to_scale
from vtrain.checkpoint import load_checkpoint
from vtrain.cli import run
from vtrain.models.deit import DistilledVisionTransformer
from vtrain.models.pretrained import MissingWeightsError
from vtrain.models.vit import VisionTransformer
from vtrain.tasks import ClassificationTask
from vtrain.tasks.distillation import Distillation, build_teacher

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=10)


def _teacher_file(path: Path, arch: str = "test_resnet") -> Path:
    torch.manual_seed(1)
    teacher = timm.create_model(arch, pretrained=False, num_classes=10, global_pool="avg")
    torch.save({"model": teacher.state_dict()}, path)  # the official teacher file's layout (main.py:385)
    return path


def _spec(path: Path | str | None, **extra) -> dict:
    return {"source": "timm", "arch": "test_resnet", "path": str(path) if path else None, **extra}


def _task(teacher_path: Path, type: str = "hard", mixup: dict | None = None) -> ClassificationTask:
    torch.manual_seed(0)
    task = ClassificationTask(
        DistilledVisionTransformer(**SMALL),
        num_classes=10,
        optimizer=torch.optim.AdamW,
        loss=torch.nn.CrossEntropyLoss(label_smoothing=0.1),
        mixup=mixup,
        distillation={"teacher": _spec(teacher_path), "type": type, "alpha": 0.5, "tau": 2.0},
    )
    task.distillation.load_teacher(10)
    return task


@pytest.mark.parametrize("type", ["hard", "soft"])
def test_the_loss_combines_both_heads_as_deits_distillation_loss(tmp_path, type):
    task = _task(_teacher_file(tmp_path / "teacher.pth"), type)
    images, labels = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    loss = task.training_step((images, labels), 0)
    with torch.no_grad():
        logits, logits_dist = task.model(images)
        teacher = task.distillation.teacher(images)
    base = F.cross_entropy(logits, labels, label_smoothing=0.1)
    if type == "hard":  # losses.py:66-67, eq. 3
        dist = F.cross_entropy(logits_dist, teacher.argmax(dim=1))
    else:  # losses.py:50-62, eq. 2: KL(teacher || student) at temperature tau, x tau^2, over B x C logits
        p_teacher = F.softmax(teacher / 2.0, dim=1)
        kl = (p_teacher * (p_teacher.log() - F.log_softmax(logits_dist / 2.0, dim=1))).sum()
        dist = kl * 4.0 / logits_dist.numel()
    assert_close_to_scale(loss.detach(), 0.5 * base + 0.5 * dist)
    assert not torch.isclose(base, dist)  # both terms matter
    loss.backward()
    assert task.model.head.weight.grad.abs().sum() > 0 and task.model.head_dist.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in task.distillation.teacher.parameters())


def test_without_a_teacher_the_distillation_head_is_frozen_so_ddp_waits_for_no_gradient():
    """deit main.py's --distillation-type none: the loss is the class head's alone, so nothing reaches
    head_dist; frozen, DDP (without find_unused_parameters) does not wait for its gradients."""
    torch.manual_seed(0)
    model = DistilledVisionTransformer(**SMALL)
    task = ClassificationTask(
        model, num_classes=10, optimizer=torch.optim.AdamW, loss=torch.nn.CrossEntropyLoss()
    )
    task.training_step((torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))), 0).backward()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"head_dist.weight", "head_dist.bias"}
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # dist_token included
    optimizer = task.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert not any(p is model.head_dist.weight for g in optimizer.param_groups for p in g["params"])


def test_the_teacher_sees_the_students_mixed_batch_and_stays_frozen(tmp_path):
    task = _task(_teacher_file(tmp_path / "teacher.pth"), mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0})
    seen = {}
    task.model.patch_embed.register_forward_hook(lambda m, inputs, out: seen.update(student=inputs[0]))
    teacher = task.distillation.teacher
    teacher.register_forward_hook(lambda m, inputs, out: seen.update(teacher=inputs[0]))
    images = torch.randn(4, 3, 32, 32)
    task.train()  # Lightning's model.train() reaches the task's modules, not the teacher
    task.training_step((images, torch.arange(4)), 0)
    assert torch.equal(seen["teacher"], seen["student"]) and not torch.equal(seen["student"], images)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("distillation") or "teacher" in k for k in task.state_dict())
    optimizer = task.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in task.model.parameters()}


def test_a_torchvision_teacher_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.squeezenet1_1(weights=None, num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "squeezenet.pth")
    teacher = build_teacher("torchvision", "squeezenet1_1", str(tmp_path / "squeezenet.pth"), 10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(teacher(x), reference.eval()(x))
    assert not teacher.training


def test_teacher_errors_name_the_key_and_the_file(tmp_path):
    key = "task.distillation.teacher"
    with pytest.raises(MissingWeightsError, match=rf"{key}\.path is required: .*timm test_resnet"):
        build_teacher("timm", "test_resnet", None, 10)
    with pytest.raises(FileNotFoundError, match=rf"{key}\.path=.*nope\.pth: no such file"):
        build_teacher("timm", "test_resnet", str(tmp_path / "nope.pth"), 10)
    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), wrong)
    with pytest.raises(
        ValueError, match=rf"{key}\.path=.*resnet18\.pth is not a timm test_resnet teacher: .*keys"
    ):
        build_teacher("timm", "test_resnet", str(wrong), 10)
    with pytest.raises(ValueError, match=rf"{key}: cannot build timm model 'no_such_net'"):
        build_teacher("timm", "no_such_net", str(wrong), 10)
    with pytest.raises(ValueError, match=rf"{key}\.source must be one of \['timm', 'torchvision'\]"):
        Distillation(_spec(wrong) | {"source": "hub"})
    with pytest.raises(ValueError, match=rf"{key}: unknown keys \['weights'\]"):
        Distillation(_spec(wrong, weights="x"))
    with pytest.raises(ValueError, match=r"task\.distillation: unknown keys \['temperature'\]"):
        Distillation.from_config({"teacher": _spec(wrong), "temperature": 2.0})
    with pytest.raises(ValueError, match=r"task\.distillation\.type must be one of \['hard', 'soft'\]"):
        Distillation(_spec(wrong), type="none")
    with pytest.raises(
        ValueError, match="needs a model with a distillation token .* VisionTransformer has no"
    ):
        ClassificationTask(
            VisionTransformer(**SMALL), 10, torch.optim.AdamW, distillation={"teacher": _spec(wrong)}
        )


def _trained_teacher(make_cfg, path: Path) -> Path:
    """test_resnet trained for 20 steps on the tiny CIFAR-10 set that the student then learns from."""
    data = instantiate(make_cfg(["experiment=deit_distilled_tiny", *SMOKE]).data)
    data.prepare_data()
    data.setup("fit")
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", pretrained=False, num_classes=10, global_pool="avg")
    optimizer = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    steps = 0
    while steps < 20:
        for images, labels in data.train_dataloader():
            loss = F.cross_entropy(teacher(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if steps == 20:
                break
    torch.save({"model": teacher.state_dict()}, path)
    return path


def test_deit_distilled_tiny_trains_saves_the_student_only_and_evaluates_without_the_teacher(
    make_cfg, tmp_path
):
    teacher = _trained_teacher(make_cfg, tmp_path / "teacher.pth")
    out = tmp_path / "fit"
    overrides = ["experiment=deit_distilled_tiny", *SMOKE]
    run(make_cfg([*overrides, f"task.distillation.teacher.path={teacher}"], output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"train/loss_cls_epoch", "train/loss_dist_epoch", "train/loss_epoch", "test/acc1"} <= set(metrics)
    assert metrics["train/loss_epoch"] == pytest.approx(
        0.5 * metrics["train/loss_cls_epoch"] + 0.5 * metrics["train/loss_dist_epoch"], rel=1e-5
    )

    last = out / "checkpoints" / "last.ckpt"
    state = load_checkpoint(last)["state_dict"]
    student = instantiate(make_cfg(overrides).model)
    assert set(state) == {f"model.{k}" for k in student.state_dict()}  # no teacher weights
    assert {"model.dist_token", "model.head_dist.weight"} <= set(state)
    teacher_bytes = teacher.stat().st_size
    assert last.stat().st_size < 4 * 4 * sum(p.numel() for p in student.parameters()) + teacher_bytes / 2

    # eval and predict of the student: the experiment's teacher path stays null, nothing reads a teacher
    out_eval = tmp_path / "eval"
    run(make_cfg([*overrides, "mode=eval", f"ckpt_path={last}"], output_dir=out_eval))
    evaluated = json.loads((out_eval / "metrics.json").read_text())
    assert evaluated["test/acc1"] == pytest.approx(metrics["test/acc1"])
    image = tmp_path / "digit.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    out_predict = tmp_path / "predict"
    run(
        make_cfg(
            [*overrides, "mode=predict", f"ckpt_path={last}", f"predict.input={image}"],
            output_dir=out_predict,
        )
    )
    predictions = json.loads((out_predict / "predictions" / "predictions.json").read_text())
    assert predictions["images"] == 1 and predictions["task"] == "classification"


def test_the_official_distilled_deit_pth_evaluates_in_the_recipe(make_cfg, tmp_path):
    """`mode=eval model.pretrained=deit_small_distilled_patch16_224-649709d9.pth` (its layout: timm key
    names under 'model'; random values, one block): no teacher file is needed to evaluate."""
    torch.manual_seed(0)
    official = timm.create_model("deit_small_distilled_patch16_224", pretrained=False, depth=1)
    path = tmp_path / "deit_small_distilled_patch16_224-649709d9.pth"
    torch.save({"model": official.state_dict()}, path)
    overrides = ["experiment=deit_s16_distilled_imagenet", "data=imagenet_tiny", "+model.depth=1"]
    out = tmp_path / "eval"
    shrink = ["data.batch_size=2", *SMOKE, "mode=eval", f"model.pretrained={path}"]
    run(make_cfg([*overrides, *shrink], output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc1"] <= 1.0
    assert metrics["paper"]["results"]["test/acc1"] == pytest.approx(0.812)
