"""SAN-M blocks: self-attention with an FSMN memory (SenseVoice / Paraformer encoders).

A SAN-M attention layer projects its input with one ``linear_q_k_v`` to queries, keys and
values, runs multi-head scaled dot-product attention (``linear_out`` after it) and adds an
FSMN memory: a depthwise ``Conv1d`` (``fsmn_block``, no bias, kernel ``K``, zero padding
``(K-1)//2 + shift`` left and the rest right) over the values, plus the values themselves.
Parameter names follow FunASR (``MultiHeadedAttentionSANM``, ``EncoderLayerSANM``,
``PositionwiseFeedForward``) so checkpoints load one to one.

Two attention regimes:

* full context (default, as SenseVoice is trained): every frame sees every valid frame and
  the FSMN sees ``(K-1)//2`` frames each side;
* block-causal chunks (``chunk_ids`` given): a frame sees the frames of its own chunk and of
  all earlier chunks, and the FSMN's right context stops at the end of the frame's chunk
  (left context reaches into earlier chunks). This is what :meth:`SANMEncoderLayer.step`
  computes incrementally with a KV cache and an FSMN left-context cache, so a chunked
  offline pass equals chunk-by-chunk streaming. Weights trained full-context lose some
  accuracy in this regime (less right context); that is the latency trade-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_position_encoding(
    positions: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """FunASR ``SinusoidalPositionEncoder`` table: ``[sin(p w_i), cos(p w_i)]``.

    ``w_i = exp(-i ln(10000) / (dim/2 - 1))`` for ``i < dim/2``; SenseVoice numbers
    positions from 1.

    Args:
        positions: (T,) positions (float or long).
        dim: even encoding width.

    Returns:
        (T, dim) encoding.
    """
    if dim % 2 != 0 or dim < 4:
        raise ValueError(f"sinusoidal position encoding needs an even dim >= 4, got {dim}")
    increment = math.log(10000.0) / (dim / 2 - 1)
    inv_timescales = torch.exp(
        torch.arange(dim // 2, device=positions.device, dtype=torch.float32) * -increment
    )
    scaled = positions.to(torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1).to(dtype)


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (as FunASR's ``LayerNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class PositionwiseFeedForward(nn.Module):
    """``w_2(dropout(relu(w_1(x))))`` (FunASR names)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, ffn_dim)
        self.w_2 = nn.Linear(ffn_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        return self.w_2(self.dropout(torch.relu(self.w_1(x))))


@dataclass
class SANMCache:
    """Streaming cache of one SAN-M layer (block-causal regime).

    Attributes:
        key: (B, H, S, d_k) keys of all frames seen so far.
        value: (B, H, S, d_k) values of all frames seen so far.
        fsmn: (B, L, D) the last ``L`` (FSMN left padding) value frames, zeros at start.
    """

    key: torch.Tensor
    value: torch.Tensor
    fsmn: torch.Tensor


def chunk_window_mask(chunk_ids: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Which FSMN taps a frame may read in the block-causal regime.

    Args:
        chunk_ids: (T,) non-decreasing chunk index of every frame.
        left, right: FSMN padding on each side (``left + right + 1`` taps).

    Returns:
        (T, left + right + 1) bool: tap ``j`` of frame ``t`` reads frame ``t + j - left``,
        allowed when that frame exists and is not in a later chunk.
    """
    num = chunk_ids.shape[0]
    source = torch.arange(num, device=chunk_ids.device)[:, None] + torch.arange(
        -left, right + 1, device=chunk_ids.device)[None, :]
    inside = (source >= 0) & (source < num)
    source_chunk = chunk_ids[source.clamp(0, max(num - 1, 0))]
    return inside & (source_chunk <= chunk_ids[:, None])


class SANMAttention(nn.Module):
    """Multi-head self-attention with FSMN memory (FunASR ``MultiHeadedAttentionSANM``).

    Args:
        in_dim: input width (the first SenseVoice block takes the 560-d features).
        d_model: attention width.
        num_heads: heads (``d_model % num_heads == 0``).
        kernel_size: FSMN kernel (11 in SenseVoice).
        dropout: attention-probability and FSMN dropout.
        fsmn_shift: extra left padding of the FSMN (SenseVoice: 0).
    """

    def __init__(self, in_dim: int, d_model: int, num_heads: int, kernel_size: int = 11,
                 dropout: float = 0.0, fsmn_shift: int = 0) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.d_model = d_model
        self.dropout_p = dropout
        self.linear_q_k_v = nn.Linear(in_dim, 3 * d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.fsmn_block = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model, bias=False)
        self.left_pad = (kernel_size - 1) // 2 + fsmn_shift
        self.right_pad = kernel_size - 1 - self.left_pad
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor]:
        """(B, T, in) -> q, k, v heads (B, H, T, d_k) and flat v (B, T, D)."""
        batch, num, _ = x.shape
        q, k, v = self.linear_q_k_v(x).split(self.d_model, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, num, self.num_heads, self.head_dim).transpose(1, 2)

        return heads(q), heads(k), heads(v), v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                allowed: torch.Tensor | None) -> torch.Tensor:
        """SDPA over heads, then ``linear_out``; ``allowed`` broadcasts to (B, H, Tq, Tk)."""
        mask = None
        if allowed is not None:
            # a finite fill keeps fully masked rows (padding) finite; they are zeroed later
            mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
            mask = mask.masked_fill(~allowed, torch.finfo(q.dtype).min)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0)
        batch, _, num, _ = out.shape
        return self.linear_out(out.transpose(1, 2).reshape(batch, num, self.d_model))

    def _fsmn_weight(self) -> torch.Tensor:
        """(D, K) depthwise kernel."""
        return self.fsmn_block.weight[:, 0, :]

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None,
                chunk_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Offline pass.

        Args:
            x: (B, T, in_dim).
            valid: (B, T) bool, False on padding (None: all valid).
            chunk_ids: (T,) chunk index per frame for the block-causal regime (None: full).

        Returns:
            (B, T, d_model) attention output + FSMN memory (zero FSMN on padding).
        """
        q, k, v_heads, v = self._split(x)
        if valid is not None:
            v = v * valid[..., None].to(v.dtype)
        if chunk_ids is None:
            memory = self.fsmn_block(
                F.pad(v.transpose(1, 2), (self.left_pad, self.right_pad))).transpose(1, 2)
        else:
            taps = chunk_window_mask(chunk_ids, self.left_pad, self.right_pad)  # (T, K)
            padded = F.pad(v, (0, 0, self.left_pad, self.right_pad))
            windows = padded.unfold(1, self.left_pad + self.right_pad + 1, 1)  # (B, T, D, K)
            weight = self._fsmn_weight()[None, None] * taps[None, :, None, :].to(v.dtype)
            memory = (windows * weight).sum(-1)
        memory = self.dropout(memory + v)
        if valid is not None:
            memory = memory * valid[..., None].to(memory.dtype)

        allowed = None
        if valid is not None:
            allowed = valid[:, None, None, :]
        if chunk_ids is not None:
            causal = (chunk_ids[None, :] <= chunk_ids[:, None])[None, None]
            allowed = causal if allowed is None else allowed & causal
        return self._attend(q, k, v_heads, allowed) + memory

    def init_cache(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> SANMCache:
        """Empty streaming cache."""
        empty = torch.zeros(batch_size, self.num_heads, 0, self.head_dim, device=device,
                            dtype=dtype)
        return SANMCache(key=empty, value=empty.clone(),
                         fsmn=torch.zeros(batch_size, self.left_pad, self.d_model,
                                          device=device, dtype=dtype))

    def step(self, x: torch.Tensor, cache: SANMCache) -> tuple[torch.Tensor, SANMCache]:
        """One new chunk (block-causal regime): sees itself and every cached frame.

        Args:
            x: (B, C, in_dim) the chunk.
            cache: from :meth:`init_cache` or the previous step (not modified).

        Returns:
            ``(out (B, C, d_model), new cache)``.
        """
        q, k, v_heads, v = self._split(x)
        key = torch.cat([cache.key, k], dim=2)
        value = torch.cat([cache.value, v_heads], dim=2)
        context = torch.cat([cache.fsmn, v], dim=1)  # (B, L + C, D)
        memory = self.fsmn_block(F.pad(context.transpose(1, 2), (0, self.right_pad)))
        memory = self.dropout(memory.transpose(1, 2) + v)
        fsmn = context[:, context.shape[1] - self.left_pad:]
        out = self._attend(q, key, value, None) + memory
        return out, SANMCache(key=key, value=value, fsmn=fsmn)


class SANMEncoderLayer(nn.Module):
    """Pre-norm SAN-M block (FunASR ``EncoderLayerSANM``, ``normalize_before=True``).

    ``x = x + attn(norm1(x))`` (no residual when ``in_dim != d_model``: SenseVoice's first
    block), then ``x = x + ffn(norm2(x))``.
    """

    def __init__(self, in_dim: int, d_model: int, num_heads: int, ffn_dim: int,
                 kernel_size: int = 11, dropout: float = 0.0, attention_dropout: float = 0.0,
                 fsmn_shift: int = 0) -> None:
        super().__init__()
        self.self_attn = SANMAttention(in_dim, d_model, num_heads, kernel_size,
                                       attention_dropout, fsmn_shift)
        self.feed_forward = PositionwiseFeedForward(d_model, ffn_dim, dropout)
        self.norm1 = Float32LayerNorm(in_dim)
        self.norm2 = Float32LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.residual_attention = in_dim == d_model

    def _feed_forward(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        attended = self.dropout(attended)
        x = x + attended if self.residual_attention else attended
        return x + self.dropout(self.feed_forward(self.norm2(x)))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None,
                chunk_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, in_dim) -> (B, T, d_model); see :meth:`SANMAttention.forward`."""
        return self._feed_forward(x, self.self_attn(self.norm1(x), valid, chunk_ids))

    def step(self, x: torch.Tensor, cache: SANMCache) -> tuple[torch.Tensor, SANMCache]:
        """(B, C, in_dim) chunk -> (B, C, d_model); see :meth:`SANMAttention.step`."""
        attended, cache = self.self_attn.step(self.norm1(x), cache)
        return self._feed_forward(x, attended), cache
