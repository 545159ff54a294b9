"""End to end through `vtrain.cli.run` and `python -m vtrain`: fit, eval, resume, multirun, DDP on CPU."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import SMOKE, run_cli
from vtrain.checkpoint import load_checkpoint
from vtrain.cli import run

TINY = ["experiment=vit_cifar10_tiny", *SMOKE]


def _lr_by_step(output_dir: Path) -> dict[int, float]:
    with open(output_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    key = next(k for k in rows[0] if k.startswith("lr-"))
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def test_smoke_fit_then_eval_of_the_saved_checkpoint(make_cfg, tmp_path):
    out = tmp_path / "fit"
    score = run(make_cfg(TINY, output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"train/loss_epoch", "val/acc1", "val/acc5", "test/acc1"} <= set(metrics)
    assert score == pytest.approx(metrics["val/acc1"])
    last = out / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == 4
    assert ckpt["vtrain_config"]["name"] == "vit_cifar10_tiny"
    assert any(k.startswith("model.blocks.0.attn.qkv") for k in ckpt["state_dict"])

    out_eval = tmp_path / "eval"
    run(make_cfg([*TINY, "mode=eval", f"ckpt_path={last}"], output_dir=out_eval))
    evaluated = json.loads((out_eval / "metrics.json").read_text())
    # without a hold-out, training tests its final weights (= last.ckpt) on the official split; eval of
    # last.ckpt measures the same numbers, each split once
    assert metrics["run"]["tested_checkpoint"].startswith("last")
    assert evaluated["test/acc1"] == pytest.approx(metrics["test/acc1"])
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    assert not any(k.startswith("val/") for k in evaluated)


def test_eval_needs_a_checkpoint(make_cfg):
    with pytest.raises(ValueError, match="ckpt_path=RUN.ckpt .* or model.pretrained=FILE"):
        run(make_cfg([*TINY, "mode=eval"]))
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        run(make_cfg([*TINY, "mode=eval", "ckpt_path=/nope.ckpt"]))


def test_resume_from_last_continues_at_the_saved_step_with_the_same_lr(make_cfg, tmp_path):
    common = [*TINY, "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "test=false"]
    straight = tmp_path / "straight"
    run(make_cfg([*common, "trainer.max_epochs=2"], output_dir=straight))

    first = tmp_path / "first"
    run(make_cfg([*common, "trainer.max_epochs=1"], output_dir=first))
    assert load_checkpoint(first / "checkpoints" / "last.ckpt")["global_step"] == 3
    resumed = tmp_path / "resumed"
    run(
        make_cfg(
            [*common, "trainer.max_epochs=2", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"],
            output_dir=resumed,
        )
    )

    end_straight = load_checkpoint(straight / "checkpoints" / "last.ckpt")
    end_resumed = load_checkpoint(resumed / "checkpoints" / "last.ckpt")
    assert end_resumed["global_step"] == end_straight["global_step"] == 6
    assert end_resumed["lr_schedulers"][0]["_last_lr"] == pytest.approx(
        end_straight["lr_schedulers"][0]["_last_lr"]
    )
    lr_straight, lr_resumed = _lr_by_step(straight), _lr_by_step(resumed)
    assert min(lr_resumed) == 3, "the resumed run must start logging at the saved step"
    for step, lr in lr_resumed.items():
        assert lr == pytest.approx(lr_straight[step])


def test_resume_from_last_in_a_fresh_run_dir_starts_from_scratch(make_cfg, tmp_path):
    out = tmp_path / "fresh"
    run(make_cfg([*TINY, "ckpt_path=last", "test=false"], output_dir=out))
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_multirun_sweeps_two_jobs(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            *TINY,
            "task.optimizer.lr=1e-3,3e-3",
            "logger=csv",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / "metrics.json").is_file()
        assert (job / "checkpoints" / "last.ckpt").is_file()


def test_ddp_on_two_cpu_processes(tmp_path, data_dir):
    out = tmp_path / "ddp"
    proc = run_cli(
        [
            "experiment=vit_cifar10_tiny",
            "trainer=ddp_cpu",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
            "trainer.enable_progress_bar=false",
            "~callbacks.progress_bar",
            "data.num_workers=0",
            "data.persistent_workers=false",
            f"paths.data_dir={data_dir}",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert "val/acc1" in metrics and "test/acc1" in metrics
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 3


def test_optuna_sweep_optimises_the_monitored_metric(tmp_path, data_dir):
    sweep = tmp_path / "optuna"
    run_cli(
        [
            *TINY,
            "hparams_search=vit_optuna",
            "hydra.sweeper.n_trials=2",
            "logger=csv",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.name == "optuna"
    assert set(results.best_params) == {
        "task.optimizer.lr",
        "task.weight_decay",
        "task.loss.label_smoothing",
        "model.drop_path_rate",
    }
    scores = [json.loads((sweep / str(i) / "metrics.json").read_text())["val/acc1"] for i in range(2)]
    assert results.best_value == pytest.approx(max(scores))
    assert json.loads((sweep / "sweep_summary.json").read_text())["best"]["value"] == pytest.approx(
        max(scores)
    )


def test_corrupt_images_fail_naming_the_file_or_are_skipped_and_counted(make_cfg, tmp_path):
    from vtrain.data.images import CorruptImageError
    from vtrain.data.tiny import build_tiny

    root = tmp_path / "imagenet_tiny"
    build_tiny("imagenet_tiny", root)
    broken = sorted((root / "val").glob("*/*.JPEG"))[0]
    broken.write_bytes(broken.read_bytes()[:200])
    common = [*TINY, "data=imagenet_tiny", f"data.root={root}", "test=false"]
    with pytest.raises(CorruptImageError, match=broken.name):
        run(make_cfg(common, output_dir=tmp_path / "strict"))
    run(make_cfg([*common, "data.skip_corrupt=true"], output_dir=tmp_path / "skip"))
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert metrics["data/corrupt_images_skipped"] == 1


def test_detr_smoke_fit_logs_coco_ap_and_draws_predictions(make_cfg, tmp_path):
    out = tmp_path / "detr"
    run(make_cfg(["experiment=detr_coco_tiny", *SMOKE], output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val/AP", "val/AP50", "val/loss_giou", "test/AP", "train/loss_ce_epoch"} <= set(metrics)
    assert 0.0 <= metrics["val/AP"] <= 1.0
    assert list((out / "pictures").glob("val_step*.png"))
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert "model.query_embed.weight" in ckpt["state_dict"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("experiment", ["vit_cifar10_tiny", "detr_coco_tiny"])
def test_smoke_fit_on_gpu_in_bf16(make_cfg, tmp_path, experiment):
    out = tmp_path / experiment
    gpu = ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed"]
    run(make_cfg([f"experiment={experiment}", *SMOKE, *gpu], output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.slow
def test_vit_cifar10_tiny_really_learns(make_cfg, tmp_path):
    """The demo run as `make demo` runs it (30 epochs, about 3 minutes on 2 CPU cores): held-out top-1 far
    above chance (10 %)."""
    out = tmp_path / "demo"
    run(
        make_cfg(
            ["experiment=vit_cifar10_tiny", "trainer.enable_progress_bar=false", "~callbacks.progress_bar"],
            output_dir=out,
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/acc1"] > 0.6, metrics


def test_no_secret_lands_in_the_logged_config_or_the_checkpoint(make_cfg, tmp_path, monkeypatch):
    secret, password = "wandb-key-0123456789abcdef", "hunter2-hunter2"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    out = tmp_path / "run"
    overrides = [
        *TINY,
        "logger=csv",
        "test=false",
        "+notes.from_env=${oc.env:WANDB_API_KEY}",  # a secret under an innocent key name
        f"+notes.db_password={password}",
    ]
    run(make_cfg(overrides, output_dir=out))
    config = load_checkpoint(out / "checkpoints" / "last.ckpt")["vtrain_config"]
    assert config["notes"] == {"from_env": "<redacted>", "db_password": "<redacted>"}
    for path in [*out.rglob("*.yaml"), *out.rglob("*.json"), *out.rglob("*.csv"), *out.rglob("*.ckpt")]:
        if ".hydra" in path.parts:  # Hydra's own record of the command line, not written by vtrain
            continue
        data = path.read_bytes()
        assert secret.encode() not in data and password.encode() not in data, path


@pytest.mark.parametrize(
    "experiment, options",
    [
        ("vit_cifar10_tiny", ["trainer.precision=bf16-mixed"]),
        ("detr_coco_tiny", ["trainer.precision=bf16-mixed", "channels_last=true"]),
        ("vit_cifar10_tiny", ["trainer.accumulate_grad_batches=2"]),
        pytest.param("vit_cifar10_tiny", ["compile=true"], marks=pytest.mark.slow),
    ],
    ids=["vit-bf16", "detr-bf16-channels-last", "vit-accumulate", "vit-compile"],
)
def test_precision_and_speed_options_train_on_cpu(make_cfg, tmp_path, experiment, options):
    out = tmp_path / "run"
    run(make_cfg([f"experiment={experiment}", *SMOKE, "test=false", *options], output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)), metrics
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    accumulate = 2 if "trainer.accumulate_grad_batches=2" in options else 1
    assert ckpt["global_step"] == 4 // accumulate
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_ema_weights_are_validated_and_checkpointed(make_cfg, tmp_path):
    out = tmp_path / "ema"
    run(
        make_cfg(
            [
                *TINY,
                "callbacks=ema",
                "callbacks.ema.multi_avg_fn.decay=0.5",
                "test=false",
            ],
            output_dir=out,
        )
    )
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == current.keys()
    # the EMA (decay 0.5 over 4 steps) differs from the trained weights it follows
    assert not torch.equal(averaged["model.head.weight"], current["model.head.weight"])
    # evaluating the checkpoint uses the averaged weights and reproduces the run's validation
    out_eval = tmp_path / "eval"
    last = out / "checkpoints" / "last.ckpt"
    run(make_cfg([*TINY, "mode=eval", f"ckpt_path={last}"], output_dir=out_eval))
    # without a hold-out the validation split is the test split
    fit_val = json.loads((out / "metrics.json").read_text())["val/loss"]
    assert json.loads((out_eval / "metrics.json").read_text())["test/loss"] == pytest.approx(
        fit_val, rel=1e-5
    )


def test_requeued_slurm_job_resumes_and_continues_the_same_wandb_run(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "job"
    common = [
        *TINY,
        "logger=wandb",
        "test=false",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
    ]
    run(make_cfg([*common, "trainer.max_epochs=1"], output_dir=out))
    first_id = (out / "wandb_run_id").read_text().strip()
    # SLURM restarts the preempted job with the same command line; only SLURM_RESTART_COUNT tells
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    run(make_cfg([*common, "trainer.max_epochs=2"], output_dir=out))
    assert (
        load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 4
    )  # 2 + 2: resumed, not redone
    assert (out / "wandb_run_id").read_text().strip() == first_id
    runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert runs and all(name.endswith(f"-{first_id}") for name in runs), runs  # one run id, both starts


def test_grid_sweep_ranks_its_jobs_by_the_monitored_metric(tmp_path, data_dir):
    sweep = tmp_path / "grid"
    run_cli(
        [
            *TINY,
            "hparams_search=vit_grid",
            # 2 x 1 of the preset's 3 x 2 jobs
            "hydra.sweeper.params={task.optimizer.lr:'1e-4,3e-3',task.weight_decay:'0.05'}",
            "logger=none",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    scores = {
        str(job.parent): json.loads(job.read_text())["val/acc1"] for job in sweep.glob("*/metrics.json")
    }
    assert len(scores) == 2
    assert summary["monitor"] == "val/acc1" and summary["mode"] == "max"
    assert [job["value"] for job in summary["jobs"]] == sorted(scores.values(), reverse=True)
    assert summary["best"]["value"] == max(scores.values()) == scores[summary["best"]["dir"]]
    assert any(o.startswith("task.optimizer.lr=") for o in summary["best"]["overrides"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fsdp_smoke_fit_on_one_gpu(make_cfg, tmp_path):
    out = tmp_path / "fsdp"
    short = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2"]
    run(
        make_cfg(["experiment=vit_cifar10_tiny", "trainer=fsdp", "trainer.devices=1", *short], output_dir=out)
    )
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4 and "model.head.weight" in ckpt["state_dict"]  # a full state dict
