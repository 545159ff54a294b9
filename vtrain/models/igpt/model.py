"""Image GPT (Chen et al. 2020, "Generative Pretraining from Pixels").

An image is downsampled, each pixel is replaced by the index of its nearest colour in a k-means palette
(``vtrain.data.palette``) and the indices are read in raster order: a sequence of ``img_size ** 2``
tokens. A GPT-2-style pre-norm decoder models that sequence, with the details of the official code
(openai/image-gpt ``src/model.py``):

* the norm rescales by the root mean square only (no mean subtraction, no bias): ``x / rms(x) * g``;
* the MLP activation is ``gelu2(x) = x * sigmoid(1.702 x)``;
* no linear layer has a bias;
* learned position embeddings; the autoregressive model reads a learned start-of-sequence vector
  ``sos`` in place of the token before the first pixel;
* the output projection ``head`` (``wtet``) is not tied to the input embedding and starts at zero, as
  does the classification head ``clf_head`` (``wclf``) used for fine-tuning.

The BERT variant (``causal=False``) drops the causal mask and the start vector; masked tokens enter as a
zero embedding (the official ``h * M``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vtrain.layers import checkpoint_seq


def gelu2(x: torch.Tensor) -> torch.Tensor:
    """The official activation ``x * sigmoid(1.702 x)``, a sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


class ImageGPTNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension: no mean subtraction, gain only.

    Args:
        dim: width D.
        eps: added to the mean square (the official 1e-5).
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., D] -> [..., D]"""
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class KVCache:
    """Keys and values of every layer for the positions decoded so far, preallocated for the whole sequence.

    Args:
        depth: number of layers.
        batch_size: B.
        num_heads: heads H.
        max_len: longest sequence (the model's ``seq_len``).
        head_dim: channels per head.
        device, dtype: of the stored tensors.

    Attributes:
        keys, values: per layer ``[B, H, max_len, head_dim]``; positions ``< length`` are filled.
        length: number of positions stored (the next position to decode).
    """

    def __init__(
        self,
        depth: int,
        batch_size: int,
        num_heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch_size, num_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.length = 0


class SelfAttention(nn.Module):
    """Multi-head self-attention without biases, causal or not, optionally reading / filling a KV cache.

    Args:
        dim: width D, split into ``num_heads`` heads.
        num_heads: heads H.
        causal: mask out later positions (the autoregressive objective).
    """

    def __init__(self, dim: int, num_heads: int, causal: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"ImageGPT SelfAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """Attend.

        Args:
            x: tokens [B, N, D]; with a cache, the N positions that follow the ``cache.length`` cached ones.
            cache: keys / values of the earlier positions; this call's are written into it (the caller
                advances ``cache.length`` once every layer has run).
            layer: index of this layer in the cache.

        Returns:
            [B, N, D]
        """
        B, N, D = x.shape
        # [B, N, 3 * D] -> 3 x [B, H, N, head_dim]; channels are (q|k|v, head, head_dim) as in transformers
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        mask, is_causal = None, self.causal and N > 1
        if cache is not None:
            start = cache.length
            cache.keys[layer][:, :, start : start + N] = k
            cache.values[layer][:, :, start : start + N] = v
            k = cache.keys[layer][:, :, : start + N]
            v = cache.values[layer][:, :, : start + N]
            if start > 0 and is_causal:
                # queries at positions start..start+N-1 see keys up to their own position
                positions = torch.arange(start + N, device=x.device)
                mask = positions[None, :] <= positions[start:, None]
                is_causal = False
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    """``fc2(gelu2(fc1(x)))`` without biases; hidden width ``hidden_dim``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=False)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> [B, N, D]"""
        return self.fc2(gelu2(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm decoder layer: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, causal: bool, eps: float) -> None:
        super().__init__()
        self.norm1 = ImageGPTNorm(dim, eps)
        self.attn = SelfAttention(dim, num_heads, causal)
        self.norm2 = ImageGPTNorm(dim, eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x: [B, N, D] -> [B, N, D]"""
        x = x + self.attn(self.norm1(x), cache, layer)
        return x + self.mlp(self.norm2(x))


class ImageGPT(nn.Module):
    """iGPT over sequences of palette indices.

    Args:
        vocab_size: palette size k (the paper's 9-bit palette: 512).
        img_size: side of the (square) downsampled image; the sequence has ``img_size ** 2`` tokens.
        embed_dim: width D.
        depth: number of decoder layers.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        causal: True for the autoregressive objective, False for BERT (no causal mask, no ``sos``).
        num_classes: outputs of the fine-tuning classifier on the mean-pooled final features (0: none).
        eps: epsilon of the norms.
        grad_checkpointing: recompute each layer's activations in the backward pass instead of keeping them
            (``vtrain.layers.checkpoint_seq``): less memory, about one more forward of compute, the same
            gradients. Sampling runs without grad and is unaffected.
    """

    def __init__(
        self,
        vocab_size: int = 512,
        img_size: int = 32,
        embed_dim: int = 512,
        depth: int = 24,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        causal: bool = True,
        num_classes: int = 0,
        eps: float = 1e-5,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size, self.img_size, self.embed_dim = vocab_size, img_size, embed_dim
        self.depth, self.num_heads, self.causal, self.num_classes = depth, num_heads, causal, num_classes
        self.seq_len = img_size * img_size
        self.grad_checkpointing = grad_checkpointing
        self.wte = nn.Embedding(vocab_size, embed_dim)
        self.wpe = nn.Parameter(torch.zeros(self.seq_len, embed_dim))
        self.sos = nn.Parameter(torch.zeros(embed_dim)) if causal else None
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, causal, eps) for _ in range(depth))
        self.norm = ImageGPTNorm(embed_dim, eps)
        self.head = nn.Linear(embed_dim, vocab_size, bias=False)
        self.clf_head = nn.Linear(embed_dim, num_classes, bias=False) if num_classes > 0 else None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation: embeddings N(0, 0.02) (positions 0.01), q / k / v N(0, 1 / D),
        attention output N(0, 1 / (D * depth)), MLP N(0, 0.02), both heads zero, norm gains one."""
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe, std=0.01)
        if self.sos is not None:
            nn.init.normal_(self.sos, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=1.0 / math.sqrt(self.embed_dim))
            nn.init.normal_(block.attn.proj.weight, std=1.0 / math.sqrt(self.embed_dim * self.depth))
            nn.init.normal_(block.mlp.fc1.weight, std=0.02)
            nn.init.normal_(block.mlp.fc2.weight, std=0.02)
            nn.init.ones_(block.norm1.weight)
            nn.init.ones_(block.norm2.weight)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.head.weight)
        if self.clf_head is not None:
            nn.init.zeros_(self.clf_head.weight)

    def no_weight_decay(self) -> set[str]:
        """Embeddings are not decayed (besides the 1-D gains and ``sos`` the optimizer groups skip)."""
        return {"wpe", "wte.weight"}

    def layer_id(self, name: str) -> int:
        """Depth of parameter ``name`` for layer-wise LR decay (``vtrain.tasks.common.layer_decay_groups``),
        the ViT rule on iGPT's names: 0 for the embeddings (``wte``, ``wpe``, ``sos``), ``i + 1`` for
        ``blocks.i.*``, ``depth + 1`` for the final norm and both heads."""
        if name in ("wpe", "sos") or name.startswith("wte."):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.ndim != 2 or not 0 < tokens.shape[1] <= self.seq_len:
            raise ValueError(
                f"ImageGPT expects tokens [B, L] with 0 < L <= seq_len {self.seq_len} "
                f"(img_size {self.img_size}), found shape {tuple(tokens.shape)}"
            )

    def _inputs(self, tokens: torch.Tensor, start: int, length: int) -> torch.Tensor:
        """Autoregressive input embeddings of positions ``start .. start + length - 1``: position t reads the
        token at t - 1 (``sos`` at t = 0), plus its position embedding. tokens: [B, >= start + length - 1]
        -> [B, length, D]."""
        x = self.wte(tokens[:, max(start - 1, 0) : start + length - 1])
        if start == 0:
            x = torch.cat([self.sos.expand(len(tokens), 1, -1), x], dim=1)
        return x + self.wpe[start : start + length]

    def forward_features(
        self, tokens: torch.Tensor, mask: torch.Tensor | None = None, layer: int | None = None
    ) -> torch.Tensor:
        """Hidden states of every position.

        Args:
            tokens: palette indices [B, L], L <= ``seq_len``, raster order.
            mask: BERT only: [B, L] bool, True where the token is hidden from the model.
            layer: stop after this many layers (1..depth) and return their output normalised without gain
                (linear-probe features); None or ``depth``: the final norm's output.

        Returns:
            [B, L, D]; with the autoregressive model, position t has seen tokens < t only.
        """
        self._check_tokens(tokens)
        if layer is not None and not 1 <= layer <= self.depth:
            raise ValueError(f"ImageGPT: layer must be in [1, {self.depth}], found {layer}")
        if self.causal:
            if mask is not None:
                raise ValueError("ImageGPT: a token mask is for the BERT model (causal=False)")
            x = self._inputs(tokens, 0, tokens.shape[1])
        else:
            x = self.wte(tokens)
            if mask is not None:
                x = x * (~mask)[..., None].to(x.dtype)
            x = x + self.wpe[: tokens.shape[1]]
        depth = self.depth if layer is None else layer
        x = checkpoint_seq(self.blocks[:depth], x, self.grad_checkpointing)
        if depth == self.depth:
            return self.norm(x)
        return F.rms_norm(x, (x.shape[-1],), eps=self.norm.eps)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, L] (and the BERT mask [B, L]) -> logits [B, L, vocab_size]; autoregressive: position t
        predicts token t from tokens < t."""
        return self.head(self.forward_features(tokens, mask))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Fine-tuning head: final features [B, L, D] -> class logits [B, num_classes] of their mean."""
        if self.clf_head is None:
            raise ValueError("ImageGPT was built with num_classes=0: no classification head")
        return self.clf_head(features.mean(dim=1))

    def _decode(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run input embeddings [B, N, D] of the next N positions through the layers with the cache and
        return the logits of the last one [B, vocab_size]."""
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        cache.length += x.shape[1]
        return self.head(self.norm(x[:, -1]))

    @torch.no_grad()
    def sample(
        self,
        num_samples: int | None = None,
        prefix: torch.Tensor | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        length: int | None = None,
    ) -> torch.Tensor:
        """Draw images token by token (autoregressive model only).

        Args:
            num_samples: B, when there is no ``prefix``.
            prefix: [B, P] tokens to complete (e.g. the top half of images); None samples unconditionally.
            temperature: logits are divided by it; 0 takes the most likely token (greedy).
            top_k: keep only the k most likely tokens before sampling.
            generator: random numbers for reproducible samples (on the model's device).
            use_cache: keep the keys / values of past positions (one layer pass per token); False recomputes
                the whole prefix at each step (the official sampler), for checking and benchmarking.
            length: stop after this many tokens (default ``seq_len``: whole images).

        Returns:
            tokens [B, length], the prefix included.
        """
        if not self.causal:
            raise ValueError("ImageGPT.sample needs the autoregressive model (causal=True)")
        device = self.wpe.device
        if prefix is None:
            if num_samples is None:
                raise ValueError("ImageGPT.sample: give num_samples or a prefix")
            prefix = torch.zeros(num_samples, 0, dtype=torch.long, device=device)
        batch, known = prefix.shape
        length = self.seq_len if length is None else length
        if not known <= length <= self.seq_len:
            raise ValueError(
                f"ImageGPT.sample: expected prefix {known} <= length {length} <= seq_len {self.seq_len}"
            )
        tokens = torch.zeros(batch, length, dtype=torch.long, device=device)
        tokens[:, :known] = prefix.to(device)
        cache = None
        if use_cache:
            cache = KVCache(
                self.depth, batch, self.num_heads, length, self.embed_dim // self.num_heads,
                device, self.wpe.dtype,
            )  # fmt: skip
        for t in range(known, length):
            if cache is not None:
                # the first call reads sos and the whole prefix, later calls one new position each
                start = cache.length
                logits = self._decode(self._inputs(tokens, start, t + 1 - start), cache)
            else:
                logits = self.forward(tokens[:, : t + 1])[:, -1]
            tokens[:, t] = _pick(logits, temperature, top_k, generator)
        return tokens


def _pick(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row of logits [B, V]: argmax at temperature 0, else a draw from the softmax of
    ``logits / temperature`` restricted to the ``top_k`` largest."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _igpt(overrides: dict, **preset) -> ImageGPT:
    """Build a preset; ``overrides`` may replace any constructor argument, the preset's included."""
    return ImageGPT(**{**preset, **overrides})


def igpt_s(**overrides) -> ImageGPT:
    """iGPT-S: D=512, 24 layers, 8 heads, 32x32 input, 512 colours; 76,571,648 parameters."""
    return _igpt(overrides, embed_dim=512, depth=24, num_heads=8)


def igpt_m(**overrides) -> ImageGPT:
    """iGPT-M: D=1024, 36 layers, 8 heads, 32x32 input; 455,157,760 parameters."""
    return _igpt(overrides, embed_dim=1024, depth=36, num_heads=8)


def igpt_l(**overrides) -> ImageGPT:
    """iGPT-L: D=1536, 48 layers, 16 heads, 32x32 input; 1,362,250,752 parameters."""
    return _igpt(overrides, embed_dim=1536, depth=48, num_heads=16)


def igpt_xl(**overrides) -> ImageGPT:
    """iGPT-XL: D=3072, 60 layers, 64x64 input (the paper's 6.8 B model); 24 heads is our choice, the
    paper does not give the number. 6,810,875,904 parameters."""
    return _igpt(overrides, embed_dim=3072, depth=60, num_heads=24, img_size=64)


def igpt_tiny(**overrides) -> ImageGPT:
    """CPU-sized, not from the paper: D=64, 4 layers, 4 heads, 16x16 input, 16 colours; 215,680 parameters."""
    return _igpt(overrides, embed_dim=64, depth=4, num_heads=4, img_size=16, vocab_size=16)


PRESETS = {
    "igpt_s": igpt_s,
    "igpt_m": igpt_m,
    "igpt_l": igpt_l,
    "igpt_xl": igpt_xl,
    "igpt_tiny": igpt_tiny,
}
