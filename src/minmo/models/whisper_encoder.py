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
transformers' (tested). A longer input (full context) is encoded as Whisper reads long
audio, in consecutive 30 s windows (``2 * max_positions`` frames), whose outputs are
concatenated: a turn or a file over 30 s is heard, not refused.

Streaming (the listening stream, docs/minmo_small.md "duplex"): ``forward(..., chunk_size=C)``
runs a block-causal regime — output frame ``t`` attends to frames ``u`` with
``u // C <= t // C`` — and ``init_state`` / ``step`` compute exactly that incrementally: the
conv stem on a few mel frames of history, then each layer's keys and values cached. A frame is
emitted once its chunk is complete and the stem has seen the two mel frames after it (conv
look-ahead), so streamed frames equal the chunked offline ones (tested); only the last frame
of a finished utterance, which offline sees zero padding after, is never streamed. Whisper's
weights are trained full-context, so chunked features differ from full-context ones; the
duplex stage trains the predictor on the chunked ones (``MinMo.encode_speech(streaming=True)``).
At ``max_positions`` frames (30 s) the stream restarts its cache; the new segment first
re-encodes ``context_frames`` frames of the audio before the first frame not yet emitted, as
left context (not emitted again).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

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

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, num, _ = t.shape
        return t.reshape(batch, num, self.num_heads, self.head_dim).transpose(1, 2)

    def _out(self, out: torch.Tensor) -> torch.Tensor:
        batch, _, num, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, num, -1))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); ``valid`` (B, T) bool masks padded keys, ``allowed``
        (T, T) bool says which keys each query may see (the block-causal regime)."""
        mask = None
        if valid is not None or allowed is not None:
            keep = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=x.device)
            if valid is not None:
                keep = keep & valid[:, None, None, :]
            if allowed is not None:
                keep = keep & allowed[None, None]
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~keep, torch.finfo(x.dtype).min)
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x)),
            attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0)
        return self._out(out)

    def step(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One chunk (B, C, D): every query sees the cached keys and the whole chunk.

        Returns:
            ``(out (B, C, D), (keys, values))``, the cache grown by the chunk.
        """
        keys, values = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if cache is not None:
            keys, values = torch.cat([cache[0], keys], 2), torch.cat([cache[1], values], 2)
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(x)), keys, values)
        return self._out(out), (keys, values)


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

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(self.final_layer_norm(x))))))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), valid, allowed))
        return self._feed_forward(x)

    def step(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One streaming chunk (B, C, D) with this layer's key/value cache."""
        attended, cache = self.self_attn.step(self.self_attn_layer_norm(x), cache)
        return self._feed_forward(x + attended), cache


@dataclass
class WhisperStreamState:
    """Streaming state of :class:`WhisperEncoderWrapper` (owned by the caller).

    Attributes:
        chunk_size: encoder frames per block-causal chunk.
        context_frames: encoder frames re-encoded as left context when the cache restarts
            (a multiple of ``chunk_size``).
        mel: (B, T, n_mels) the current segment's mel frames so far (at most 30 s).
        next_frame: stem output frames computed in the segment (the next one's position).
        done: frames through the layers in the segment (a multiple of ``chunk_size``).
        skip: frames still to encode without emitting them (a restart's left context).
        pending: stem outputs (B, n < chunk_size, D) waiting for their chunk to complete.
        caches: per layer ``(keys, values)`` of the segment's chunks.
    """

    chunk_size: int
    context_frames: int
    mel: torch.Tensor
    next_frame: int = 0
    done: int = 0
    skip: int = 0
    pending: torch.Tensor | None = None
    caches: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


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

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor | None = None,
                chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode padded log-mel features.

        Args:
            feats: (B, T, input_dim) log-mel frames, right-padded, ``T <= 2 * max_positions``.
            feat_lens: (B,) valid frames (None: all ``T``).
            chunk_size: None for full context, else block-causal chunks of this many output
                frames (what :meth:`step` streams).

        Returns:
            ``(out (B, ceil(T/2), d_model), out_lens (B,))``; padded frames are zero.
        """
        if feats.dim() != 3 or feats.shape[-1] != self.cfg.input_dim:
            raise ValueError(
                f"Whisper encoder expects (B, T, {self.cfg.input_dim}) log-mel features, got "
                f"{tuple(feats.shape)}; check frontend.n_mels vs encoder.input_dim")
        batch, num, _ = feats.shape
        out_num = (num + 1) // 2
        if feat_lens is None:
            feat_lens = torch.full((batch,), num, dtype=torch.long, device=feats.device)
        feat_lens = feat_lens.to(feats.device)
        if out_num > self.cfg.max_positions:
            if chunk_size is not None:
                raise ValueError(
                    f"{num} mel frames exceed the Whisper encoder's {2 * self.cfg.max_positions} "
                    f"({self.cfg.max_positions} positions, encoder.max_positions) in the "
                    "block-causal regime (the duplex stage's features): cut dialogues to at most "
                    "30 s (docs/training.md), or stream them (init_state / step restart there)")
            return self._forward_windows(feats, feat_lens)
        in_valid = torch.arange(num, device=feats.device)[None, :] < feat_lens[:, None]
        x = (feats * in_valid[..., None].to(feats.dtype)).transpose(1, 2)  # (B, D_in, T)
        x = F.gelu(self.conv1(x)) * in_valid[:, None, :].to(feats.dtype)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T', D)
        out_lens = self.output_lengths(feat_lens)
        valid = torch.arange(out_num, device=x.device)[None, :] < out_lens[:, None]
        x = self.dropout(x + self.embed_positions.weight[:out_num].to(x.dtype))
        mask = None if bool(valid.all()) else valid
        allowed = None
        if chunk_size is not None:
            if chunk_size < 1:
                raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
            chunk = torch.arange(out_num, device=x.device) // chunk_size
            allowed = chunk[None, :] <= chunk[:, None]
        for layer in self.layers:
            x = layer(x, mask, allowed)
        x = self.layer_norm(x)
        return x * valid[..., None].to(x.dtype), out_lens

    def _forward_windows(self, feats: torch.Tensor,
                         feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-context encoding of an input longer than one window: each row's valid
        outputs of consecutive ``2 * max_positions``-frame windows, concatenated."""
        window = 2 * self.cfg.max_positions
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        for start in range(0, feats.shape[1], window):
            lens = (feat_lens - start).clamp(0, window)
            out, out_lens = self.forward(feats[:, start:start + window], lens.clamp(min=1))
            parts.append((out, torch.where(lens > 0, out_lens, 0)))
        total = torch.stack([lens for _, lens in parts]).sum(0)
        x = feats.new_zeros(feats.shape[0], int(total.max()), self.cfg.d_model)
        for b in range(feats.shape[0]):
            x[b, :int(total[b])] = torch.cat([out[b, :int(n[b])] for out, n in parts])
        return x, total

    # ---- streaming -------------------------------------------------------------------

    def init_state(self, batch_size: int = 1, device: torch.device | str | None = None,
                   chunk_size: int = 4, context_frames: int = 100,
                   dtype: torch.dtype | None = None) -> WhisperStreamState:
        """Fresh streaming state (see the module docstring); ``context_frames`` is rounded
        down to whole chunks."""
        if not 1 <= chunk_size <= self.cfg.max_positions // 2:
            raise ValueError(f"chunk_size must be within [1, max_positions / 2 = "
                             f"{self.cfg.max_positions // 2}], got {chunk_size}")
        if not 0 <= context_frames <= self.cfg.max_positions // 2:
            raise ValueError(f"context_frames must be within [0, max_positions / 2 = "
                             f"{self.cfg.max_positions // 2}], got {context_frames}")
        dtype = dtype or next(self.parameters()).dtype
        mel = torch.zeros(batch_size, 0, self.cfg.input_dim, device=device, dtype=dtype)
        return WhisperStreamState(chunk_size, context_frames // chunk_size * chunk_size, mel)

    def _stem_step(self, st: WhisperStreamState) -> torch.Tensor:
        """Stem outputs (B, n, D), positions added, for every new frame whose conv inputs are
        all in ``st.mel`` (output k needs mel 2k-2 .. 2k+2), up to the last position."""
        k0 = st.next_frame
        last = min((st.mel.shape[1] - 3) // 2, self.cfg.max_positions - 1)
        if last < k0:
            return st.mel.new_zeros(st.mel.shape[0], 0, self.cfg.d_model)
        lo = 2 * k0 - 2
        mel = st.mel[:, max(0, lo):2 * last + 3].transpose(1, 2)
        mel = F.pad(mel, (max(0, -lo), 0))  # the segment's start: offline's zero padding
        c1 = F.gelu(F.conv1d(mel, self.conv1.weight, self.conv1.bias))  # conv1 2k0-1 .. 2last+1
        if k0 == 0:  # conv1 output -1 is conv2's zero padding, not conv1 of zeros
            c1 = torch.cat([torch.zeros_like(c1[..., :1]), c1[..., 1:]], -1)
        out = F.gelu(F.conv1d(c1, self.conv2.weight, self.conv2.bias, stride=2)).transpose(1, 2)
        st.next_frame = last + 1
        return out + self.embed_positions.weight[k0:last + 1].to(out.dtype)

    def _restart(self, st: WhisperStreamState) -> None:
        """The segment's positions are used up: start a fresh one whose first
        ``context_frames`` frames re-encode the audio just before the first frame not emitted."""
        context = min(st.done, st.context_frames)
        st.mel = st.mel[:, 2 * (st.done - context):]
        st.next_frame, st.done, st.skip, st.pending, st.caches = 0, 0, context, None, []

    def step(self, feats: torch.Tensor, state: WhisperStreamState
             ) -> tuple[torch.Tensor, WhisperStreamState]:
        """Encode the next mel frames (any number; block-causal, see the module docstring).

        Args:
            feats: (B, T, input_dim) new log-mel frames (10 ms each).
            state: from :meth:`init_state` or the previous step (not modified).

        Returns:
            ``(out (B, n, d_model), state)``: the frames completed by these mel frames
            (whole chunks, often none).
        """
        if feats.dim() != 3 or feats.shape[-1] != self.cfg.input_dim:
            raise ValueError(f"Whisper encoder expects (B, T, {self.cfg.input_dim}) log-mel "
                             f"features, got {tuple(feats.shape)}")
        st = dataclasses.replace(state)
        st.mel = torch.cat([st.mel, feats.to(st.mel)], 1)
        size, outs = st.chunk_size, []
        while True:
            if st.done + size > self.cfg.max_positions:
                self._restart(st)
            stem = self._stem_step(st)
            pending = stem if st.pending is None else torch.cat([st.pending, stem], 1)
            while pending.shape[1] >= size and st.done + size <= self.cfg.max_positions:
                x, pending = pending[:, :size], pending[:, size:]
                caches = []
                for i, layer in enumerate(self.layers):
                    x, cache = layer.step(x, st.caches[i] if st.caches else None)
                    caches.append(cache)
                st.caches, st.done = caches, st.done + size
                if st.skip:
                    st.skip -= size
                else:
                    outs.append(self.layer_norm(x))
            st.pending = pending
            if st.done + size <= self.cfg.max_positions:
                break
        out = torch.cat(outs, 1) if outs else feats.new_zeros(feats.shape[0], 0, self.cfg.d_model)
        return out, st

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
