"""A pre-LayerNorm Transformer layer with explicit, caller-owned streaming state.

Used by the input projector and the duplex predictor. Offline calls take a key padding
mask and an optional causal flag; streaming calls take a :class:`KVState` (keys/values so
far) and return the new one, so the module itself never holds per-session state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KVState:
    """Keys and values seen so far by one attention layer.

    Attributes:
        key: ``(B, H, S, Dh)`` cached keys (``S`` past frames).
        value: ``(B, H, S, Dh)`` cached values.
    """

    key: torch.Tensor
    value: torch.Tensor

    @property
    def length(self) -> int:
        return self.key.shape[2]


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention on ``(B, T, D)`` with a fused QKV projection."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each (B, H, T, Dh)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        b, h, t, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, h * dh))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            x: ``(B, T, D)``.
            attn_mask: boolean ``(B, 1, T, T)`` or ``(T, T)``, True where attention is allowed.

        Returns:
            ``(B, T, D)``.
        """
        q, k, v = self._split(x)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self._merge(y)

    def step(self, x: torch.Tensor, state: KVState) -> tuple[torch.Tensor, KVState]:
        """Causal incremental attention: new frames attend to all cached frames and causally
        among themselves.

        Args:
            x: ``(B, T_new, D)`` new frames.
            state: keys/values of the ``S`` previous frames.

        Returns:
            ``(B, T_new, D)`` and the state extended to ``S + T_new`` frames.
        """
        q, k, v = self._split(x)
        k = torch.cat([state.key, k], dim=2)
        v = torch.cat([state.value, v], dim=2)
        t_new, total = q.shape[2], k.shape[2]
        allowed = torch.ones(t_new, total, dtype=torch.bool, device=x.device).tril(total - t_new)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self._merge(y), KVState(k, v)


class TransformerLayer(nn.Module):
    """Pre-LN Transformer encoder layer: ``x + MHA(LN(x))``, then ``x + FFN(LN(x))``.

    Args:
        d_model: width ``D``.
        num_heads: attention heads.
        ffn_dim: hidden width of the GELU feed-forward block.
        dropout: dropout on attention weights and residual branches.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, D) -> (B, T, D)``; ``attn_mask`` as in :meth:`MultiHeadAttention.forward`."""
        x = x + self.drop(self.attn(self.norm1(x), attn_mask))
        return x + self.drop(self.ffn(self.norm2(x)))

    def init_state(self, batch_size: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> KVState:
        """Empty KV state for ``batch_size`` streams."""
        h, dh = self.attn.num_heads, self.attn.head_dim
        empty = torch.zeros(batch_size, h, 0, dh, device=device, dtype=dtype)
        return KVState(empty, empty.clone())

    def step(self, x: torch.Tensor, state: KVState) -> tuple[torch.Tensor, KVState]:
        """Causal streaming step: ``(B, T_new, D)`` -> ``(B, T_new, D)``, new state."""
        a, state = self.attn.step(self.norm1(x), state)
        x = x + a
        return x + self.ffn(self.norm2(x)), state


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, max_len)`` boolean, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def attention_mask(lengths: torch.Tensor, max_len: int, causal: bool) -> torch.Tensor:
    """Boolean ``(B, 1, T, T)`` mask: keys must be valid (and not in the future if causal).

    Query rows of padded frames keep their own key allowed so softmax never sees an empty
    row (their outputs are ignored downstream)."""
    valid = padding_mask(lengths, max_len)  # (B, T)
    mask = valid[:, None, None, :].expand(-1, 1, max_len, -1)
    if causal:
        mask = mask & torch.ones(max_len, max_len, dtype=torch.bool, device=lengths.device).tril()
    eye = torch.eye(max_len, dtype=torch.bool, device=lengths.device)
    return mask | eye
