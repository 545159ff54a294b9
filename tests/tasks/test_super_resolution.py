"""SuperResolutionTask: a smoke run of the tiny experiment through the CLI (metrics per reference level,
pictures, eval of the checkpoint), one step of the full TTSR losses with manual optimisation and the
warm-up, and (slow) TTSR-rec beating bicubic upsampling on the held-out tiny test images."""

from __future__ import annotations

import json
import time

import pytest
import pytorch_lightning as L
import torch
from hydra.utils import instantiate

from tests.conftest import SMOKE
from vtrain.cli import run

TINY = [
    "experiment=ttsr_tiny",
    *SMOKE,
    "data.test_ref_levels=[1,5]",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


def test_smoke_fit_and_eval_per_reference_level(make_cfg, tmp_path):
    out = tmp_path / "fit"
    run(make_cfg([*TINY, "logger=csv"], output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
        assert f"val/{name}" in metrics and f"val/bicubic_{name}" in metrics
        assert f"test/{name}_ref1" in metrics and f"test/{name}_ref5" in metrics
    assert 0 < metrics["test/ssim_y_ref1"] <= 1 and metrics["test/bicubic_psnr_y"] > 15
    pictures = sorted((out / "pictures").glob("*.png"))
    assert len(pictures) == 1  # limit_val_batches=1, one picture per validation image
    from PIL import Image

    width, height = Image.open(pictures[0]).size
    assert height == 88 and width >= 3 * 120 + 1  # bicubic, output, ground truth, then the reference

    out_eval = tmp_path / "eval"
    last = out / "checkpoints" / "last.ckpt"
    run(make_cfg([*TINY, "mode=eval", f"ckpt_path={last}"], output_dir=out_eval))
    evaluated = json.loads((out_eval / "metrics.json").read_text())
    assert evaluated["test/psnr_y_ref5"] == pytest.approx(metrics["test/psnr_y_ref5"], abs=1e-4)


def test_full_losses_step_with_critic_updates_after_the_warm_up(make_cfg):
    cfg = make_cfg(
        [
            *TINY,
            "task.per_weight=0.01",
            "task.tpl_weight=0.01",
            "task.adv_weight=0.001",
            "task.lte_lr=1e-5",
            "task.warmup_epochs=1",
            "data.crop_size=64",
            "task.discriminator={_target_: vtrain.models.ttsr.Discriminator, in_size: 64}",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=0",
            "data.batch_size=2",
            "logger=none",
        ]
    )
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    task = instantiate(cfg.task, model=model)
    critic_before = task.discriminator.fc2.weight.detach().clone()
    lte_before = model.LTE.slice1[0].weight.detach().clone()
    seen: list[set[str]] = []

    class Record(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append({k for k in trainer.callback_metrics if k.startswith("train/")})

    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Record()],
    )
    trainer.fit(task, datamodule=datamodule)
    assert "train/adv_loss_step" not in seen[0] and "train/rec_loss_step" in seen[0]  # warm-up epoch
    assert {"train/per_loss_step", "train/tpl_loss_step", "train/adv_loss_step", "train/d_loss_step"} <= seen[
        1
    ]
    opt_g, opt_d = task.optimizers()
    critic_param = next(iter(opt_d.optimizer.state))
    assert int(opt_d.optimizer.state[critic_param]["step"]) == 2  # gan_k critic steps, second epoch only
    generator_param = next(iter(opt_g.optimizer.state))
    assert int(opt_g.optimizer.state[generator_param]["step"]) == 2
    assert opt_g.optimizer.param_groups[1]["lr"] == 1e-5  # the texture extractor's group
    assert not torch.equal(task.discriminator.fc2.weight, critic_before)
    assert not torch.equal(model.LTE.slice1[0].weight, lte_before)
    assert all(torch.isfinite(trainer.callback_metrics[k]) for k in seen[1])


def test_validation_runs_every_n_epochs_counted_after_the_warm_up(make_cfg):
    cfg = make_cfg(
        [
            *TINY,
            "task.warmup_epochs=1",
            "task.val_every_epochs=2",
            "trainer.check_val_every_n_epoch=1",
            "trainer.max_epochs=5",
            "trainer.limit_train_batches=1",
            "trainer.num_sanity_val_steps=0",
            "task.num_pictures=0",
            "logger=none",
        ]
    )
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    task = instantiate(cfg.task, model=model)
    validated: list[int] = []

    class Record(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            validated.append(trainer.current_epoch)

    trainer = L.Trainer(
        max_epochs=5,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Record()],
    )
    trainer.fit(task, datamodule=datamodule)
    assert validated == [2, 4]  # 0-based: after the 2nd and 4th epochs that follow the warm-up epoch
    with pytest.raises(ValueError, match="set trainer.check_val_every_n_epoch=1 \\(found 10\\)"):
        L.Trainer(max_epochs=1, check_val_every_n_epoch=10, logger=False, enable_progress_bar=False).fit(
            instantiate(cfg.task, model=model), datamodule=datamodule
        )


def test_cufed_experiments_validate_at_the_official_epochs(make_cfg):
    # researchmm/TTSR main.py:42-47: evaluate after main epochs 10, 20, ... that follow num_init_epochs
    for name, expected in (
        ("ttsr_cufed", [12, 22, 32, 42, 52]),
        ("ttsr_rec_cufed", list(range(10, 201, 10))),
    ):
        cfg = make_cfg([f"experiment={name}"])
        task = instantiate(
            cfg.task, model=torch.nn.Module(), discriminator=None, adv_weight=0.0, per_weight=0.0
        )
        epochs = [e + 1 for e in range(cfg.trainer.max_epochs) if task.validates_after(e)]
        assert epochs == expected, name
        assert cfg.trainer.check_val_every_n_epoch == 1 and cfg.test_ckpt == "last"


@pytest.mark.slow
def test_ttsr_rec_beats_bicubic_on_held_out_tiny_images(make_cfg, tmp_path):
    out = tmp_path / "run"
    # One thread: on a CPU shared with other jobs, two OpenMP threads per process oversubscribe the cores
    # and a step takes ten times longer.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        run(
            make_cfg(
                ["experiment=ttsr_tiny", "~callbacks.progress_bar", "data.num_workers=0"], output_dir=out
            )
        )
    finally:
        torch.set_num_threads(threads)
    minutes = (time.perf_counter() - start) / 60
    metrics = json.loads((out / "metrics.json").read_text())
    print(
        f"ttsr_tiny: test PSNR-Y {metrics['test/psnr_y_ref1']:.2f} dB (ref 1) vs bicubic "
        f"{metrics['test/bicubic_psnr_y']:.2f} dB, in {minutes:.1f} min"
    )
    # the untrained network is about 2 dB below bicubic (its random correction is noise)
    assert metrics["test/psnr_y_ref1"] > metrics["test/bicubic_psnr_y"] + 0.05
    assert metrics["test/ssim_y_ref1"] > metrics["test/bicubic_ssim_y"]


def test_cufed_experiments_carry_the_paper_recipe(make_cfg):
    full = make_cfg(["experiment=ttsr_cufed"])
    assert full.model.name == "ttsr" and list(full.model.num_res_blocks) == [16, 16, 8, 4]
    assert full.model.n_feats == 64 and full.data.batch_size == 9 and full.data.ref_size == 160
    task = full.task
    assert (task.rec_weight, task.per_weight, task.tpl_weight, task.adv_weight) == (1.0, 1e-2, 1e-2, 1e-3)
    assert task.optimizer.lr == 1e-4 and list(task.optimizer.betas) == [0.9, 0.999] and task.lte_lr == 1e-5
    assert task.discriminator_optimizer.lr == 1e-4 and list(task.discriminator_optimizer.betas) == [0.0, 0.9]
    assert (task.gan_k, task.gp_weight, task.warmup_epochs) == (2, 10.0, 2)
    assert task.discriminator.in_size == 160 and task.y_border == 0
    rec = make_cfg(["experiment=ttsr_rec_cufed"]).task
    assert (rec.per_weight, rec.tpl_weight, rec.adv_weight, rec.warmup_epochs) == (0.0, 0.0, 0.0, 0)
    assert rec.discriminator is None
