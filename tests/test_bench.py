"""scripts/bench.py runs end to end and rewrites only its own section of the benchmark document."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

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
