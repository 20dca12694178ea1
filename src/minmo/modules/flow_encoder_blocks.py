"""Token encoder of the flow-matching model (CosyVoice 2 ``UpsampleConformerEncoder``).

speech-token embeddings ``(B, S, D)`` -> linear embed (Linear, LayerNorm, x sqrt(D)) ->
pre-lookahead layer (each token sees the next ``lookahead`` tokens) -> ``num_blocks``
Transformer layers with relative-position attention (ESPnet style) -> 2x upsample (nearest
repeat + causal conv) -> linear embed -> ``num_up_blocks`` layers -> LayerNorm.
``(B, 2S, D)`` out, one vector per mel frame.

Relative-position attention depends only on ``i - j``, so a chunk attends to cached keys of
earlier chunks exactly as the offline pass does; every layer takes and returns its KV cache,
the lookahead conv its last outputs and the upsampler its last frames. Parameter names match
CosyVoice 2's ``flow.encoder``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def relative_sinusoids(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """ESPnet relative positional encoding: ``(R,)`` integer distances -> ``(R, dim)``
    with ``[sin(d w_k), cos(d w_k)]`` interleaved, ``w_k = 10000^(-2k/dim)``."""
    div = torch.exp(torch.arange(0, dim, 2, device=distances.device, dtype=torch.float32) * -(math.log(10000.0) / dim))
    ang = distances.float()[:, None] * div[None, :]
    pe = torch.zeros(distances.shape[0], dim, device=distances.device)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)
    return pe


class LinearEmbed(nn.Module):
    """``out`` = Linear -> LayerNorm -> Dropout, then scaled by ``sqrt(dim)``."""

    def __init__(self, in_dim: int, dim: int, dropout: float = 0.0):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim, eps=1e-5), nn.Dropout(dropout))
        self.xscale = math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.xscale


class RelPositionAttention(nn.Module):
    """Multi-head attention with Transformer-XL relative positions (ESPnet ``rel_selfattn``).

    score(i, j) = ((q_i + u) . k_j + (q_i + v) . W p(i - j)) / sqrt(d_k)
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.h = heads
        self.d_k = dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = dropout

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, kv_cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            x: ``(B, T, D)`` new positions (the last ``T`` of the key range).
            bias: additive mask broadcastable to ``(B, H, T, S + T)``.
            kv_cache: ``(B, H, S, 2 * d_k)`` keys/values of the ``S`` previous positions.

        Returns:
            ``(B, T, D)`` and the new positions' keys/values ``(B, H, T, 2 * d_k)`` (the caller
            appends them to its cache).
        """
        b, t, dim = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        new_kv = torch.cat([k, v], dim=-1)
        kv = new_kv if kv_cache is None or kv_cache.shape[2] == 0 else torch.cat([kv_cache, new_kv], dim=2)
        k, v = kv.split(self.d_k, dim=-1)
        s = kv.shape[2] - t
        # distances i - j for queries s..s+t-1 and keys 0..s+t-1 run from -(t-1) to s+t-1
        dist = torch.arange(s + t - 1, -t, -1, device=x.device)  # descending: index r <-> d = s+t-1-r
        p = self.linear_pos(relative_sinusoids(dist, dim).to(x.dtype)).view(-1, self.h, self.d_k)
        q_v = (q + self.pos_bias_v).transpose(1, 2)  # (B, H, T, d_k)
        bd = torch.matmul(q_v, p.permute(1, 2, 0))  # (B, H, T, R)
        qi = torch.arange(t, device=x.device)[:, None] + s
        kj = torch.arange(s + t, device=x.device)[None, :]
        index = (s + t - 1) - (qi - kj)  # (T, S+T)
        bd = torch.gather(bd, 3, index.expand(b, self.h, t, s + t))
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q_u, k, v, attn_mask=bd / math.sqrt(self.d_k) + bias.to(x.dtype),
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).reshape(b, t, dim)
        return self.linear_out(y), new_kv


class PositionwiseFeedForward(nn.Module):
    """``w_2(dropout(swish(w_1(x))))``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(F.silu(self.w_1(x))))


class ConformerLayer(nn.Module):
    """Pre-LN layer (the conformer layer of CosyVoice 2 with no conv module, no macaron)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = RelPositionAttention(dim, heads, dropout)
        self.feed_forward = PositionwiseFeedForward(dim, ffn_dim, dropout)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-12)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, kv_cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: ``(B, T, D)`` -> ``(B, T, D)`` and the new positions' keys/values."""
        a, kv = self.self_attn(self.norm_mha(x), bias, kv_cache)
        x = x + self.dropout(a)
        return x + self.dropout(self.feed_forward(self.norm_ff(x))), kv


class PreLookaheadLayer(nn.Module):
    """Residual conv pair: ``conv1`` (kernel ``lookahead + 1``) reads each token and the next
    ``lookahead`` ones; ``conv2`` (kernel 3) is causal. Streaming: the caller passes the
    ``lookahead`` future frames explicitly (zeros at the end of the stream) and keeps the last
    two ``conv1`` outputs as cache."""

    def __init__(self, channels: int, lookahead: int = 3):
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3)

    def forward(
        self, x: torch.Tensor, future: torch.Tensor | None = None, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            x: ``(B, T, D)`` tokens to encode.
            future: ``(B, F, D)`` the next ``F <= lookahead`` frames (missing ones are zeros).
            cache: ``(B, D, 2)`` previous ``conv1`` outputs (zeros at stream start).

        Returns:
            ``(B, T, D)`` and the new cache.
        """
        h = x.transpose(1, 2)
        if future is not None and future.shape[1] > 0:
            h = torch.cat([h, future.transpose(1, 2)], dim=2)
        h = F.pad(h, (0, x.shape[1] + self.lookahead - h.shape[2]))
        h = F.leaky_relu(self.conv1(h))
        if cache is None:
            cache = h.new_zeros(h.shape[0], h.shape[1], 2)
        h = torch.cat([cache, h], dim=2)
        new_cache = h[:, :, h.shape[2] - 2:]
        return self.conv2(h).transpose(1, 2) + x, new_cache


class TokenUpsample(nn.Module):
    """Repeat each frame ``stride`` times, then a causal conv of kernel ``2 * stride + 1``.
    Streaming cache: the last ``2 * stride`` repeated frames."""

    def __init__(self, channels: int, stride: int = 2):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, 2 * stride + 1)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: ``(B, T, D)`` -> ``(B, stride * T, D)`` and the new cache ``(B, D, 2 * stride)``."""
        b, t, d = x.shape  # repeat each frame (expand + reshape: no host sync, CUDA-graph safe)
        h = x.transpose(1, 2).unsqueeze(3).expand(b, d, t, self.stride).reshape(b, d, t * self.stride)
        if cache is None:
            cache = h.new_zeros(h.shape[0], h.shape[1], 2 * self.stride)
        h = torch.cat([cache, h], dim=2)
        new_cache = h[:, :, h.shape[2] - 2 * self.stride:]
        return self.conv(h).transpose(1, 2), new_cache
