"""Every experiment composes, its objects instantiate, and its trainer arguments are real Trainer
arguments; `--cfg job` prints the whole config."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import zipfile

import pytest
import pytorch_lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import REPO, run_cli
from vtrain.config import config_dir, fill_num_classes, redact_overrides, redact_secrets
from vtrain.data.tiny import build_tiny

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
# Experiments that need a value from the user to run: the files their recipe starts from (`scratch` here;
# see tests/models/test_pretrained_inputs.py) and a custom data set's root.
NEEDS = {
    "vit_b16_cifar10": ["model.pretrained=scratch"],
    "vit_b16_imagenet_ft384": ["model.pretrained=scratch"],
    "detr_coco": ["model.backbone_weights=scratch"],
    "detr_coco_500ep": ["model.backbone_weights=scratch"],
    "detr_panoptic_stage1_coco": ["model.backbone_weights=scratch"],
    "detr_finetune_custom": [
        "model.pretrained=scratch",
        "model.backbone_weights=scratch",
        "data.root={coco_tiny}",
    ],
    "detr_panoptic_coco": ["model.pretrained=scratch", "model.backbone_weights=scratch"],
    "maskrcnn_coco": ["model.backbone_weights=scratch"],
    "fpt_maskrcnn_coco": ["model.backbone_weights=scratch"],
    "fpn_cityscapes": ["model.backbone_weights=scratch"],
    "fpt_cityscapes": ["model.backbone_weights=scratch"],
    "ttsr_cufed": ["model.vgg_weights=scratch"],
    "ttsr_rec_cufed": ["model.vgg_weights=scratch"],
    "igpt_cifar10_probe": ["model.pretrained=scratch"],
    "igpt_cifar10_finetune": ["model.pretrained=scratch"],
    "mae_vit_b16_finetune": ["model.pretrained=scratch"],
    "mae_vit_b16_linprobe": ["model.pretrained=scratch"],
    "mae_tiny_finetune": ["model.pretrained=scratch"],
}


def test_experiments_exist():
    assert {"vit_b16_imagenet", "vit_s16_imagenet", "vit_b16_cifar10", "vit_cifar10_tiny"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(make_cfg, data_dir, experiment):
    coco_tiny = build_tiny("coco_tiny", data_dir / "coco_tiny")
    needs = [value.format(coco_tiny=coco_tiny) for value in NEEDS.get(experiment, [])]
    cfg = make_cfg([f"experiment={experiment}", *needs])
    assert cfg.name == experiment
    OmegaConf.resolve(cfg)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    task = instantiate(cfg.task, model=model)
    assert task.model is model
    if "num_classes" in cfg.data:  # super-resolution and generative data have no classes
        assert datamodule.num_classes == cfg.data.num_classes
    for node in [*cfg.callbacks.values(), *cfg.logger.values()]:
        instantiate(node)
    trainer_args = {k: v for k, v in cfg.trainer.items() if k != "_target_"}
    inspect.signature(L.Trainer).bind(**trainer_args)


def test_custom_coco_num_classes_comes_from_the_annotation_file(make_cfg, data_dir):
    coco_tiny = build_tiny("coco_tiny", data_dir / "coco_tiny")
    cfg = make_cfg(["experiment=detr_finetune_custom", f"data.root={coco_tiny}"])
    assert cfg.data.num_classes == cfg.model.num_classes == cfg.task.criterion.num_classes == 11
    with pytest.raises(Exception, match="instances_train2017.json"):
        OmegaConf.resolve(make_cfg(["experiment=detr_finetune_custom", "data.root=/nope"]))


def test_finetuning_requires_pretrained_weights(make_cfg):
    cfg = make_cfg(["experiment=vit_b16_cifar10"])
    with pytest.raises(
        InstantiationException, match=r"model\.pretrained is required: .*model\.pretrained=scratch"
    ):
        instantiate(cfg.model)


@pytest.mark.parametrize(
    "group,option",
    [
        ("logger", "many"),
        ("logger", "tensorboard"),
        ("callbacks", "early_stopping"),
        ("debug", "default"),
        ("debug", "fdr"),
        ("debug", "overfit"),
        ("trainer", "gpu"),
        ("trainer", "ddp"),
        ("trainer", "ddp_cpu"),
        ("data", "imagenet_tiny"),
        ("data", "cifar100_tiny"),
    ],
)
def test_config_group_options_compose(make_cfg, group, option):
    cfg = make_cfg(["experiment=vit_cifar10_tiny", f"{group}={option}"])
    OmegaConf.resolve(cfg)
    inspect.signature(L.Trainer).bind(**{k: v for k, v in cfg.trainer.items() if k != "_target_"})


def test_wandb_is_offline_without_api_key(make_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert make_cfg(["logger=wandb"]).logger.wandb.offline is True
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    cfg = make_cfg(["logger=wandb"])
    assert cfg.logger.wandb.offline is False
    assert "x" * 40 not in OmegaConf.to_yaml(cfg, resolve=True)


def test_cfg_job_prints_the_composed_config(tmp_path):
    out = run_cli(["experiment=vit_cifar10_tiny", "--cfg", "job"], cwd=tmp_path).stdout
    cfg = OmegaConf.create(out)
    assert cfg.name == "vit_cifar10_tiny"
    assert cfg.model._target_ == "vtrain.create_model"
    assert cfg.task._target_ == "vtrain.tasks.ClassificationTask"
    assert cfg.data.dataset == "cifar10"
    assert (REPO / "conf" / "train.yaml").is_file()


def test_wheel_ships_the_configs_and_an_installed_copy_finds_them(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("vtrain-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        assert {
            "vtrain/conf/train.yaml",
            "vtrain/conf/experiment/vit_cifar10_tiny.yaml",
            "vtrain/data/imagenet_wnids.txt",
        } <= set(archive.namelist())
        archive.extractall(site)
    out = subprocess.run(
        [sys.executable, "-m", "vtrain", "experiment=vit_cifar10_tiny", "--cfg", "job"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert OmegaConf.create(out).name == "vit_cifar10_tiny"
    probe = "import vtrain.config as c; print(c.config_dir())"
    found = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert found == str(site / "vtrain" / "conf")


def test_redact_secrets_by_key_name_and_by_environment_value():
    env = {"HF_TOKEN": "hf_abcdefghijklmnop", "HOME": "/home/me", "SHORT_TOKEN": "abc"}
    config = {
        "logger": {"wandb": {"api_key": "k" * 40, "project": "vtrain", "offline": True}},
        "tags": ["run", "hf_abcdefghijklmnop"],
        "paths": {"data_dir": "/home/me/data", "token_file": None},
        "auth": {"password_required": False},
    }
    clean = redact_secrets(config, env)
    assert clean["logger"]["wandb"] == {"api_key": "<redacted>", "project": "vtrain", "offline": True}
    assert clean["tags"] == ["run", "<redacted>"]
    assert clean["paths"] == {"data_dir": "/home/me/data", "token_file": None}  # HOME is no secret
    assert clean["auth"] == {"password_required": False}
    assert config["logger"]["wandb"]["api_key"] == "k" * 40  # the input is left alone


def test_fsdp_preset_builds_a_sharding_strategy(make_cfg):
    from pytorch_lightning.strategies import FSDPStrategy

    cfg = make_cfg(["experiment=vit_s16_imagenet", "trainer=fsdp"])
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    # a ViT-S block (1.8M parameters) is an FSDP unit, its 2-D MLP layers alone (0.6M) are not
    block = torch.nn.Sequential(
        torch.nn.Linear(384, 1536), torch.nn.Linear(1536, 384), torch.nn.Linear(384, 384)
    )
    assert policy(module=block, recurse=False, nonwrapped_numel=sum(p.numel() for p in block.parameters()))
    assert not policy(module=block[0], recurse=False, nonwrapped_numel=block[0].weight.numel())


@pytest.mark.parametrize("preset", ["debug=smoke", "trainer=smoke", "debug=smoke trainer=gpu"])
def test_smoke_presets_win_over_the_experiment_and_build_a_trainer(make_cfg, preset):
    cfg = make_cfg(["experiment=vit_cifar10_tiny", *preset.split()])  # the experiment sets 30 epochs
    trainer = cfg.trainer
    assert trainer.accelerator == "cpu"
    assert (trainer.max_epochs, trainer.limit_train_batches, trainer.log_every_n_steps) == (1, 4, 1)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    # debug=smoke turns the progress bar off: its RichProgressBar callback must go with it
    instantiate(cfg.trainer, callbacks=callbacks, logger=False)


def test_null_num_classes_is_read_from_the_annotation_file_before_the_model_is_built(make_cfg):
    cfg = make_cfg(["experiment=detr_coco_tiny", "data.num_classes=null"])
    datamodule = instantiate(cfg.data)
    fill_num_classes(cfg, datamodule)  # what `python -m vtrain` does before building the model
    assert cfg.data.num_classes == cfg.model.num_classes == cfg.task.criterion.num_classes == 11
    assert instantiate(cfg.model).class_embed.out_features == 11 + 1  # + "no object"


def test_null_num_classes_of_data_that_cannot_read_it_says_what_to_set(make_cfg):
    cfg = make_cfg(["experiment=vit_cifar10_tiny", "data.num_classes=null"])
    expected = r"data\.num_classes is null.*has 10 classes.*set data\.num_classes=N"
    with pytest.raises(ValueError, match=expected):
        fill_num_classes(cfg, instantiate(cfg.data))


def test_redact_overrides_hides_credential_values_and_keeps_the_rest():
    env = {"HF_TOKEN": "hf_abcdefghijklmnop"}
    overrides = [
        "+secret_token=abcdefgh123",
        "++logger.wandb.api_key='k-123456789'",
        "+notes.from_env=${oc.env:WANDB_API_KEY}",  # says where the secret is: kept
        "+logger.wandb.api_key=${oc.env:WANDB_API_KEY}",
        "+notes.pasted=hf_abcdefghijklmnop",  # an environment secret under an innocent key
        "~callbacks.progress_bar",
        "task.optimizer.lr=1e-3,3e-3",
    ]
    assert redact_overrides(overrides, env) == [
        "+secret_token=<redacted>",
        "++logger.wandb.api_key=<redacted>",
        "+notes.from_env=${oc.env:WANDB_API_KEY}",
        "+logger.wandb.api_key=${oc.env:WANDB_API_KEY}",
        "+notes.pasted=<redacted>",
        "~callbacks.progress_bar",
        "task.optimizer.lr=1e-3,3e-3",
    ]


def test_command_line_secrets_reach_no_file_of_the_run_nor_wandb(tmp_path, data_dir):
    secret, password = "abcdefgh123", "hunter2hunter2"
    sweep, wandb_dir = tmp_path / "sweep", tmp_path / "wandb"
    wandb_dir.mkdir()
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    env = {**env, "WANDB_API_KEY": ""}
    proc = run_cli(
        [
            "-m",  # a multirun of one job: its multirun.yaml too
            "experiment=vit_cifar10_tiny",
            "debug=smoke",
            "test=false",
            "logger=wandb",
            f"+secret_token={secret}",
            f"+notes.db_password={password}",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env=env,
    )
    job = sweep / "0"
    assert list((job / "wandb").glob("offline-run-*/*.wandb")), "no W&B run was written"
    assert {"+secret_token=<redacted>", "+notes.db_password=<redacted>"} <= set(
        OmegaConf.load(job / ".hydra" / "overrides.yaml")
    )
    assert OmegaConf.load(job / ".hydra" / "config.yaml").secret_token == "<redacted>"
    files = [p for p in [*sweep.rglob("*"), *wandb_dir.rglob("*")] if p.is_file()]
    assert {job / ".hydra" / name for name in ("config.yaml", "hydra.yaml")} | {
        sweep / "multirun.yaml"
    } <= set(files)
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data and password.encode() not in data, path
    warning = "credential-like keys on the command line: notes.db_password, secret_token"
    assert warning in proc.stdout + proc.stderr
