"""`mode=lr_find`: Lightning's range test on a tiny experiment raises the optimizer's LR step by step and
writes its plot and its suggestion, and nothing else."""

from __future__ import annotations

import json
import math

from PIL import Image

from vtrain.cli import run

TINY = [
    "experiment=vit_cifar10_tiny",
    "mode=lr_find",
    "trainer=smoke",
    "trainer.limit_train_batches=null",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "lr_find.num_training=16",
    "lr_find.min_lr=1e-5",
    "lr_find.max_lr=1.0",
]


def test_lr_find_writes_its_plot_and_suggestion(make_cfg, tmp_path, capsys):
    out = tmp_path / "run"
    suggestion = run(make_cfg(TINY, output_dir=out))
    document = json.loads((out / "lr_find.json").read_text())
    assert document["suggestion"] == suggestion and 1e-5 <= suggestion <= 1.0
    assert 12 <= document["steps"] <= 16 and len(document["loss"]) == document["steps"]
    lrs = document["lr"]
    assert all(math.isfinite(v) for v in lrs) and lrs == sorted(lrs) and lrs[0] < 1e-4 < 1e-2 < lrs[-1]
    # the tiny experiment's batch is its reference: the override is the suggestion itself
    assert document["override"] == f"task.optimizer.lr={suggestion:.3g}"
    with Image.open(out / "lr_find.png") as image:
        image.load()
        assert image.size[0] > 100
    assert f"task.optimizer.lr={suggestion:.3g}" in capsys.readouterr().out
    assert not list(out.glob("**/*.ckpt"))  # the search's temporary checkpoint is removed, nothing else saved
