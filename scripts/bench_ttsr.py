"""TTSR benchmarks, run through scripts/bench.py:

    python scripts/bench.py ttsr --output docs/benchmarks.md
    python scripts/bench.py ttsr --device cuda --batch-size 9
    python scripts/bench.py ttsr --reference-dir ../TTSR --output docs/benchmarks.md   # vs the official code

With ``--reference-dir`` (a checkout of https://github.com/researchmm/TTSR, not a package: ``git clone
https://github.com/researchmm/TTSR``), inference is timed against the official ``model.TTSR`` holding the
same weights, the two alternating within each round, after a check that both give the same outputs.

1. Inference of the paper's `ttsr` on one CUFED5-sized image (HR 500 x 332, so LR 125 x 83) with one
   reference of the same size: seconds per image and peak memory.
2. Training step at the CUFED training size (HR 160 x 160, references 160 x 160): the reconstruction-only
   step (TTSR-rec) and the full TTSR step (perceptual + transferal perceptual + WGAN-GP with 2 critic
   updates), Adam, all as in vtrain.tasks.SuperResolutionTask.

Random weights and images (the numbers do not depend on them). Peak memory: `torch.cuda.max_memory_allocated`
on CUDA; on CPU the growth of the resident set of a fresh child process per measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import bench
import torch
import torch.nn.functional as F
from torch import nn

TITLE = "TTSR: inference on a CUFED5-sized image, training step at 160 x 160"
HR_SIZE = (332, 500)  # (height, width) of a typical CUFED5 image
TRAIN_SIZE = 160
# researchmm/TTSR at the commit these numbers were taken against
OFFICIAL_COMMIT = "550e4c9e525b5860083a00c5f936e4bfe2428da2"


def images(batch: int, hr: tuple[int, int], ref: tuple[int, int], device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=g) * 2 - 1).to(device)

    h, w = hr
    return {
        "lr": rand(batch, 3, h // 4, w // 4),
        "lr_up": rand(batch, 3, h, w),
        "hr": rand(batch, 3, h, w),
        "ref": rand(batch, 3, *ref),
        "ref_down_up": rand(batch, 3, *ref),
    }


def official_ttsr(reference_dir: Path, weights: dict[str, torch.Tensor]) -> nn.Module:
    """researchmm/TTSR's ``model.TTSR`` (the paper's 16+16+8+4 blocks, 64 features) holding ``weights``
    (vtrain's keys are the official ones). Its LTE asks torchvision for ImageNet VGG19 weights, which would
    be a download: they are overwritten by ``weights`` anyway, so VGG19 is built without them; its
    utils.py imports cv2 only for its image metrics, which are not run here."""
    if not (reference_dir / "model" / "TTSR.py").is_file():
        raise FileNotFoundError(
            f"--reference-dir {reference_dir}: no model/TTSR.py (expected researchmm/TTSR)"
        )
    import torchvision

    sys.modules.setdefault("cv2", types.ModuleType("cv2"))
    sys.path.insert(0, str(reference_dir))
    vgg19 = torchvision.models.vgg19
    torchvision.models.vgg19 = lambda pretrained=False, **kw: vgg19(weights=None, **kw)
    try:
        from model.TTSR import TTSR as OfficialTTSR

        model = OfficialTTSR(argparse.Namespace(num_res_blocks="16+16+8+4", n_feats=64, res_scale=1.0))
    finally:
        torchvision.models.vgg19 = vgg19
    copy = {k.replace("LTE.", "LTE_copy.", 1): v for k, v in weights.items() if k.startswith("LTE.")}
    model.load_state_dict({**weights, **copy})
    return model


def inference_models(
    args: argparse.Namespace, device: torch.device, names: tuple[str, ...] = ("vtrain", "official")
) -> dict[str, Callable]:
    """vtrain's `ttsr` and, with --reference-dir, the official model with the same weights: name -> a
    function of the four input images returning (sr, S, T_lv3, T_lv2, T_lv1)."""
    import vtrain

    model = vtrain.create_model("ttsr", vgg_weights="scratch").eval()
    models = {}
    if "vtrain" in names:
        model.to(device)
        models["vtrain"] = lambda lr, lr_up, ref, rdu: tuple(model(lr, lr_up, ref, rdu))
    if args.reference_dir and "official" in names:
        official = official_ttsr(args.reference_dir, model.state_dict()).to(device).eval()
        models["official"] = lambda lr, lr_up, ref, rdu: official(lr=lr, lrsr=lr_up, ref=ref, refsr=rdu)
    return models


def inference(args: argparse.Namespace, device: torch.device, name: str = "vtrain") -> Callable[[], None]:
    forward = inference_models(args, device, (name,))[name]
    batch = images(1, args.size, args.size, device)

    @torch.no_grad()
    def run() -> None:
        forward(batch["lr"], batch["lr_up"], batch["ref"], batch["ref_down_up"])
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def against_official(args: argparse.Namespace, device: torch.device) -> tuple[dict, dict[str, float]]:
    """Seconds per inference of each implementation, alternating within each round, and the largest
    absolute difference of each output (after a check that they are the same computation)."""
    torch.manual_seed(0)
    models = inference_models(args, device)
    batch = images(1, args.size, args.size, device)
    with torch.no_grad():
        ours, theirs = (
            models[n](batch["lr"], batch["lr_up"], batch["ref"], batch["ref_down_up"]) for n in models
        )
    names = ("sr", "S", "T_lv3", "T_lv2", "T_lv1")
    diffs = {n: (a - b).abs().max().item() for n, a, b in zip(names, ours, theirs, strict=True)}
    diffs.update(differing_picks(args, device, batch))
    return timed_rounds(models, batch, args.repeats, device), diffs


def differing_picks(args: argparse.Namespace, device: torch.device, batch: dict) -> dict[str, float]:
    """Where vtrain's search and the official relevance matrix pick different reference patches: how
    many LR positions, and the largest gap (official relevance of its pick minus that of vtrain's); a gap
    at float32 rounding means both picks are equally relevant (a tie)."""
    import vtrain
    from vtrain.models.ttsr.search_transfer import most_relevant

    torch.manual_seed(0)
    model = vtrain.create_model("ttsr", vgg_weights="scratch").to(device).eval()
    with torch.no_grad():
        query = model.LTE((batch["lr_up"] + 1) / 2)[2]
        key = model.LTE((batch["ref_down_up"] + 1) / 2)[2]
        q = F.normalize(F.unfold(query, kernel_size=3, padding=1), dim=1)
        k = F.normalize(F.unfold(key, kernel_size=3, padding=1), dim=1)
        relevance = torch.bmm(k.transpose(1, 2), q)  # as researchmm/TTSR model/SearchTransfer.py:24-31
        best, official = relevance.max(dim=1)
        ours = most_relevant(query, key)
        gap = best - relevance.gather(1, ours[:, None])[:, 0]
    return {"picks differing": int((ours != official).sum()), "largest gap": gap.max().item()}


def timed_rounds(models: dict[str, Callable], batch: dict, repeats: int, device: torch.device) -> dict:
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(repeats):
        order = list(models.items())
        for name, forward in order if round_ % 2 == 0 else order[::-1]:  # neither always goes first
            start = time.perf_counter()
            with torch.no_grad():
                forward(batch["lr"], batch["lr_up"], batch["ref"], batch["ref_down_up"])
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def train(args: argparse.Namespace, device: torch.device, full: bool) -> Callable[[], None]:
    """One optimizer step of SuperResolutionTask's training_step, without Lightning around it."""
    import vtrain
    from vtrain.models.ttsr import Discriminator
    from vtrain.models.ttsr.losses import (
        PerceptualLoss,
        critic_loss,
        generator_adversarial_loss,
        reconstruction_loss,
        transferal_perceptual_loss,
    )

    model = vtrain.create_model("ttsr", vgg_weights="scratch").to(device).train()
    lte = list(model.LTE.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("LTE.")]
    opt_g = torch.optim.Adam([{"params": rest}, {"params": lte, "lr": 1e-5}], lr=1e-4)
    batch = images(args.batch_size, (TRAIN_SIZE, TRAIN_SIZE), (TRAIN_SIZE, TRAIN_SIZE), device)
    if full:
        perceptual = PerceptualLoss().to(device)
        critic = Discriminator(TRAIN_SIZE).to(device)
        opt_d = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.0, 0.9))

    def step() -> None:
        out = model(batch["lr"], batch["lr_up"], batch["ref"], batch["ref_down_up"])
        loss = reconstruction_loss(out.sr, batch["hr"])
        if full:
            loss = loss + 1e-2 * perceptual(out.sr, batch["hr"])
            textures = model.texture_features(out.sr)
            loss = loss + 1e-2 * transferal_perceptual_loss(textures, out.S, out.T_lv3, out.T_lv2, out.T_lv1)
            critic.requires_grad_(True)
            for _ in range(2):
                d_loss, _ = critic_loss(critic, out.sr, batch["hr"])
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            critic.requires_grad_(False)
            loss = loss + 1e-3 * generator_adversarial_loss(critic, out.sr)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def make(what: str, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    if what.endswith("inference"):
        return inference(args, device, "official" if what == "official_inference" else "vtrain")
    return train(args, device, full=what == "train_full")


def seconds(step: Callable[[], None], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def peak_mib(what: str, args: argparse.Namespace) -> float:
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        step = make(what, args, torch.device(args.device))
        step()
        return torch.cuda.max_memory_allocated() / 2**20
    cmd = [sys.executable, bench.__file__, "ttsr", "--child", what, "--batch-size", str(args.batch_size)]
    cmd += ["--size", *map(str, args.size)]
    if args.reference_dir:
        cmd += ["--reference-dir", str(args.reference_dir)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def child(args: argparse.Namespace) -> None:
    base = bench.peak_rss_kib()
    step = make(args.child, args, torch.device("cpu"))
    step()
    print(json.dumps({"peak_mib": (bench.peak_rss_kib() - base) / 1024}))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/bench.py ttsr",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="training batch (default: 9 CUDA, 1 CPU)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default: 10 CUDA, 2 CPU)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--size", type=int, nargs=2, default=list(HR_SIZE), metavar=("H", "W"), help="HR size of inference"
    )
    parser.add_argument("--reference-dir", type=Path, default=None, help="a researchmm/TTSR checkout")
    parser.add_argument("--skip-training", action="store_true", help="inference only")
    parser.add_argument("--skip-full", action="store_true", help="leave out the full-loss training step")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write the section to")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (9 if cuda else 1)
    args.repeats = args.repeats or (10 if cuda else 2)
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    if args.child:
        child(args)
        return
    torch.manual_seed(0)
    device = torch.device(args.device)
    h, w = args.size
    train_size = f"batch {args.batch_size}, {TRAIN_SIZE} x {TRAIN_SIZE}"
    inference_label = f"inference, LR {w // 4} x {h // 4} -> HR {w} x {h}, one reference {w} x {h}"
    labels = {
        "inference": inference_label,
        "official_inference": f"{inference_label}, official researchmm/TTSR",
        "train_rec": f"training step, TTSR-rec (L1), {train_size}",
        "train_full": f"training step, TTSR (all losses, 2 critic steps), {train_size}",
    }
    trainings = [] if args.skip_training else ["train_rec"] if args.skip_full else ["train_rec", "train_full"]
    rows = ["| what | seconds (median) | min-max | peak memory (MiB) |", "|---|---:|---:|---:|"]
    times = {}
    if args.reference_dir:
        if not (args.reference_dir / "model" / "TTSR.py").is_file():
            raise SystemExit(
                f"--reference-dir {args.reference_dir}: no model/TTSR.py (a researchmm/TTSR checkout)"
            )
        for _ in range(args.warmup):
            inference(args, device)()
        found, diffs = against_official(args, device)
        times = {"inference": found["vtrain"], "official_inference": found["official"]}
    else:
        times["inference"] = seconds(make("inference", args, device), args.repeats, args.warmup)
    for what in trainings:
        times[what] = seconds(make(what, args, device), args.repeats, args.warmup)
    for what, found in times.items():
        spread = f"{min(found):.3f}-{max(found):.3f}"
        rows.append(
            f"| {labels[what]} | {statistics.median(found):.3f} | {spread} | {peak_mib(what, args):.0f} |"
        )
        print(rows[-1], flush=True)
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} thread(s)"
    )
    command = " ".join(["python scripts/bench.py ttsr", *argv])
    positions = (h // 4) * (w // 4)
    comparison = ""
    if args.reference_dir:
        ratio = statistics.median(times["official_inference"]) / statistics.median(times["inference"])
        picks, gap = diffs.pop("picks differing"), diffs.pop("largest gap")
        largest = ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
        comparison = (
            f" Against the official code (researchmm/TTSR {OFFICIAL_COMMIT[:7]}, same weights and images, "
            f"the two alternating within each round): **vtrain / official inference speed {ratio:.2f}**. "
            f"Largest absolute differences of the outputs: {largest}. The searches pick different reference "
            f"patches at {picks} of {positions:,} positions, where the official relevances of the two picks "
            f"differ by at most {gap:.1e} (ties at float32 rounding: vtrain sums 9 pixel inner products, "
            "the official code one 2,304-long dot product); everywhere else the textures are the same."
        )
    body = (
        "The paper's `ttsr` (16 + 16 + 8 + 4 residual blocks, 64 features), fp32, random weights, "
        f"on {where}; torch {torch.__version__}; {args.repeats} timed runs after {args.warmup} warm-up. "
        f"Inference includes the texture search over every reference position ({positions:,} x "
        f"{positions:,} patch pairs at this size).{comparison}\n\n" + "\n".join(rows) + f"\n\n`{command}`\n"
    )
    print(body)
    if args.output:
        bench.write_section(args.output, TITLE, body)
