"""Reference-based super-resolution (TTSR): each LR input with its reference image -> the 4x output.

`predict.ref` is one reference image for every input, or a folder whose files pair with the inputs by
file name (stem). With `predict.hr=true` the inputs are HR images: each is cut to multiples of 4 and
downsampled 4x (bicubic, as the CUFED5 protocol builds its LR inputs) and PSNR / SSIM on Y (and RGB) are
reported per image against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vtrain.data.cufed import IMAGE_SUFFIXES, hr_sample, lr_sample
from vtrain.data.images import open_rgb
from vtrain.metrics.sr import sr_metrics
from vtrain.predictors.base import Predictor, Size


def to_pixels(x: torch.Tensor) -> Image.Image:
    """[3, H, W] in [-1, 1] -> an 8-bit RGB image (the official rounding of (x + 1) * 127.5)."""
    array = ((x.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


class References:
    """The reference image of each input: one file for all, or the file of the same stem in a folder."""

    def __init__(self, source: str | None) -> None:
        if not source:
            raise ValueError(
                "mode=predict of a reference-based SR model needs references: predict.ref=FILE (one for "
                "every input) or predict.ref=FOLDER (paired with the inputs by file name)"
            )
        self.path = Path(source).expanduser()
        if self.path.is_dir():
            files = [p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
            self.by_stem = {p.stem: p for p in sorted(files)}
        elif self.path.is_file():
            self.by_stem = None
        else:
            raise FileNotFoundError(f"predict.ref={source}: no such file or folder")

    def __call__(self, path: Path) -> Path:
        if self.by_stem is None:
            return self.path
        if path.stem not in self.by_stem:
            raise FileNotFoundError(
                f"predict.ref={self.path}: no reference named {path.stem}.* for the input {path} (the "
                f"folder's references pair with the inputs by file name)"
            )
        return self.by_stem[path.stem]


class SuperResolutionPredictor(Predictor):
    """`task(batch).sr` for one input at a time; writes `<stem>_x4.png` (the output) and `<stem>.png`
    (bicubic upsampling, the output, the HR image when given, and the reference, side by side)."""

    batch_size = 1  # every input and reference has its own size

    def __init__(self, references: References, hr: bool, y_border: int = 0, rgb_border: int = 4) -> None:
        super().__init__()
        self.references, self.hr = references, hr
        self.y_border, self.rgb_border = y_border, rgb_border

    def prepare(self, image: Image.Image, path: Path) -> dict:
        ref = open_rgb(self.references(path))
        sample = hr_sample(image, ref) if self.hr else lr_sample(image, ref)
        return sample

    def outputs(self, task: Any, batch: dict, sizes: list[Size]) -> list[dict]:
        sr = task(batch).sr.float()
        records = []
        for i in range(len(sr)):
            record: dict[str, Any] = {
                "lr_size": list(batch["lr"].shape[-1:-3:-1]),
                "output_size": list(sr.shape[-1:-3:-1]),
                "_sr": sr[i].cpu(),
                "_bicubic": batch["lr_up"][i].float().cpu(),
                "_ref": batch["ref"][i].float().cpu(),
            }
            if self.hr:
                hr = batch["hr"][i : i + 1].float()
                ours = sr_metrics(sr[i : i + 1], hr, self.y_border, self.rgb_border)
                bicubic = sr_metrics(batch["lr_up"][i : i + 1].float(), hr, self.y_border, self.rgb_border)
                record["metrics"] = {k: round(float(v), 4) for k, v in ours.items()}
                record["bicubic_metrics"] = {k: round(float(v), 4) for k, v in bicubic.items()}
                record["_hr"] = hr[0].cpu()
            records.append(record)
        return records

    def save(self, out_dir: Path, stem: str, image: Image.Image, record: dict) -> dict:
        to_pixels(record["_sr"]).save(out_dir / f"{stem}_x4.png")
        files = super().save(out_dir, stem, image, record)
        return files | {
            "output_png": f"{stem}_x4.png",
            "reference": str(self.references(Path(record["path"]))),
        }

    def draw(self, image: Image.Image, record: dict) -> Image.Image:
        panels = [record["_bicubic"], record["_sr"], *([record["_hr"]] if "_hr" in record else [])]
        pictures = [to_pixels(p) for p in panels]
        height = pictures[0].height
        ref = to_pixels(record["_ref"])
        pictures.append(ref.resize((max(1, round(ref.width * height / ref.height)), height), Image.BICUBIC))
        row = Image.new("RGB", (sum(p.width for p in pictures), height))
        left = 0
        for picture in pictures:
            row.paste(picture, (left, 0))
            left += picture.width
        return row
