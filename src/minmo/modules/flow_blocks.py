"""Building blocks of the chunk-aware flow-matching decoder (CosyVoice 2 style).

* Attention masks. One model serves four masks, all defined on *token* positions (a mel frame
  ``f`` belongs to token ``f // token_mel_ratio``):

  ==============  ============================================================================
  ``non_causal``  every position sees every position (offline only)
  ``full_causal`` a token sees itself and the past (chunks of 1 token)
  ``chunk``       chunks of M tokens: a position sees its own chunk and all earlier chunks
  ``chunk2``      the same with chunks of 2M tokens
  ==============  ============================================================================

  Chunk ``c`` holds tokens ``t`` with ``(t + offset) // size == c``; the offset is the encoder's
  lookahead (3), so the first chunk is ``M - 3`` tokens long: the first audio needs exactly
  ``M`` tokens (``M - 3`` plus 3 lookahead), later chunks ``M`` more tokens each. With
  ``left_chunks >= 0`` a position also sees only the ``left_chunks`` chunks before its own.

* Causal convolutions and the estimator's ResNet/Transformer blocks. Every block that looks
  at the past takes an optional cache (the previous frames it needs) and returns the new one,
  so the same code runs offline (empty cache) and chunk by chunk (the caller keeps caches).

Module and parameter names follow CosyVoice 2's ``flow.decoder.estimator`` (Matcha-TTS /
diffusers naming), so a checkpoint key map is mostly the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MASK_MODES: tuple[str, ...] = ("non_causal", "full_causal", "chunk", "chunk2")
NEG_INF = -1.0e10


def mask_chunk_size(mode: str, chunk_tokens: int) -> int:
    """Chunk length in tokens for ``mode`` (0 = unbounded, i.e. non-causal)."""
    if mode == "non_causal":
        return 0
    if mode == "full_causal":
        return 1
    if mode == "chunk":
        return chunk_tokens
    if mode == "chunk2":
        return 2 * chunk_tokens
    raise ValueError(f"unknown attention mask mode '{mode}' (expected one of {', '.join(MASK_MODES)})")


def chunk_index(token_pos: torch.Tensor, chunk: int, offset: int) -> torch.Tensor:
    """Chunk id of each token position (``chunk == 0``: everything is chunk 0)."""
    if chunk <= 0:
        return torch.zeros_like(token_pos)
    if chunk == 1:
        return token_pos
    return torch.div(token_pos + offset, chunk, rounding_mode="floor")


def chunk_attention_bias(
    q_start: int,
    q_len: int,
    k_start: int,
    k_len: int,
    chunk: int,
    offset: int,
    ratio: int = 1,
    left_chunks: int = -1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Additive attention bias for queries ``[q_start, q_start + q_len)`` over keys
    ``[k_start, k_start + k_len)`` (absolute frame positions; ``ratio`` frames per token).

    Returns:
        ``(q_len, k_len)`` tensor: 0 where attention is allowed, -1e10 elsewhere.
    """
    q_tok = torch.div(torch.arange(q_start, q_start + q_len, device=device), ratio, rounding_mode="floor")
    k_tok = torch.div(torch.arange(k_start, k_start + k_len, device=device), ratio, rounding_mode="floor")
    qc = chunk_index(q_tok, chunk, offset)[:, None]
    kc = chunk_index(k_tok, chunk, offset)[None, :]
    allowed = kc <= qc
    if left_chunks >= 0 and chunk > 0:
        allowed = allowed & (kc >= qc - left_chunks)
    return torch.zeros(q_len, k_len, device=device, dtype=dtype).masked_fill(~allowed, NEG_INF)


def first_needed_key(next_pos: int, chunk: int, offset: int, ratio: int, left_chunks: int) -> int:
    """Earliest key frame a query at frame ``next_pos`` (or later) can still attend to.

    Used to trim streaming caches when ``left_chunks >= 0``; returns 0 when nothing can go.
    """
    if left_chunks < 0 or chunk <= 0:
        return 0
    tok = next_pos // ratio
    c = int(chunk_index(torch.tensor(tok), chunk, offset)) - left_chunks
    if c <= 0:
        return 0
    first_tok = c if chunk == 1 else c * chunk - offset
    return max(0, first_tok * ratio)


def padding_bias(lengths: torch.Tensor, max_len: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B, 1, 1, max_len)`` additive bias hiding key positions ``>= lengths``."""
    valid = torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
    bias = torch.zeros(valid.shape, device=lengths.device, dtype=dtype).masked_fill(~valid, NEG_INF)
    return bias[:, None, None, :]


def masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x * mask``; ``mask=None`` means every frame is real (streaming), saving the kernels."""
    return x if mask is None else x * mask


class CausalConv1d(nn.Conv1d):
    """Left-padded 1-D convolution (stride 1). Streaming: ``cache`` holds the last
    ``kernel_size - 1`` input frames (zeros at the start of a stream)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, padding=0, dilation=dilation)
        self.context = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            x: ``(B, C_in, T)``.
            cache: ``(B, C_in, context)`` previous input frames, or None (zeros).

        Returns:
            ``(B, C_out, T)`` output and the new cache ``(B, C_in, context)``.
        """
        t = x.shape[2]
        if cache is None and t >= self.context:
            # zeros on the left through the convolution's own padding (no padded copy of the
            # input: a streaming chunk is launch-bound); the outputs it adds on the right
            # are cut off
            y = F.conv1d(x, self.weight, self.bias, padding=self.context, dilation=self.dilation)
            return y[:, :, :t], x[:, :, t - self.context:]
        full = F.pad(x, (self.context, 0)) if cache is None else torch.cat([cache, x], dim=2)
        return super().forward(full), full[:, :, full.shape[2] - self.context:]


class CausalBlock1D(nn.Module):
    """Causal conv (k=3) -> LayerNorm over channels -> Mish, masked in and out.
    ``block.0`` is the conv and ``block.2`` the norm (CosyVoice 2 key layout)."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.block = nn.ModuleList([CausalConv1d(dim, dim_out, 3), nn.Identity(), nn.LayerNorm(dim_out)])

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: ``(B, C, T)``, ``mask``: ``(B, 1, T)`` or None -> ``(B, C_out, T)`` and conv cache."""
        y, cache = self.block[0](masked(x, mask), cache)
        y = self.block[2](y.transpose(1, 2)).transpose(1, 2)
        return masked(F.mish(y), mask), cache


class CausalResnetBlock1D(nn.Module):
    """Two causal blocks with an additive time embedding and a 1x1 residual projection.
    ``mlp`` is Mish -> Linear (CosyVoice 2's layout); the estimator applies the Mish once for
    all its blocks and hands them the result (:meth:`forward`'s ``time_act``)."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = CausalBlock1D(dim, dim_out)
        self.block2 = CausalBlock1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        time_act: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Args:
            x: ``(B, C, T)``; mask: ``(B, 1, T)`` or None (all real).
            time_act: ``(B, E)``, the time embedding after ``mlp[0]`` (Mish).
            cache: the two conv caches, or None.

        Returns:
            ``(B, C_out, T)`` and the new caches.
        """
        c1, c2 = cache if cache is not None else (None, None)
        h, c1 = self.block1(x, mask, c1)
        h = h + self.mlp[1](time_act).unsqueeze(-1)
        h, c2 = self.block2(h, mask, c2)
        return h + self.res_conv(masked(x, mask)), (c1, c2)


class SelfAttention(nn.Module):
    """Multi-head self-attention without biases on q/k/v (diffusers ``Attention`` names).

    Streaming: ``kv_cache`` is ``(B, S, 2, H, head_dim)``, keys and values of earlier frames
    in the layout the fused q/k/v projection produces them, so neither the new keys nor the
    attention inputs are copied (a streaming chunk is launch-bound: kernels count, not FLOPs).
    The layer returns the new frames' keys and values only; the caller appends them (so a
    recorded CUDA graph's results do not grow with the stream).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])
        self.dropout = dropout
        self._fused: tuple[tuple, torch.Tensor] | None = None

    def qkv_weight(self) -> torch.Tensor:
        """``[W_q; W_k; W_v]`` for one matmul. Outside autograd it is kept until a weight
        changes (tracked by storage and version), so inference pays no concatenation."""
        weights = (self.to_q.weight, self.to_k.weight, self.to_v.weight)
        if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
            return torch.cat(weights)
        key = tuple((w.data_ptr(), w._version, w.dtype) for w in weights)
        if self._fused is None or self._fused[0] != key:
            self._fused = (key, torch.cat(weights))
        return self._fused[1]

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, kv_cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            x: ``(B, T, D)`` new frames.
            bias: additive mask broadcastable to ``(B, H, T, S + T)``.
            kv_cache: ``(B, S, 2, H, head_dim)`` or None.

        Returns:
            ``(B, T, D)`` and the new frames' keys/values ``(B, T, 2, H, head_dim)``.
        """
        b, t, _ = x.shape
        qkv = F.linear(x, self.qkv_weight()).view(b, t, 3, self.heads, self.head_dim)
        q, new_kv = qkv[:, :, 0], qkv[:, :, 1:]
        kv = new_kv if kv_cache is None or kv_cache.shape[1] == 0 else torch.cat([kv_cache, new_kv], dim=1)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2),
            attn_mask=bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        return self.to_out[1](self.to_out[0](y)), new_kv


class GELUProjection(nn.Module):
    """Linear followed by GELU (diffusers ``GELU`` activation module, parameter ``proj``)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """``net.0`` (Linear + GELU) -> dropout -> ``net.2`` (Linear)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GELUProjection(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + attn1(norm1(x))`` then ``x + ff(norm3(x))`` (no positions)."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, heads, head_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, 4, dropout)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, kv_cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: ``(B, T, D)`` -> ``(B, T, D)`` and the new frames' keys/values."""
        a, kv = self.attn1(self.norm1(x), bias, kv_cache)
        x = x + a
        return x + self.ff(self.norm3(x)), kv


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Flow time ``t`` ``(B,)`` in [0, 1] -> ``(B, dim)`` sin/cos features (Grad-TTS style)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    args = scale * t.float()[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=-1).to(t.dtype if t.is_floating_point() else torch.float32)


class TimestepEmbedding(nn.Module):
    """``linear_1`` -> SiLU -> ``linear_2``."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))
