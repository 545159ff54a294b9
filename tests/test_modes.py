"""The modes' contracts around weights and run directories: what `mode=eval` accepts, the checkpoint of
another experiment, a run that would write over another, SLURM-named run directories, paper numbers."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from omegaconf import open_dict

from tests.conftest import SMOKE
from vtrain.cli import run
from vtrain.runs import earlier_runs, run_stamp

TINY = ["experiment=vit_cifar10_tiny", *SMOKE]


def _fit(make_cfg, out, extra=()):
    run(make_cfg([*TINY, "test=false", *extra], output_dir=out))
    return out / "checkpoints" / "last.ckpt"


def test_eval_of_official_weights_needs_no_ckpt_path(make_cfg, tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    # random weights in timm's layout for the tiny experiment's ViT (patch 4, width 96, depth 4)
    reference = timm.models.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3, mlp_ratio=2.0, num_classes=10
    )
    path = tmp_path / "timm_vit.pth"
    torch.save(reference.state_dict(), path)
    out = tmp_path / "eval"
    run(make_cfg([*TINY, "mode=eval", f"model.pretrained={path}"], output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test/acc1" in metrics and not any(k.startswith("val/") for k in metrics)
    assert metrics["run"]["tested_checkpoint"] == f"model.pretrained={path}"


def test_an_official_file_as_ckpt_path_says_what_it_is_and_to_use_model_pretrained(make_cfg, tmp_path):
    official = tmp_path / "detr-r50.pth"
    torch.save({"model": {"query_embed.weight": torch.zeros(2, 2)}, "args": None, "epoch": 1}, official)
    with pytest.raises(ValueError, match=r"is not a vtrain checkpoint .*top-level keys 'model'") as err:
        run(make_cfg([*TINY, "mode=eval", f"ckpt_path={official}"]))
    assert f"model.pretrained={official}" in str(err.value)
    npz = tmp_path / "ViT-B_16.npz"
    npz.write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"NumPy .npz archive .* model.pretrained="):
        run(make_cfg([*TINY, "mode=eval", f"ckpt_path={npz}"]))


def test_a_checkpoint_of_another_experiment_names_both_models(make_cfg, tmp_path):
    last = _fit(make_cfg, tmp_path / "vit")
    with pytest.raises(
        ValueError, match=r"holds a vit_ti16 model \(experiment vit_cifar10_tiny\), but this run"
    ):
        run(make_cfg(["experiment=lambda_tiny", *SMOKE, "mode=eval", f"ckpt_path={last}"]))


def test_a_fresh_run_does_not_write_over_another_runs_checkpoints(make_cfg, tmp_path):
    out = tmp_path / "run"
    _fit(make_cfg, out)
    with pytest.raises(FileExistsError, match="already holds the checkpoints of a run.*ckpt_path=last"):
        run(make_cfg([*TINY, "test=false"], output_dir=out))


def test_run_directories_are_named_after_the_slurm_job(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert len(run_stamp()) == len("2026-12-01_07-16-07")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert run_stamp() == "slurm-4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4000")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert run_stamp() == "slurm-4000_7"


def test_a_relaunched_slurm_job_resumes_from_its_own_last_checkpoint(tmp_path, data_dir, monkeypatch):
    """`sbatch` twice with the same job id (a requeue): the second launch, outside any launcher plugin,
    finds the first one's directory by the job id and resumes its last.ckpt."""
    from tests.conftest import run_cli

    common = [
        *TINY,
        "test=false",
        "logger=csv",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / 'outputs'}",
    ]
    env = {"SLURM_JOB_ID": "777", "SLURM_RESTART_COUNT": "0"}
    run_cli([*common, "trainer.max_epochs=1"], cwd=tmp_path, env=env)
    run_dir = tmp_path / "outputs" / "vit_cifar10_tiny" / "slurm-777"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    proc = run_cli([*common, "trainer.max_epochs=2"], cwd=tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"})
    assert "resuming from last.ckpt" in proc.stderr + proc.stdout
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8


def test_last_in_a_new_directory_points_to_the_experiments_earlier_runs(make_cfg, tmp_path, caplog):
    logs = tmp_path / "outputs"
    older = logs / "vit_cifar10_tiny" / "2026-01-01_00-00-00"
    _fit(make_cfg, older, [f"paths.log_dir={logs}"])
    cfg = make_cfg(
        [*TINY, "ckpt_path=last", "test=false", f"paths.log_dir={logs}"], output_dir=tmp_path / "x"
    )
    assert earlier_runs(cfg) == [older]
    with caplog.at_level(logging.WARNING, logger="vtrain"):
        run(cfg)
    assert any(f"hydra.run.dir={older} ckpt_path=last" in r.getMessage() for r in caplog.records)


def test_paper_numbers_are_written_beside_the_measured_ones(make_cfg, tmp_path):
    out = tmp_path / "run"
    cfg = make_cfg(TINY, output_dir=out)
    with open_dict(cfg):
        cfg.paper = {"source": "a table", "results": {"test/acc1": 0.5}}
    run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["paper"] == {"source": "a table", "results": {"test/acc1": 0.5}}
    assert "test/acc1" in metrics and metrics["run"]["global_batch"] == 32


def test_every_full_scale_experiment_states_its_paper_numbers_on_the_test_split(make_cfg):
    for experiment in (
        "detr_coco",
        "detr_coco_500ep",
        "detr_panoptic_stage1_coco",
        "detr_panoptic_coco",
        "vit_b16_imagenet_ft384",
        "vit_b16_cifar10",
        "vit_s16_imagenet",
        "lambda_resnet50_imagenet",
        "igpt_imagenet32",
        "ttsr_rec_cufed",
    ):
        cfg = make_cfg([f"experiment={experiment}"])
        assert cfg.paper.source, experiment
        assert all(k.startswith("test/") for k in cfg.paper.results), experiment


def test_resuming_from_another_experiments_checkpoint_fails_before_training(make_cfg, tmp_path):
    last = _fit(make_cfg, tmp_path / "vit")
    with pytest.raises(ValueError, match=r"holds a vit_ti16 model .* this run builds lambda_tiny"):
        run(make_cfg(["experiment=lambda_tiny", *SMOKE, f"ckpt_path={last}"], output_dir=tmp_path / "l"))
    assert not (tmp_path / "l" / "checkpoints").exists()


def test_last_falls_back_to_the_newest_readable_checkpoint_when_last_is_truncated(make_cfg, tmp_path, caplog):
    out = tmp_path / "run"
    common = [*TINY, "test=false", "trainer.limit_val_batches=1"]
    last = _fit(make_cfg, out, ["trainer.max_epochs=2"])
    best = next(p for p in (out / "checkpoints").glob("epoch*.ckpt"))
    last.write_bytes(last.read_bytes()[:300])  # a writer killed by a full disk, say
    with caplog.at_level(logging.WARNING):
        run(make_cfg([*common, "ckpt_path=last", "trainer.max_epochs=3"], output_dir=out))
    assert any(
        f"{last} is unusable" in r.getMessage() and str(best) in r.getMessage() for r in caplog.records
    )
    # the resumed run rewrites its own last.ckpt (not a last-v1.ckpt that ckpt_path=last would not find)
    assert torch.load(last, weights_only=True)["global_step"] == 12
    assert not list(last.parent.glob("last-v*"))


def test_an_unwritable_run_directory_fails_before_training(make_cfg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="run directory .* is not writable"):
        run(make_cfg([*TINY, "test=false"], output_dir=blocker / "run"))


def test_num_classes_null_is_read_from_the_annotation_file(make_cfg, tmp_path):
    out = tmp_path / "detr"
    run(
        make_cfg(["experiment=detr_coco_tiny", *SMOKE, "data.num_classes=null", "test=false"], output_dir=out)
    )
    stored = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["vtrain_config"]
    assert stored["data"]["num_classes"] == stored["model"]["num_classes"] == 11


def test_a_holdout_run_selects_on_held_out_training_data_and_tests_the_official_split(make_cfg, tmp_path):
    out = tmp_path / "run"
    run(make_cfg([*TINY, "data.holdout=0.1", "trainer.limit_val_batches=null"], output_dir=out))
    info = json.loads((out / "metrics.json").read_text())["run"]
    assert info["selection_split"] == "a hold-out of the training split"
    assert info["split_sizes"] == {"train": 2700, "val": 300, "test": 300}
    assert info["tested_checkpoint"].startswith("best by val/acc1: ")


def test_an_unreadable_ckpt_path_is_named_before_any_work(make_cfg, tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a torch file, nor any checkpoint")
    with pytest.raises(
        ValueError, match=r"ckpt_path=.*model.safetensors takes a vtrain checkpoint, and cannot"
    ):
        run(make_cfg([*TINY, "mode=eval", f"ckpt_path={weights}"]))
