"""DETR's encoder-decoder transformer (section 3.2, figure 10 of the paper).

It differs from the original transformer in three ways: the spatial position encoding is added to the
queries and keys (never the values) of every attention layer, the object queries are added as query
position encoding to every decoder layer while the decoder input starts at zero, and the decoder returns
the (final-LayerNorm'ed) output of every layer for the auxiliary losses. Post-norm by default, as trained.

Sequences are batch-first here ([B, L, D]); module names follow the official code
(``transformer.encoder.layers.0.self_attn.in_proj_weight``, ``transformer.decoder.norm.weight``).
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from vtrain.layers import checkpointed

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class TransformerEncoderLayer(nn.Module):
    """Self-attention over the image features, then a feed-forward network; each sublayer residual.

    Args:
        d_model: width D.
        nhead: attention heads.
        dim_feedforward: hidden width of the feed-forward network.
        dropout: on attention weights and after each sublayer and the FFN activation.
        activation: ``relu`` (DETR) or ``gelu``.
        normalize_before: pre-norm (LayerNorm at the start of each sublayer) instead of post-norm.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _activation(activation)
        self.normalize_before = normalize_before

    def _self_attention(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None, pos: torch.Tensor | None
    ) -> torch.Tensor:
        q = k = _with_pos(x, pos)
        return self.dropout1(
            self.self_attn(q, k, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
        )

    def _feedforward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(
        self,
        src: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """src [B, L, D], key_padding_mask [B, L] (True = padding), pos [B, L, D] -> [B, L, D]"""
        if self.normalize_before:
            src = src + self._self_attention(self.norm1(src), key_padding_mask, pos)
            return src + self._feedforward(self.norm2(src))
        src = self.norm1(src + self._self_attention(src, key_padding_mask, pos))
        return self.norm2(src + self._feedforward(src))


class TransformerDecoderLayer(nn.Module):
    """Self-attention among the object queries, cross-attention to the encoder memory, feed-forward.

    Args: as :class:`TransformerEncoderLayer`.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = _activation(activation)
        self.normalize_before = normalize_before

    def _self_attention(self, x: torch.Tensor, query_pos: torch.Tensor | None) -> torch.Tensor:
        q = k = _with_pos(x, query_pos)
        return self.dropout1(self.self_attn(q, k, x, need_weights=False)[0])

    def _cross_attention(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_key_padding_mask: torch.Tensor | None,
        pos: torch.Tensor | None,
        query_pos: torch.Tensor | None,
    ) -> torch.Tensor:
        attended = self.multihead_attn(
            _with_pos(x, query_pos),
            _with_pos(memory, pos),
            memory,
            key_padding_mask=memory_key_padding_mask,
            need_weights=False,
        )[0]
        return self.dropout2(attended)

    def _feedforward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_key_padding_mask: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            tgt: decoder stream [B, Q, D].
            memory: encoder output [B, L, D].
            memory_key_padding_mask: [B, L], True on padding.
            pos: position encoding of the memory [B, L, D].
            query_pos: object queries [B, Q, D].

        Returns:
            [B, Q, D]
        """
        if self.normalize_before:
            tgt = tgt + self._self_attention(self.norm1(tgt), query_pos)
            tgt = tgt + self._cross_attention(
                self.norm2(tgt), memory, memory_key_padding_mask, pos, query_pos
            )
            return tgt + self._feedforward(self.norm3(tgt))
        tgt = self.norm1(tgt + self._self_attention(tgt, query_pos))
        tgt = self.norm2(tgt + self._cross_attention(tgt, memory, memory_key_padding_mask, pos, query_pos))
        return self.norm3(tgt + self._feedforward(tgt))


class TransformerEncoder(nn.Module):
    """``num_layers`` copies of ``layer``, then ``norm`` if given (pre-norm only); ``grad_checkpointing``
    recomputes each layer in the backward pass (``vtrain.layers.checkpointed``)."""

    def __init__(
        self,
        layer: TransformerEncoderLayer,
        num_layers: int,
        norm: nn.Module | None = None,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm
        self.grad_checkpointing = grad_checkpointing

    def forward(
        self, src: torch.Tensor, key_padding_mask: torch.Tensor | None = None, pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """src [B, L, D], key_padding_mask [B, L], pos [B, L, D] -> memory [B, L, D]"""
        for layer in self.layers:
            src = checkpointed(layer, src, key_padding_mask, pos, enabled=self.grad_checkpointing)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    """``num_layers`` copies of ``layer``; the shared final ``norm`` is applied to every layer's output;
    ``grad_checkpointing`` as :class:`TransformerEncoder`."""

    def __init__(
        self,
        layer: TransformerDecoderLayer,
        num_layers: int,
        norm: nn.Module,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm
        self.grad_checkpointing = grad_checkpointing

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_key_padding_mask: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As :meth:`TransformerDecoderLayer.forward` -> every layer's output [num_layers, B, Q, D]."""
        outputs = []
        for layer in self.layers:
            tgt = checkpointed(
                layer, tgt, memory, memory_key_padding_mask, pos, query_pos, enabled=self.grad_checkpointing
            )
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class Transformer(nn.Module):
    """DETR's transformer: encoder over the flattened feature map, decoder over the object queries.

    Args:
        d_model: width D (256 in DETR).
        nhead: attention heads.
        num_encoder_layers: encoder depth.
        num_decoder_layers: decoder depth (one set of predictions per layer).
        dim_feedforward: FFN hidden width.
        dropout: dropout everywhere in the transformer.
        activation: ``relu`` or ``gelu``.
        normalize_before: pre-norm layers (and a final encoder LayerNorm) instead of post-norm.
        grad_checkpointing: recompute every encoder and decoder layer's activations in the backward pass
            instead of keeping them: less memory, the same gradients.
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        layer_args = (d_model, nhead, dim_feedforward, dropout, activation, normalize_before)
        self.encoder = TransformerEncoder(
            TransformerEncoderLayer(*layer_args),
            num_encoder_layers,
            nn.LayerNorm(d_model) if normalize_before else None,
            grad_checkpointing,
        )
        self.decoder = TransformerDecoder(
            TransformerDecoderLayer(*layer_args),
            num_decoder_layers,
            nn.LayerNorm(d_model),
            grad_checkpointing,
        )
        self.d_model = d_model
        self.nhead = nhead
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def forward(
        self, src: torch.Tensor, mask: torch.Tensor, query_embed: torch.Tensor, pos_embed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            src: projected backbone features [B, D, H, W].
            mask: [B, H, W] bool, True on padding.
            query_embed: object queries [Q, D].
            pos_embed: position encoding of ``src`` [B, D, H, W].

        Returns:
            decoder outputs of every layer [num_decoder_layers, B, Q, D] and the memory [B, D, H, W].
        """
        batch, channels, h, w = src.shape
        src = src.flatten(2).transpose(1, 2)  # [B, HW, D], row-major cells
        pos_embed = pos_embed.flatten(2).transpose(1, 2)
        query_pos = query_embed[None].expand(batch, -1, -1)
        mask = mask.flatten(1)
        memory = self.encoder(src, key_padding_mask=mask, pos=pos_embed)
        hs = self.decoder(
            torch.zeros_like(query_pos),
            memory,
            memory_key_padding_mask=mask,
            pos=pos_embed,
            query_pos=query_pos,
        )
        return hs, memory.transpose(1, 2).reshape(batch, channels, h, w)
