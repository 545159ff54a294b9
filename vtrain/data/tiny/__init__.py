"""Tiny stand-in data sets in the real on-disk formats, built from real images shipped inside the
scikit-learn and scikit-image wheels (no download), for demos, smoke training and tests.

Every builder is deterministic (the same bytes for the same seed and library versions) and takes well
under 10 s. ``build_tiny(name, root)`` builds a set only when it is missing, in a temporary folder next to
its target that is then renamed into place, so concurrent builds (DDP ranks, parallel tests) are safe and
a killed build leaves no partial set (its temporary folder is deleted by the next build).

    cifar10_tiny   <root>/cifar-10-batches-py/: CIFAR-10 python pickles, 5 x 600 train + 300 test images.
                   Classes "zero" .. "nine": an 8 x 8 scikit-learn digit scaled to 20-26 px, at a random
                   position on 32 x 32, light ink of a random colour on a dark ground, light noise.
                   Train and test use disjoint digit samples (the last 20 % of each digit class go to test).
    cifar100_tiny  <root>/cifar-100-python/: CIFAR-100 pickles, 500 train + 200 test images. Fine classes
                   "00" .. "99": two digits side by side; coarse classes "00-04" .. "95-99" (fine // 5).
    imagenet_tiny  <root>/{train,val}/<wnid>/*.JPEG and the same images in the Kaggle layout under
                   <root>/kaggle/. 10 classes, one real photo each (see IMAGENET_TINY_PHOTOS), 30 train +
                   10 val random crops per class at 80 x 80; labels are ImageNet-1k indices.
    coco_tiny      <root>/annotations/instances_{train,val}2017.json and <root>/{train,val}2017/*.jpg: COCO
                   detection, 48 train + 16 val images of 160 x 128, 128 x 160 or 144 x 128 px. Backgrounds
                   are crops of real photos (grass, gravel, brick, the Summer Palace); on them 1-4 objects of
                   24-64 px at known places, 2 px apart, so the boxes are exact. Categories (ids with gaps,
                   as COCO's): 1 cat (Chelsea's face), 3 astronaut, 7 digit (a scikit-learn digit on a
                   yellow card), 10 coffee cup. Every eighth image also has a row of small digit cards
                   annotated as one iscrowd = 1 region with an RLE mask; the last train image has no object.
    cufed_tiny     <root>/train/{input,ref}/*.png (84 HR 96 x 96 crops of 7 real photos, each with a reference
                   cut from the same photo) and <root>/test/CUFED5/NNN_{0..5}.png (6 HR images of 3 other
                   photos, references 1-4 of decreasing similarity, 5 from another photo). See tiny/cufed.py.
    cityscapes_tiny <root>/{leftImg8bit,gtFine}/{train,val}/<city>/: the Cityscapes layout, 40 + 12
                   street-like 128 x 256 scenes of real photo regions, exact label ids (tiny/cityscapes.py).
    coco_panoptic_tiny <root>/annotations/panoptic_{train,val}2017.json + PNG folders,
                   instances_{train,val}2017.json, {train,val}2017/*.jpg: the 48 + 16 coco_tiny scenes, each
                   on two stuff regions (grass, gravel, brick wall, building), exact thing masks
                   (tiny/coco_panoptic.py).

Command line: ``python -m vtrain.data.tiny --root DIR [names...]`` builds each set into ``DIR/<name>``.
"""

import argparse
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vtrain.data.tiny.cityscapes import build_cityscapes_tiny
from vtrain.data.tiny.classification import (
    IMAGENET_TINY_PHOTOS,
    build_cifar10_tiny,
    build_cifar100_tiny,
    build_imagenet_tiny,
)
from vtrain.data.tiny.coco import COCO_TINY_CATEGORIES, build_coco_tiny
from vtrain.data.tiny.coco_panoptic import build_coco_panoptic_tiny
from vtrain.data.tiny.cufed import build_cufed_tiny
from vtrain.io import remove_stale_temporaries, temporary_sibling

log = logging.getLogger(__name__)

__all__ = ["COCO_TINY_CATEGORIES", "IMAGENET_TINY_PHOTOS", "TINY_SETS", "TinySet", "build_tiny", "main"]


@dataclass(frozen=True)
class TinySet:
    """A tiny set: its builder ``build(staging_root, seed) -> built folder`` and the folder it occupies
    under a data set root ("" = the root itself)."""

    build: Callable[[Path, int], Path]
    folder: str


TINY_SETS: dict[str, TinySet] = {
    "cifar10_tiny": TinySet(build_cifar10_tiny, "cifar-10-batches-py"),
    "cifar100_tiny": TinySet(build_cifar100_tiny, "cifar-100-python"),
    "imagenet_tiny": TinySet(build_imagenet_tiny, ""),
    "coco_tiny": TinySet(build_coco_tiny, ""),
    "cufed_tiny": TinySet(build_cufed_tiny, ""),
    "coco_panoptic_tiny": TinySet(build_coco_panoptic_tiny, ""),
    "cityscapes_tiny": TinySet(build_cityscapes_tiny, ""),
}


def _present(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def build_tiny(name: str, root: str | Path, seed: int = 0) -> Path:
    """Build tiny set ``name`` so that ``root`` is a data set root for its loader; returns the folder it
    occupies (``root/cifar-10-batches-py`` for cifar10_tiny, ``root`` itself for imagenet_tiny).

    Nothing is built when that folder already exists and is not empty. Otherwise the set is built in a
    temporary folder beside it and renamed into place: a rename onto a non-empty folder fails, so when two
    processes race, the first one's set stays and the other's is discarded.
    """
    if name not in TINY_SETS:
        raise ValueError(f"unknown tiny data set {name!r}; expected one of {sorted(TINY_SETS)}")
    spec = TINY_SETS[name]
    target = Path(root) / spec.folder
    if _present(target):
        log.debug("%s: %s already exists, not building", name, target)
        return target
    for path in remove_stale_temporaries(target.parent):
        log.info("%s: removed %s, left by a build that was killed", name, path)
    staging = temporary_sibling(target)
    staging.mkdir(parents=True)
    try:
        built = spec.build(staging, seed)
        try:
            os.rename(built, target)
        except OSError:
            if not _present(target):
                raise
            log.info("%s: %s was built by another process meanwhile", name, target)
        else:
            log.info("%s: built %s", name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vtrain.data.tiny", description="Build the tiny stand-in data sets (if missing)."
    )
    parser.add_argument("--root", required=True, type=Path, help="each set is built into ROOT/<name>")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(sorted(TINY_SETS))} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(TINY_SETS))
    if unknown:
        parser.error(f"unknown tiny data sets {unknown}; expected any of {sorted(TINY_SETS)}")
    for name in args.names or sorted(TINY_SETS):
        build_tiny(name, args.root / name, seed=args.seed)
        print(f"{name}: {args.root / name}")
