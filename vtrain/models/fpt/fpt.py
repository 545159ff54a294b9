"""Feature Pyramid Transformer (Zhang et al., ECCV 2020): three transformers that let every level of a
feature pyramid interact with itself and with every other level, and a fusion that gives back a pyramid of
the same shapes.

For a pyramid ``[X_1 .. X_L]`` (finest first, all with ``C`` channels), level ``l`` of the output is

    conv3x3( concat( X_l, ST(X_l), GT(X_l <- X_m) for every coarser m, RT(X_l <- X_m) for every finer m ) )

that is ``(L + 1) * C`` channels brought back to ``C`` by one 3 x 3 convolution (paper, section 3.5, Fig. 2).
Section numbers are those of arXiv 2007.09451: 3.1 revisits the non-local interaction, 3.2-3.4 are the
three transformers, 3.5 the overall architecture, 4 the experiments.

* Self-Transformer (ST, section 3.2): non-local attention within one level, queries, keys and values from
  1 x 1 convolutions, dot-product similarity normalised by a Mixture of Softmaxes (MoS) with ``N = 2``:
  the channels of q and k are split into N parts, each part gives its own softmax over the keys, and
  the N attention maps are mixed with image-dependent weights ``pi_n = softmax_n(w_n^T mean_j(k_j))``.
* Grounding Transformer (GT, section 3.3, top-down): queries from the finer level, keys and values from
  the coarser one; similarity is the negative squared Euclidean distance ``-||q_i - k_j||^2``, MoS with
  ``N = 4``; the output has the finer level's size. The locality-constrained GT (LGT) lets each query
  see only the coarse positions in a ``window x window`` square centred on its own location (positions
  outside the map are zeros, as in the paper).
* Rendering Transformer (RT, section 3.4, bottom-up): the coarser level Q is rendered with the finer level
  K = V: channel weights ``w = GAP(K)``, ``Q_att = conv3x3(Q * w)``, ``V_dow = conv3x3_stride2(V)``, output
  ``conv3x3(Q_att + V_dow)``; no attention map.

Differences from the released code (github.com/ZHANGDONG-NJUST/FPT, ``lib/modeling``), where we follow
the paper:
    - GT there is a plain non-local block (dot product divided by the number of positions, no softmax, no
      MoS, 1 x 1 output conv + zero-initialised BN); here: negative Euclidean similarity and MoS N = 4.
    - The released ST pools keys and values (3 x 3 average pooling, stride 2), shares the q / k projection,
      computes the MoS weights from the mean query, and adds BN + a residual; here: separate q, k, v
      projections over all positions, MoS weights from the mean key, no residual (the input level is
      already part of the concatenation).
    - The released RT has one stride-2 convolution for every level pair, which only fits adjacent levels
      (its P5 <- P3 and P5 <- P2 pairs cannot add up); here, when the finer level is more than twice as
      large, the strided convolution's output is average-pooled to the coarser size (``adaptive_avg_pool2d``),
      so any pair and any image size works.
    - The released LGT (``LocalityconstrainedGT.py``) is a stand-alone local self-attention with relative
      position embeddings; here the LGT is the GT above restricted to a square window, as the paper
      describes it.
    - Not in the paper: attention logits are scaled by ``1 / sqrt(d)`` (d the channels per MoS part), as in
      the released ST and in Vaswani et al.; without it the Euclidean logits of 256-channel features saturate
      the softmax at initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MixtureOfSoftmaxes(nn.Module):
    """MoS attention (Yang et al. 2018 as used by FPT): ``sum_n pi_n softmax_j(s^n_ij) v_j``.

    Args:
        dim: channels of q and k, split into ``num_mixtures`` parts of ``dim // num_mixtures``.
        num_mixtures: N; 1 is the plain softmax.
        similarity: "dot" (``q . k``) or "euclidean" (``-||q - k||^2``).

    ``pi_n = softmax_n(w_n^T k_bar)`` with ``k_bar`` the mean key of the image; with a shared value per part,
    the mixture equals a sum of N ordinary attentions, each computed by ``scaled_dot_product_attention``
    (fused kernels, the attention map is never stored). The Euclidean similarity is written as a dot
    product of augmented vectors, ``[q, 1] . [2k, -|k|^2] = -||q - k||^2 + |q|^2``, where ``|q|^2`` is
    constant over the keys of one query and cancels in the softmax.
    """

    def __init__(self, dim: int, num_mixtures: int, similarity: str = "dot") -> None:
        super().__init__()
        if dim % num_mixtures:
            raise ValueError(
                f"MixtureOfSoftmaxes: dim {dim} must be divisible by num_mixtures {num_mixtures}"
            )
        if similarity not in ("dot", "euclidean"):
            raise ValueError(
                f"MixtureOfSoftmaxes: similarity must be 'dot' or 'euclidean', found {similarity!r}"
            )
        self.num_mixtures, self.similarity = num_mixtures, similarity
        self.part = dim // num_mixtures
        self.scale = 1.0 / math.sqrt(self.part)
        self.mixture = nn.Linear(dim, num_mixtures, bias=False) if num_mixtures > 1 else None
        if self.mixture is not None:
            nn.init.uniform_(self.mixture.weight, -(num_mixtures**-0.5), num_mixtures**-0.5)

    def mixture_weights(self, k: torch.Tensor) -> torch.Tensor:
        """``pi`` [B, N] from keys [B, S, C]."""
        if self.mixture is None:
            return k.new_ones(k.shape[0], 1)
        return self.mixture(k.mean(1)).softmax(-1)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [B, N, L, C / N]."""
        b, length, _ = x.shape
        return x.view(b, length, self.num_mixtures, self.part).transpose(1, 2)

    def logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Scaled similarities of parts: q [B, N, ..., d], k [B, N, ..., d] (same shape) -> [B, N, ...]; for
        the windowed (locality-constrained) attention, where the keys are gathered per query."""
        if self.similarity == "dot":
            return (q * k).sum(-1) * self.scale
        return -(q - k).pow(2).sum(-1) * self.scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, L, C], k [B, S, C], v [B, S, Cv] -> [B, L, Cv]."""
        pi = self.mixture_weights(k)
        qs, ks = self.split(q), self.split(k)
        if self.similarity == "euclidean":
            qs = torch.cat([qs, qs.new_ones(*qs.shape[:-1], 1)], -1)
            ks = torch.cat([2 * ks, -ks.pow(2).sum(-1, keepdim=True)], -1)
        vs = v.unsqueeze(1).expand(-1, self.num_mixtures, -1, -1)
        # Zero-padding q, k (or v) to one width changes no dot product and no output, and lets the fused
        # kernels, which need equal widths, run instead of the one that stores the [L, S] map.
        width = max(qs.shape[-1], vs.shape[-1])
        qs, ks = (F.pad(x, (0, width - x.shape[-1])) for x in (qs, ks))
        out = F.scaled_dot_product_attention(qs, ks, F.pad(vs, (0, width - vs.shape[-1])), scale=self.scale)
        return torch.einsum("bn,bnlc->blc", pi, out[..., : v.shape[-1]])


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H * W, C], channels contiguous (the fused attention kernels need it; otherwise
    ``scaled_dot_product_attention`` falls back to the one that stores the attention map)."""
    return x.flatten(2).transpose(1, 2).contiguous()


class SelfTransformer(nn.Module):
    """ST: MoS (N = ``num_mixtures``) self-attention within one level, [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, dim: int, num_mixtures: int = 2) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Conv2d(dim, dim, 1) for _ in range(3))
        self.attention = MixtureOfSoftmaxes(dim, num_mixtures, "dot")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        out = self.attention(_tokens(self.query(x)), _tokens(self.key(x)), _tokens(self.value(x)))
        return out.transpose(1, 2).reshape(b, c, h, w)


class GroundingTransformer(nn.Module):
    """GT: top-down attention, queries from the finer level, keys / values from the coarser one.

    Args:
        dim: channels of both levels.
        num_mixtures: MoS components (the paper: 4).
        window: None for the global GT; an odd side length for the locality-constrained GT (LGT), where a
            fine position attends to the ``window x window`` coarse positions centred on its own location.

    ``forward(fine [B, C, Hf, Wf], coarse [B, C, Hc, Wc]) -> [B, C, Hf, Wf]``.
    """

    def __init__(self, dim: int, num_mixtures: int = 4, window: int | None = None) -> None:
        super().__init__()
        if window is not None and (window < 1 or window % 2 == 0):
            raise ValueError(
                f"GroundingTransformer: window must be a positive odd side length, found {window}"
            )
        self.window = window
        self.query, self.key, self.value = (nn.Conv2d(dim, dim, 1) for _ in range(3))
        self.attention = MixtureOfSoftmaxes(dim, num_mixtures, "euclidean")

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        b, c, h, w = fine.shape
        q, k, v = self.query(fine), self.key(coarse), self.value(coarse)
        if self.window is None:
            out = self.attention(_tokens(q), _tokens(k), _tokens(v))
            return out.transpose(1, 2).reshape(b, c, h, w)
        return self._local(q, k, v)

    def _local(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """LGT, one window offset at a time (memory of a few fine-level maps, not of the window stack): the
        coarse keys / values shifted by the offset (zeros beyond the border) and brought to the fine grid by
        nearest-neighbour sampling, so fine position (y, x) meets coarse position
        (floor(y Hc / Hf) + dy, floor(x Wc / Wf) + dx)."""
        b, c, h, w = q.shape
        mos, n, radius = self.attention, self.attention.num_mixtures, self.window // 2
        pi = mos.mixture_weights(_tokens(k))  # from the mean key over the whole coarse map
        qs = q.view(b, n, mos.part, h, w).movedim(2, -1)  # [B, N, Hf, Wf, d]
        k_pad = F.pad(k, (radius,) * 4)
        v_pad = F.pad(v, (radius,) * 4)
        hc, wc = k.shape[-2:]
        offsets = [(dy, dx) for dy in range(self.window) for dx in range(self.window)]

        def fine_grid(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
            return F.interpolate(x[..., dy : dy + hc, dx : dx + wc], size=(h, w), mode="nearest")

        logits = torch.stack(
            [
                mos.logits(qs, fine_grid(k_pad, dy, dx).view(b, n, mos.part, h, w).movedim(2, -1))
                for dy, dx in offsets
            ],
            dim=2,
        )  # [B, N, window^2, Hf, Wf]
        weights = torch.einsum("bn,bnohw->bohw", pi, logits.softmax(2))  # mixture, [B, window^2, Hf, Wf]
        out = torch.zeros_like(q)
        for o, (dy, dx) in enumerate(offsets):
            out = out + weights[:, o : o + 1] * fine_grid(v_pad, dy, dx)
        return out


class RenderingTransformer(nn.Module):
    """RT: bottom-up rendering of the coarser level (Q) with the finer one (K = V).

    ``forward(coarse [B, C, Hc, Wc], fine [B, C, Hf, Wf]) -> [B, C, Hc, Wc]``: channel weights
    ``w = GAP(fine)``, ``Q_att = conv3x3(coarse * w)``, ``V_dow = conv3x3_stride2(fine)`` (average-pooled to
    Hc x Wc when the levels are further than one octave apart), output ``conv3x3(Q_att + V_dow)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.refine = nn.Conv2d(dim, dim, 3, padding=1)
        self.downsample = nn.Conv2d(dim, dim, 3, stride=2, padding=1)
        self.render = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        weights = fine.mean((2, 3), keepdim=True)
        q_att = self.refine(coarse * weights)
        v_dow = self.downsample(fine)
        if v_dow.shape[-2:] != coarse.shape[-2:]:
            v_dow = F.adaptive_avg_pool2d(v_dow, coarse.shape[-2:])
        return self.render(q_att + v_dow)


def _fusion(in_channels: int, out_channels: int, norm_layer: Callable[[int], nn.Module] | None) -> nn.Module:
    """The 3 x 3 convolution that brings a level's concatenated maps back to ``out_channels``."""
    if norm_layer is None:
        return nn.Conv2d(in_channels, out_channels, 3, padding=1)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    return nn.Sequential(conv, norm_layer(out_channels))


class FeaturePyramidTransformer(nn.Module):
    """The FPT neck: a pyramid of ``num_levels`` maps of ``dim`` channels (finest first) -> the same shapes.

    Args:
        dim: channels of every level (256 after an FPN).
        num_levels: L >= 1; level l gets ST, a GT from each of the L - 1 - l coarser levels and an RT from
            each of the l finer levels.
        st_mixtures, gt_mixtures: MoS components of ST (paper: 2) and GT (paper: 4).
        gt_window: None for the global GT, an odd side for the locality-constrained GT.
        norm_layer: None, or a normalisation ``norm_layer(channels)`` after each fusion convolution, which
            then has no bias (the released ``FPT_a.py`` puts GroupNorm there when its detector uses GN).

    Parameters (biases included, C = dim, with the default N): ST ``3 C^2 + 3 C + 2 C``, GT ``3 C^2 + 3 C +
    4 C``, RT ``27 C^2 + 3 C``, fusion of level l ``9 (L + 1) C^2 + C`` (``9 (L + 1) C^2 + 2 C`` with
    GroupNorm); for C = 256 and 4 levels: 4 ST + 6 GT + 6 RT + 4 fusions = 24,400,896 (24,401,920 with GN).
    """

    def __init__(
        self,
        dim: int = 256,
        num_levels: int = 4,
        st_mixtures: int = 2,
        gt_mixtures: int = 4,
        gt_window: int | None = None,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"FeaturePyramidTransformer: num_levels must be >= 1, found {num_levels}")
        self.dim, self.num_levels = dim, num_levels
        self.self_transformers = nn.ModuleList(SelfTransformer(dim, st_mixtures) for _ in range(num_levels))
        pairs = [(fine, coarse) for fine in range(num_levels) for coarse in range(fine + 1, num_levels)]
        # keys "fine_coarse": GT grounds level `fine` with level `coarse`, RT renders `coarse` with `fine`
        self.grounding = nn.ModuleDict(
            {f"{f}_{c}": GroundingTransformer(dim, gt_mixtures, gt_window) for f, c in pairs}
        )
        self.rendering = nn.ModuleDict({f"{f}_{c}": RenderingTransformer(dim) for f, c in pairs})
        self.fuse = nn.ModuleList(_fusion((num_levels + 1) * dim, dim, norm_layer) for _ in range(num_levels))

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``features``: L maps [B, dim, H_l, W_l], finest first -> L maps of the same shapes."""
        if len(features) != self.num_levels:
            raise ValueError(
                f"FeaturePyramidTransformer: expected {self.num_levels} levels, found {len(features)}"
            )
        outputs = []
        for level, x in enumerate(features):
            parts = [x, self.self_transformers[level](x)]
            for coarse in range(level + 1, self.num_levels):
                parts.append(self.grounding[f"{level}_{coarse}"](x, features[coarse]))
            for fine in range(level):
                parts.append(self.rendering[f"{fine}_{level}"](x, features[fine]))
            outputs.append(self.fuse[level](torch.cat(parts, 1)))
        return outputs
