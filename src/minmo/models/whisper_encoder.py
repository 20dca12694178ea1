"""Whisper encoder in plain PyTorch, parameter-compatible with transformers' ``WhisperEncoder``.

Architecture (as Whisper): ``gelu(conv1(mel))`` (kernel 3, padding 1), ``gelu(conv2(.))``
(kernel 3, stride 2, padding 1), plus the positions table ``embed_positions`` (sinusoids,
frozen), then pre-LN Transformer layers (``self_attn_layer_norm`` -> ``self_attn``
{``q_proj``, ``k_proj`` without bias, ``v_proj``, ``out_proj``} -> residual;
``final_layer_norm`` -> ``fc1`` -> GELU -> ``fc2`` -> residual) and a final ``layer_norm``.
Parameter names equal transformers' ``WhisperEncoder`` (``model.encoder.<k>`` in
``WhisperForConditionalGeneration`` -> ``<k>`` here), so weights load one to one.

Differences from transformers, on purpose: any input length up to ``2 * max_positions``
mel frames (positions are sliced, no 30 s padding needed) and a padding mask: padded mel
frames are zeroed before each convolution and masked out of attention, so padding does not
change valid outputs. With a full 3000-frame input and no padding the output equals
transformers' (tested). The model is full-context; it has no streaming step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minmo.config import EncoderConfig


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000.0
                      ) -> torch.Tensor:
    """Whisper's position table: ``[sin(p w_i), cos(p w_i)]``, positions from 0.

    Returns:
        (length, channels).
    """
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class WhisperSelfAttention(nn.Module):
    """Multi-head self-attention with Whisper's projections (``k_proj`` has no bias)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout_p = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); ``valid`` (B, T) bool masks padded keys."""
        batch, num, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, num, self.num_heads, self.head_dim).transpose(1, 2)

        mask = None
        if valid is not None:
            mask = torch.zeros(batch, 1, 1, num, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~valid[:, None, None, :], torch.finfo(x.dtype).min)
        out = F.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)),
            attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(batch, num, width))


class WhisperEncoderLayer(nn.Module):
    """Pre-LN Transformer layer with transformers' parameter names."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float = 0.0
                 ) -> None:
        super().__init__()
        self.self_attn = WhisperSelfAttention(d_model, num_heads, dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), valid))
        return x + self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(self.final_layer_norm(x))))))


class WhisperEncoderWrapper(nn.Module):
    """Whisper encoder for minmo's encoder slot.

    Args:
        cfg: ``kind="whisper"`` config: ``input_dim`` (mel bins), ``d_model``, ``num_heads``,
            ``ffn_dim``, ``num_blocks`` (layers), ``max_positions`` (1500 for Whisper),
            ``ctc_vocab`` (optional CTC head ``ctc_lo``), ``dropout``.

    Attributes:
        output_dim: ``d_model``.
        num_prefix_frames: 0 (no query frames).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.output_dim = cfg.d_model
        self.num_prefix_frames = 0
        self.conv1 = nn.Conv1d(cfg.input_dim, cfg.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.embed_positions.requires_grad_(False)
        self.layers = nn.ModuleList([
            WhisperEncoderLayer(cfg.d_model, cfg.num_heads, cfg.ffn_dim, cfg.dropout)
            for _ in range(cfg.num_blocks)
        ])
        self.layer_norm = nn.LayerNorm(cfg.d_model)
        self.ctc_lo = nn.Linear(cfg.d_model, cfg.ctc_vocab) if cfg.ctc_vocab > 0 else None
        self.dropout = nn.Dropout(cfg.dropout)
        with torch.no_grad():  # a no-op on the meta device
            self.embed_positions.weight.copy_(
                whisper_sinusoids(cfg.max_positions, cfg.d_model).to(
                    self.embed_positions.weight.device))

    @staticmethod
    def output_lengths(feat_lens: torch.Tensor) -> torch.Tensor:
        """(B,) mel frames -> (B,) output frames: ``ceil(T / 2)``."""
        return (feat_lens + 1) // 2

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode padded log-mel features.

        Args:
            feats: (B, T, input_dim) log-mel frames, right-padded, ``T <= 2 * max_positions``.
            feat_lens: (B,) valid frames (None: all ``T``).

        Returns:
            ``(out (B, ceil(T/2), d_model), out_lens (B,))``; padded frames are zero.
        """
        if feats.dim() != 3 or feats.shape[-1] != self.cfg.input_dim:
            raise ValueError(
                f"Whisper encoder expects (B, T, {self.cfg.input_dim}) log-mel features, got "
                f"{tuple(feats.shape)}; check frontend.n_mels vs encoder.input_dim")
        batch, num, _ = feats.shape
        out_num = (num + 1) // 2
        if out_num > self.cfg.max_positions:
            raise ValueError(
                f"{num} mel frames exceed the Whisper encoder's {2 * self.cfg.max_positions} "
                f"({self.cfg.max_positions} positions, encoder.max_positions): split the audio")
        if feat_lens is None:
            feat_lens = torch.full((batch,), num, dtype=torch.long, device=feats.device)
        feat_lens = feat_lens.to(feats.device)
        in_valid = torch.arange(num, device=feats.device)[None, :] < feat_lens[:, None]
        x = (feats * in_valid[..., None].to(feats.dtype)).transpose(1, 2)  # (B, D_in, T)
        x = F.gelu(self.conv1(x)) * in_valid[:, None, :].to(feats.dtype)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T', D)
        out_lens = self.output_lengths(feat_lens)
        valid = torch.arange(out_num, device=x.device)[None, :] < out_lens[:, None]
        x = self.dropout(x + self.embed_positions.weight[:out_num].to(x.dtype))
        mask = None if bool(valid.all()) else valid
        for layer in self.layers:
            x = layer(x, mask)
        x = self.layer_norm(x)
        return x * valid[..., None].to(x.dtype), out_lens

    def ctc_logits(self, out: torch.Tensor) -> torch.Tensor:
        """(B, T', d_model) -> (B, T', ctc_vocab) CTC logits."""
        if self.ctc_lo is None:
            raise ValueError("this encoder has no CTC head: set encoder.ctc_vocab > 0")
        return self.ctc_lo(out)


def convert_hf_whisper_state_dict(state: dict[str, torch.Tensor], source: str = "checkpoint"
                                  ) -> dict[str, torch.Tensor]:
    """transformers Whisper state dict (whole model or encoder) -> this encoder's keys.

    Keeps ``model.encoder.<k>`` / ``encoder.<k>`` / bare encoder keys as ``<k>``; decoder and
    head keys are dropped.

    Raises:
        ValueError: no encoder key found (names ``source``).
    """
    out: dict[str, torch.Tensor] = {}
    roots = ("conv1.", "conv2.", "embed_positions.", "layers.", "layer_norm.")
    for key, value in state.items():
        name = key.removeprefix("model.").removeprefix("encoder.")
        if key.startswith(("model.decoder.", "decoder.", "proj_out.")):
            continue
        if name.startswith(roots):
            out[name] = value
    if not out:
        raise ValueError(f"{source}: no Whisper encoder weights found (expected "
                         "model.encoder.*, encoder.* or conv1.*/layers.* keys)")
    return out
