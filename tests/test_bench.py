"""scripts/bench.py runs end to end and rewrites only its own section of the benchmark document;
scripts/gpu_check.sh runs its steps on CPU (--dry-run) and reports them."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_write_section_replaces_its_own_section_only(tmp_path):
    doc = tmp_path / "benchmarks.md"
    bench.write_section(doc, "A", "first a\n")
    bench.write_section(doc, "B", "first b\n")
    bench.write_section(doc, "A", "second a\n")
    assert doc.read_text() == "# Benchmarks\n\n## A\n\nsecond a\n\n## B\n\nfirst b\n"


@pytest.mark.slow
def test_vit_benchmark_runs_and_writes_its_table(tmp_path):
    doc = tmp_path / "benchmarks.md"
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "bench.py"),
        "vit",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--output",
        str(doc),
    ]
    subprocess.run(
        cmd, check=True, capture_output=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    text = doc.read_text()
    assert "## ViT-S/16 training throughput and memory against timm" in text
    assert "| vtrain `vit_s16` |" in text and "| timm `vit_small_patch16_224` |" in text


def test_memory_benchmark_measures_less_saved_activations_with_checkpointing_and_the_same_gradients(
    monkeypatch,
):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    memory = importlib.import_module("bench_memory")
    args = memory.parse(["--model", "vit_ti16", "--image-size", "32", "--batch-size", "2"])
    cpu = torch.device("cpu")
    loss = memory.loss_fn(args, cpu)
    saved, grads = {}, {}
    for setting, flag in memory.SETTINGS.items():
        saved[setting], grads[setting] = memory.saved_for_backward(memory.build(args, flag, cpu), loss)
    # 12 blocks of 2 images x (4 patches + 1) tokens x 192 channels: without checkpointing each block saves
    # a dozen activations; with it, each block's input (7.5 KiB) and what lies outside the blocks
    block_input = 2 * 5 * 192 * 4 / 2**20
    assert 12 * block_input < saved["on"] < 0.3 * saved["off"]
    assert memory.max_relative_difference(grads["off"], grads["on"]) < 1e-6
    assert len(grads["on"]) == len(list(memory.build(args, True, cpu).parameters()))


gpu_spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(gpu_spec)
gpu_spec.loader.exec_module(gpu_check)


def test_gpu_report_gives_vtrain_over_each_reference_and_every_step(tmp_path):
    common = {
        "family": "vit",
        "precision": "bf16",
        "compile": True,
        "batch": 128,
        "size": 224,
        "device": "H200",
    }
    lines = [
        {**common, "name": "vtrain vit_s16", "img_s": 3000.0, "min": 2900.0, "max": 3100.0, "rounds": 3,
         "peak_mib": 9000.0},
        {**common, "name": "timm vit_small_patch16_224", "img_s": 2500.0, "min": 2400.0, "max": 2600.0,
         "rounds": 3, "peak_mib": 10000.0},
        {**common, "family": "detr", "name": "transformers DetrForObjectDetection",
         "error": "ImportError: x"},
    ]  # fmt: skip
    (tmp_path / "throughput.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "steps.tsv").write_text("pytest_gpu\tok\t40\nthroughput_fpt\ttimeout after 50 s\t50\n")
    training = {"experiment": "ttsr_tiny", "device": "H200", "status": "ok", "loss": 0.25, "seconds": 9.5}
    (tmp_path / "train.jsonl").write_text(json.dumps({**training, "peak_mib": 812}) + "\n")
    doc = tmp_path / "benchmarks.md"
    gpu_check.main(["report", "--out", str(tmp_path), "--output", str(doc)])
    text = doc.read_text()
    assert f"## {gpu_check.THROUGHPUT_TITLE}" in text and f"## {gpu_check.CHECK_TITLE}" in text
    assert "| vit | timm vit_small_patch16_224 | bf16 | on | 128 | 2500.0 | 2400.0-2600.0 | 10000 | " in text
    assert "speed 1.20, memory 0.90 |" in text
    assert "| detr | transformers DetrForObjectDetection | bf16 | on | 128 | failed: ImportError: x |" in text
    assert "| throughput_fpt | timeout after 50 s | 50 |" in text
    assert "| ttsr_tiny | ok | 9.5 | 0.2500 | 812 |" in text


def test_throughput_refuses_an_unknown_combination():
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "throughput",
            "--family",
            "vit",
            "--combos",
            "fp16",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert (
        result.returncode == 2
        and "--combos: expected fp32, bf16, fp32+compile or bf16+compile" in result.stderr
    )


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_on_cpu(tmp_path):
    """scripts/gpu_check.sh --dry-run: the GPU check's steps at toy sizes on CPU (a few minutes), every step
    ok, every family measured, one tiny experiment per family trained."""
    out = tmp_path / "gpu_check"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "BUDGET": "900"}
    result = subprocess.run(
        [str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    assert all(status == "ok" for _, status, _ in steps), steps
    families = {json.loads(line)["family"] for line in (out / "throughput.jsonl").read_text().splitlines()}
    assert families == {"vit", "igpt", "lambda", "ttsr", "detr", "fpt"}
    trained = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [t["experiment"] for t in trained] == list(gpu_check.DRY_RUN_EXPERIMENTS)
    assert all(t["status"] == "ok" for t in trained), trained
    text = (out / "benchmarks.md").read_text()
    assert f"## {gpu_check.THROUGHPUT_TITLE}" in text and f"## {gpu_check.CHECK_TITLE}" in text
    assert "## Gradient checkpointing: vit_ti16 training step memory and time (CPU)" in text


def test_alternating_rates_runs_the_untimed_work_before_each_round():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    before = {"a": lambda: calls.append("drain a")}
    rates = bench.alternating_rates(steps, rounds=2, steps_per_round=1, batch_size=4, before_round=before)
    assert calls == ["drain a", "a", "b", "drain a", "a", "b"]
    assert len(rates["a"]) == len(rates["b"]) == 2 and all(r > 0 for r in rates["a"])


@pytest.mark.slow
def test_data_benchmark_times_the_loaders_and_writes_its_table(tmp_path):
    """CIFAR from the tiny set (python batches, then shards) and the ImageNet recipe with decode=cpu /
    tensor / gpu (the device path on the CPU) on synthetic 500 x 375 JPEGs, one batch each."""
    doc = tmp_path / "benchmarks.md"
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "bench.py"),
        "data",
        *("--pipelines", "cifar", "imagenet_gpu_decode", "--device", "cpu", "--toy"),
        *("--workers", "0", "--rounds", "1", "--steps", "1"),
        *("--imagenet", str(tmp_path / "absent"), "--cifar", str(tmp_path / "absent")),
        *("--output", str(doc), "--jsonl", str(tmp_path / "data.jsonl")),
    ]
    subprocess.run(
        cmd, check=True, capture_output=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    text = doc.read_text()
    assert "## Loader throughput per worker process" in text
    assert "| cifar | vtrain (python batches) | 0 | 4 |" in text
    assert "| cifar | vtrain (shards) | 0 | 4 |" in text
    assert "| imagenet_gpu_decode | vtrain decode=gpu | 0 | 4 |" in text
    rows = [json.loads(line) for line in (tmp_path / "data.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == [
        "vtrain (python batches)",
        "vtrain (shards)",
        "vtrain decode=cpu",
        "vtrain decode=tensor",
        "vtrain decode=gpu",
    ]
    assert all(r["img_s"] > 0 for r in rows)


def test_the_step_profile_times_every_step_of_both_deit_paths(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    bench_data_steps = importlib.import_module("bench_data_steps")
    rng = np.random.default_rng(0)
    files = []
    for _ in range(3):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        files.append(buffer.getvalue())
    result = bench_data_steps.profile(files, rounds=1)
    names = set(bench_data_steps.STEP_NAMES.values())
    assert set(result["decode=cpu"]) == names - {"tensor to PIL image"}
    assert set(result["decode=tensor"]) == names
    assert all(ms > 0 for steps in result.values() for ms in steps.values())
    assert "| **total** |" in bench_data_steps.table(result)


def test_lambda_timm_bench_maps_timm_weights_onto_the_same_layer(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    bench_lambda_timm = importlib.import_module("bench_lambda_timm")
    ours, theirs = (m.eval() for m in bench_lambda_timm.layer_pair(dim=16, size=7, r=3, heads=2, dim_k=4))
    x = torch.randn(2, 16, 7, 7)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_detr_bench_trains_vtrain_with_the_detection_task_optimizer(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    bench_detr_vs = importlib.import_module("bench_detr_vs")
    from vtrain.models.detr import detr_tiny

    model = detr_tiny(backbone_weights="scratch")
    opt = bench_detr_vs.vtrain_optimizer(model)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]  # conf/task/detection.yaml
    rest, backbone = opt.param_groups
    assert (rest["lr"], backbone["lr"], backbone["weight_decay"]) == (1e-4, 1e-5, 1e-4)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == trained
