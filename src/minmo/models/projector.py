"""Input and output projectors: the small trained bridges between encoder, LLM and voice LM."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minmo.config import ProjectorConfig
from minmo.modules.transformer import KVState, TransformerLayer, attention_mask, padding_mask


@dataclass
class InputProjectorState:
    """Streaming state of :class:`InputProjector`.

    Attributes:
        pending: ``(B, P, D_enc)`` encoder frames not yet consumed by the strided conv
            (the conv's left context plus an odd frame waiting for its partner).
        layers: one :class:`KVState` per Transformer layer.
    """

    pending: torch.Tensor
    layers: list[KVState]


class InputProjector(nn.Module):
    """Encoder frames -> LLM input embeddings, with 2x (``downsample``) time reduction.

    ``Conv1d(D_enc -> d_model, kernel k, stride s)`` with causal (left) padding, ReLU,
    ``num_layers`` causal pre-LN Transformer layers, LayerNorm, ``Linear(d_model -> D_llm)``.
    Causal so that the full-duplex engine can stream speech into the LLM frame by frame and
    get exactly what an offline pass gives.

    Args:
        cfg: projector shape.
        in_dim: encoder output width ``D_enc``.
        out_dim: LLM embedding width ``D_llm``.
    """

    def __init__(self, cfg: ProjectorConfig, in_dim: int, out_dim: int):
        super().__init__()
        self.cfg = cfg
        self.stride = cfg.downsample
        self.kernel = cfg.kernel_size
        if self.kernel < self.stride:
            raise ValueError("projector kernel_size must be >= downsample")
        self.conv = nn.Conv1d(in_dim, cfg.d_model, cfg.kernel_size, stride=cfg.downsample)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.d_model, cfg.num_heads, cfg.ffn_dim, cfg.dropout)
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, out_dim)
        self.in_dim, self.out_dim = in_dim, out_dim

    @property
    def left_pad(self) -> int:
        return self.kernel - self.stride

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames out for ``lengths`` frames in: ``ceil(T / stride)``."""
        return torch.div(lengths + self.stride - 1, self.stride, rounding_mode="floor")

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D_enc) already left-padded and right-padded to a stride multiple.
        return F.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            x: ``(B, T, D_enc)`` encoder output.
            lengths: ``(B,)`` valid frames.

        Returns:
            ``(B, ceil(T/s), D_llm)`` embeddings and ``(B,)`` their lengths.
        """
        t = x.shape[1]
        x = x * padding_mask(lengths, t)[..., None].to(x.dtype)  # padded frames read as zeros
        x = F.pad(x, (0, 0, self.left_pad, (-t) % self.stride))
        h = self._conv(x)
        out_lens = self.output_lengths(lengths)
        mask = attention_mask(out_lens, h.shape[1], causal=True)
        for layer in self.layers:
            h = layer(h, mask)
        return self.out(self.norm(h)), out_lens

    def init_state(self, batch_size: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> InputProjectorState:
        """Empty streaming state: conv left context of zeros, empty KV caches."""
        pending = torch.zeros(batch_size, self.left_pad, self.in_dim, device=device, dtype=dtype)
        return InputProjectorState(pending, [l.init_state(batch_size, device, dtype) for l in self.layers])

    def step(self, x: torch.Tensor, state: InputProjectorState) -> tuple[torch.Tensor, InputProjectorState]:
        """Consume new encoder frames ``(B, T_new, D_enc)``; emit every complete output frame.

        Returns ``(B, T_out, D_llm)`` (``T_out`` may be 0) and the new state. Concatenating the
        outputs of all steps (after a final :meth:`flush`) equals :meth:`forward`.
        """
        buf = torch.cat([state.pending, x], dim=1)
        n_out = max(0, (buf.shape[1] - self.left_pad) // self.stride)
        used = n_out * self.stride
        pending = buf[:, used:]
        if n_out == 0:
            empty = buf.new_zeros(buf.shape[0], 0, self.out_dim)
            return empty, InputProjectorState(pending, state.layers)
        h = self._conv(buf[:, : used + self.left_pad])
        caches = []
        for layer, kv in zip(self.layers, state.layers):
            h, kv = layer.step(h, kv)
            caches.append(kv)
        return self.out(self.norm(h)), InputProjectorState(pending, caches)

    def flush(self, state: InputProjectorState) -> tuple[torch.Tensor, InputProjectorState]:
        """End of stream: pad the waiting odd frame (as :meth:`forward` pads) and emit it."""
        waiting = state.pending.shape[1] - self.left_pad
        if waiting <= 0:
            return state.pending.new_zeros(state.pending.shape[0], 0, self.out_dim), state
        pad = state.pending.new_zeros(state.pending.shape[0], self.stride - waiting, self.in_dim)
        return self.step(pad, state)


class OutputProjector(nn.Module):
    """One linear layer: ``[LLM hidden ; embedding of the sampled text token]`` -> voice-LM width.

    The paper's semantic vector combines the LLM hidden state that produced a text token with
    that token's embedding; we concatenate them along the feature axis (``2 * D_llm``) and
    project, which also matches the paper's ~6M parameters at 7B shape (2*3584*896).

    Args:
        llm_dim: LLM hidden width ``D_llm``.
        out_dim: voice-LM width ``D_v``.
    """

    def __init__(self, llm_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(2 * llm_dim, out_dim)

    def forward(self, hidden: torch.Tensor, token_emb: torch.Tensor) -> torch.Tensor:
        """``(..., D_llm)``, ``(..., D_llm)`` -> ``(..., D_v)`` semantic vectors, in the
        projector's dtype (a frozen LLM may run in a lower precision than this trained layer)."""
        return self.proj(torch.cat([hidden, token_emb], dim=-1).to(self.proj.weight.dtype))
