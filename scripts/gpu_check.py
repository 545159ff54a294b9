"""The Python steps of scripts/gpu_check.sh (read that first):

    python scripts/gpu_check.py train --out DIR [--dry-run]   # a short bf16 training of each tiny experiment
    python scripts/gpu_check.py report --out DIR --output docs/benchmarks.md  # GPU sections + a summary

`train` runs every tiny experiment in this one process (one interpreter start instead of ten), each under
its own time limit, and appends one JSON line per experiment to DIR/train.jsonl as it finishes: the
seconds it took, its last training loss, its peak GPU memory, or the error that stopped it (the next one
runs anyway). `report` reads DIR/steps.tsv (written by gpu_check.sh), DIR/throughput.jsonl (scripts/bench.py
throughput) and DIR/train.jsonl and writes them as the GPU sections of the markdown file.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

TINY_EXPERIMENTS = (
    "vit_cifar10_tiny",
    "igpt_tiny",
    "lambda_tiny",
    "detr_coco_tiny",
    "detr_panoptic_tiny",
    "ttsr_tiny",
    "fpn_tiny",
    "fpt_tiny",
    "maskrcnn_tiny",
    "fpt_maskrcnn_tiny",
)
# --dry-run trains one tiny experiment per family (all ten take over five minutes on a 2-core CPU)
DRY_RUN_EXPERIMENTS = (
    "vit_cifar10_tiny", "igpt_tiny", "lambda_tiny", "detr_coco_tiny", "ttsr_tiny", "fpt_tiny",
)  # fmt: skip
# what else an experiment needs to stay short: iGPT's end-of-training linear probe reads the whole set
SHORTEN = {"igpt_tiny": ["task.probe.max_images=64", "task.samples.num=2"]}
THROUGHPUT_TITLE = "GPU: training throughput and peak memory against the installable references"
CHECK_TITLE = "GPU: tests and a short bf16 training of each tiny experiment"


def overrides(experiment: str, out: Path, dry_run: bool, batches: int) -> list[str]:
    """`debug=smoke` (a few steps, no workers, no progress bar) moved to the GPU in bf16; on --dry-run the
    same on CPU (still bf16 autocast, so that the same code runs)."""
    device = [] if dry_run else ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.benchmark=true"]
    return [
        f"experiment={experiment}",
        "debug=smoke",
        *device,
        "trainer.precision=bf16-mixed",
        f"trainer.limit_train_batches={batches}",
        "trainer.limit_val_batches=1",
        "test=false",
        f"paths.output_dir={out}",
        *SHORTEN.get(experiment, []),
    ]


def compose(args: list[str]):
    """The job config `python -m vtrain ARGS` would run (as tests/conftest.py's make_cfg composes it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from vtrain.config import config_dir, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=args, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = cfg.paths.output_dir
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


class StepTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise StepTimeout("time limit reached")


def last_train_loss(out: Path) -> float | None:
    metrics = out / "metrics.json"
    if not metrics.is_file():
        return None
    values = {k: v for k, v in json.loads(metrics.read_text()).items() if isinstance(v, float)}
    for key in ("train/loss_epoch", "train/loss", "train/loss_step"):  # the total, where it is logged
        if key in values:
            return values[key]
    losses = [v for k, v in values.items() if k.startswith("train/loss")]
    return losses[0] if losses else None


def train(args: argparse.Namespace) -> None:
    import torch

    from vtrain.cli import run

    cuda = torch.cuda.is_available() and not args.dry_run
    signal.signal(signal.SIGALRM, _alarm)
    for experiment in args.experiments:
        out = args.out / "runs" / experiment
        record: dict = {"experiment": experiment, "device": torch.cuda.get_device_name() if cuda else "cpu"}
        start = time.perf_counter()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        signal.alarm(args.limit)
        try:
            run(compose(overrides(experiment, out, args.dry_run, args.batches)))
            record["loss"] = last_train_loss(out)
            record["status"] = (
                "ok" if record["loss"] is None or math.isfinite(record["loss"]) else "non-finite"
            )
        except (Exception, StepTimeout) as error:
            traceback.print_exc()
            record["status"] = "timeout" if isinstance(error, StepTimeout) else "failed"
            record["error"] = f"{type(error).__name__}: {error}"[:300]
        finally:
            signal.alarm(0)
        record["seconds"] = round(time.perf_counter() - start, 1)
        record["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None
        print(json.dumps(record), flush=True)
        with (args.out / "train.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def throughput_table(results: list[dict]) -> str:
    """One row per family, contender and combination; vtrain / reference speed and memory ratios."""
    if not results:
        return "No throughput was measured (see the steps table).\n"
    rows = [
        "| family | model | precision | compile | batch | img/s, median | min-max | peak MiB | vtrain / it |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    ours: dict[tuple, dict] = {}
    for r in results:
        if (
            "img_s" in r
            and r["name"].startswith("vtrain")
            and (r["family"], r["precision"], r["compile"]) not in ours
        ):
            ours[(r["family"], r["precision"], r["compile"])] = r
    for r in results:
        key = (r["family"], r["precision"], r["compile"])
        compiled = "on" if r["compile"] else "off"
        head = f"| {r['family']} | {r['name']} | {r['precision']} | {compiled} | {r['batch']} |"
        if "error" in r:
            rows.append(f"{head} failed: {r['error'].replace('|', '/')} | | | |")
            continue
        mine = ours.get(key)
        ratio = "" if mine is None or mine is r else f"speed {mine['img_s'] / r['img_s']:.2f}"
        if ratio and mine.get("peak_mib") and r.get("peak_mib"):
            ratio += f", memory {mine['peak_mib'] / r['peak_mib']:.2f}"
        peak = "n/a" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f}"
        rows.append(f"{head} {r['img_s']:.1f} | {r['min']:.1f}-{r['max']:.1f} | {peak} | {ratio} |")
    return "\n".join(rows) + "\n"


def check_table(steps: list[list[str]], trainings: list[dict]) -> str:
    rows = ["| step | status | seconds |", "|---|---|---:|"]
    rows += [f"| {name} | {status} | {seconds} |" for name, status, seconds in steps]
    rows += [
        "",
        "| tiny experiment | status | seconds | last train loss | peak MiB |",
        "|---|---|---:|---:|---:|",
    ]
    for t in trainings:
        status = t["status"] if "error" not in t else f"{t['status']}: {t['error'].replace('|', '/')}"
        loss = "" if t.get("loss") is None else f"{t['loss']:.4f}"
        peak = "n/a" if t.get("peak_mib") is None else str(t["peak_mib"])
        rows.append(f"| {t['experiment']} | {status} | {t['seconds']} | {loss} | {peak} |")
    return "\n".join(rows) + "\n"


def report(args: argparse.Namespace) -> None:
    import bench

    steps = []
    if (args.out / "steps.tsv").is_file():
        steps = [line.split("\t") for line in (args.out / "steps.tsv").read_text().splitlines() if line]
    results = read_jsonl(args.out / "throughput.jsonl")
    trainings = read_jsonl(args.out / "train.jsonl")
    devices = sorted({r["device"] for r in results + trainings})
    import torch

    where = f"on {', '.join(devices) or 'no device'}; torch {torch.__version__}"
    rounds = statistics.median([r["rounds"] for r in results if "rounds" in r] or [0])
    command = "scripts/gpu_check.sh" + (" --dry-run" if args.dry_run else "")
    throughput = (
        f"Written by `{command}` {where}. Full training steps (forward, loss, backward, AdamW), "
        f"{rounds:.0f} rounds alternating the models of each family on the same random batch; bf16 is "
        "autocast, compile is `torch.compile` of the model (inductor); peak memory is "
        "`torch.cuda.max_memory_allocated` over the warm-up steps. The last column is vtrain's speed "
        "(and peak memory) over that model's. No installable reference exists for TTSR and FPT: FPT is "
        "compared with the same Mask R-CNN without it.\n\n" + throughput_table(results)
    )
    accelerator = "" if args.dry_run else " trainer.accelerator=gpu"
    check = (
        f"Written by `{command}` {where}. `pytest -m gpu` and each tiny experiment as `python -m vtrain "
        f"experiment=X debug=smoke{accelerator} trainer.precision=bf16-mixed` for a few steps (the "
        "arguments are in scripts/gpu_check.py).\n\n" + check_table(steps, trainings)
    )
    if args.output:
        bench.write_section(args.output, THROUGHPUT_TITLE, throughput)
        bench.write_section(args.output, CHECK_TITLE, check)
    print(f"## {THROUGHPUT_TITLE}\n\n{throughput}\n## {CHECK_TITLE}\n\n{check}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["train", "report"])
    parser.add_argument("--out", type=Path, required=True, help="the results directory of gpu_check.sh")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes")
    parser.add_argument("--experiments", nargs="+", default=None, help="default: all tiny (dry run: 6)")
    parser.add_argument("--batches", type=int, default=None, help="training batches per experiment (8 / 1)")
    parser.add_argument("--limit", type=int, default=60, help="seconds allowed per experiment")
    parser.add_argument("--output", type=Path, default=None, help="markdown file for the GPU sections")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.batches = args.batches or (1 if args.dry_run else 8)
    args.experiments = args.experiments or list(DRY_RUN_EXPERIMENTS if args.dry_run else TINY_EXPERIMENTS)
    train(args) if args.command == "train" else report(args)


if __name__ == "__main__":
    main(sys.argv[1:])
