"""Drawing helpers shared by the predictors and `mode=browse`: enlarging small images so that labels stay
legible, named boxes, category colours and mask overlays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

Colour = tuple[int, int, int]


def enlarged(picture: Image.Image | torch.Tensor, short_side: int) -> tuple[Image.Image | torch.Tensor, int]:
    """`picture` (a PIL image, or a uint8 tensor [..., H, W]) enlarged by the smallest whole factor that
    makes its short side at least `short_side`, and that factor. Pixels are repeated, so a small input stays
    sharp and the labels drawn on it legible."""
    if isinstance(picture, Image.Image):
        scale = max(1, -(-short_side // min(picture.size)))
        return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST), scale
    scale = max(1, -(-short_side // min(picture.shape[-2:])))
    return repeated(picture, scale), scale


def repeated(picture: torch.Tensor, scale: int) -> torch.Tensor:
    """[..., H, W] -> [..., scale * H, scale * W], each pixel (or mask value) repeated scale x scale."""
    if scale == 1:
        return picture
    return picture.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def category_colour(category: int, known: Mapping[int, Sequence[int]] | None = None) -> Colour:
    """The data set's colour of `category` (COCO panoptic's), else a fixed hue of its own."""
    if known and category in known:
        return tuple(int(v) for v in known[category])
    return ((category * 67) % 256, (category * 151) % 256, (category * 229) % 256)


def named_boxes(
    picture: torch.Tensor, boxes: torch.Tensor, names: Sequence[str], colours: Sequence[Colour] | str
) -> torch.Tensor:
    """uint8 [3, H, W] with xyxy `boxes` [N, 4] in pixels, each name in white on its box's colour."""
    if not len(boxes):
        return picture
    width = max(2, min(picture.shape[1:]) // 200)
    colours = list(colours) if not isinstance(colours, str) else colours
    return draw_bounding_boxes(
        picture, boxes.float(), list(names), colours, width=width, label_colors="white", fill_labels=True
    )


def overlay(picture: torch.Tensor, masks: torch.Tensor, colours: Sequence[Colour], alpha: float = 0.5):
    """uint8 [3, H, W] with boolean `masks` [N, H, W] blended in their colours."""
    if not len(masks):
        return picture
    return draw_segmentation_masks(picture, masks.bool().cpu(), alpha=alpha, colors=list(colours))
