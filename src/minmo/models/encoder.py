"""Voice encoder: SenseVoice-style SAN-M encoder (and the builder that also offers Whisper).

``SenseVoiceEncoder`` mirrors FunASR's ``SenseVoiceEncoderSmall`` plus the two pieces of
``SenseVoiceSmall`` around it (query embeddings, CTC head)::

    feats (B, T, 560) --prepend 4 query embeddings--> (B, 4+T, 560)
      * sqrt(d_model) + sinusoidal positions 1..4+T (width 560)
      -> encoders0 (1 SAN-M block, 560 -> d_model, no attention residual)
      -> encoders (num_blocks - 1 blocks) -> after_norm
      -> tp_encoders (tp_blocks blocks) -> tp_norm -> (B, 4+T, d_model)
    ctc_logits: ctc_lo (Linear d_model -> ctc_vocab), on query and speech frames alike.

The query rows come from the ``query_embed`` table (SenseVoice: 16 rows of the *input*
width, 560): language (0 auto, 3 zh, 4 en, 7 yue, 11 ja, 12 ko, 13 nospeech), then the
event and emotion queries (rows 1 and 2), then text normalisation (14 withitn, 15 woitn).
The default ``query_ids`` are ``[0, 1, 2, 15]`` (auto language, no ITN).

Checkpoint mapping (FunASR ``SenseVoiceSmall`` state dict -> this module), one to one:
``encoder.<k>`` -> ``<k>`` (e.g. ``encoder.encoders.3.self_attn.fsmn_block.weight`` ->
``encoders.3.self_attn.fsmn_block.weight``), ``embed.weight`` -> ``query_embed.weight``,
``ctc.ctc_lo.{weight,bias}`` -> ``ctc_lo.{weight,bias}``. See
:func:`convert_sensevoice_state_dict`.

Streaming: the model is trained full-context. ``forward(..., chunk_size=C)`` runs the
block-causal regime of :mod:`minmo.modules.sanm` (the queries form chunk 0, then chunks of
``C`` feature frames); ``init_state`` / ``step`` compute exactly that incrementally (KV
cache and FSMN left context per layer), one chunk of ``C`` frames per call. Chunked outputs
differ from full-context ones (less right context), which costs accuracy with weights trained
full-context; the serving engine may instead re-encode a growing window offline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from minmo.config import EncoderConfig
from minmo.modules.sanm import (
    Float32LayerNorm,
    SANMCache,
    SANMEncoderLayer,
    sinusoidal_position_encoding,
)

SENSEVOICE_DEFAULT_QUERY_IDS = (0, 1, 2, 15)  # language auto, event, emotion, woitn
SENSEVOICE_LANGUAGE_IDS = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12,
                           "nospeech": 13}
SENSEVOICE_TEXTNORM_IDS = {"withitn": 14, "woitn": 15}


class EncoderError(ValueError):
    """Bad encoder input, config or checkpoint. The message names what and the fix."""


@dataclass
class SenseVoiceEncoderState:
    """Streaming state of :class:`SenseVoiceEncoder` (owned by the caller).

    Attributes:
        caches: one :class:`~minmo.modules.sanm.SANMCache` per block (encoders0, encoders,
            tp_encoders in order).
        query_ids: (B, num_queries) queries still to prepend, None once emitted.
        num_positions: frames (queries included) encoded so far.

    Batched sessions must advance in lockstep (same ``num_positions``) to be stacked.
    """

    caches: list[SANMCache]
    query_ids: torch.Tensor | None
    num_positions: int


class SenseVoiceEncoder(nn.Module):
    """SenseVoice SAN-M encoder with query embeddings and optional CTC head.

    Args:
        cfg: ``kind="sensevoice"`` encoder config (``input_dim``, ``d_model``,
            ``num_heads``, ``ffn_dim``, ``num_blocks`` >= 1, ``tp_blocks``, ``fsmn_kernel``,
            ``num_queries``, ``query_vocab``, ``ctc_vocab``, ``dropout``).

    Attributes:
        output_dim: ``d_model``.
        num_prefix_frames: query frames in front of the output (``num_queries``).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        if cfg.num_blocks < 1:
            raise EncoderError(f"encoder.num_blocks must be >= 1, got {cfg.num_blocks}")
        if cfg.input_dim % 2 != 0:
            raise EncoderError(
                f"encoder.input_dim must be even (sinusoidal positions), got {cfg.input_dim}")
        self.cfg = cfg
        self.output_dim = cfg.d_model
        self.num_prefix_frames = cfg.num_queries

        def block(in_dim: int) -> SANMEncoderLayer:
            return SANMEncoderLayer(in_dim, cfg.d_model, cfg.num_heads, cfg.ffn_dim,
                                    cfg.fsmn_kernel, cfg.dropout)

        self.encoders0 = nn.ModuleList([block(cfg.input_dim)])
        self.encoders = nn.ModuleList([block(cfg.d_model) for _ in range(cfg.num_blocks - 1)])
        self.after_norm = Float32LayerNorm(cfg.d_model)
        self.tp_encoders = nn.ModuleList([block(cfg.d_model) for _ in range(cfg.tp_blocks)])
        self.tp_norm = Float32LayerNorm(cfg.d_model)
        self.query_embed = (nn.Embedding(cfg.query_vocab, cfg.input_dim)
                            if cfg.num_queries > 0 else None)
        self.ctc_lo = nn.Linear(cfg.d_model, cfg.ctc_vocab) if cfg.ctc_vocab > 0 else None

    # ---- helpers ---------------------------------------------------------------------

    def default_query_ids(self, batch_size: int, device: torch.device | str | None = None
                          ) -> torch.Tensor:
        """(B, num_queries) default queries: SenseVoice's ``[0, 1, 2, 15]`` when the table
        has them, else ``0..num_queries-1``."""
        q = self.cfg.num_queries
        ids = (SENSEVOICE_DEFAULT_QUERY_IDS if q == 4 and self.cfg.query_vocab > 15
               else tuple(i % self.cfg.query_vocab for i in range(q)))
        return torch.tensor(ids, dtype=torch.long, device=device).expand(batch_size, q)

    def output_lengths(self, feat_lens: torch.Tensor) -> torch.Tensor:
        """(B,) feature frames -> (B,) output frames (queries included)."""
        return feat_lens + self.cfg.num_queries

    def _blocks(self) -> list[SANMEncoderLayer]:
        return [*self.encoders0, *self.encoders, *self.tp_encoders]

    def _queries(self, query_ids: torch.Tensor | None, batch: int, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
        """(B, num_queries, input_dim) query embeddings."""
        if self.query_embed is None:
            return torch.zeros(batch, 0, self.cfg.input_dim, device=device, dtype=dtype)
        if query_ids is None:
            query_ids = self.default_query_ids(batch, device)
        if query_ids.shape != (batch, self.cfg.num_queries):
            raise EncoderError(f"query_ids must be (B, {self.cfg.num_queries}) = "
                               f"({batch}, {self.cfg.num_queries}), got {tuple(query_ids.shape)}")
        return self.query_embed(query_ids.to(device)).to(dtype)

    def _embed_inputs(self, x: torch.Tensor, first_position: int) -> torch.Tensor:
        """Scale by sqrt(d_model) and add sinusoidal positions (numbered from 1)."""
        positions = torch.arange(first_position + 1, first_position + 1 + x.shape[1],
                                 device=x.device)
        pe = sinusoidal_position_encoding(positions, x.shape[-1], x.dtype)
        return x * math.sqrt(self.cfg.d_model) + pe[None]

    def _check_feats(self, feats: torch.Tensor) -> None:
        if feats.dim() != 3 or feats.shape[-1] != self.cfg.input_dim:
            raise EncoderError(
                f"encoder expects features (B, T, {self.cfg.input_dim}), got "
                f"{tuple(feats.shape)}; check frontend (n_mels * lfr_m) vs encoder.input_dim")

    def chunk_ids(self, num_frames: int, chunk_size: int, device: torch.device | str | None = None
                  ) -> torch.Tensor:
        """(num_queries + num_frames,) chunk index: queries 0, frame t ``1 + t // C``."""
        if chunk_size < 1:
            raise EncoderError(f"chunk_size must be >= 1, got {chunk_size}")
        queries = torch.zeros(self.cfg.num_queries, dtype=torch.long, device=device)
        frames = 1 + torch.arange(num_frames, device=device) // chunk_size
        return torch.cat([queries, frames])

    # ---- offline ---------------------------------------------------------------------

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor | None = None,
                query_ids: torch.Tensor | None = None, chunk_size: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode padded features.

        Args:
            feats: (B, T, input_dim) LFR features, right-padded.
            feat_lens: (B,) valid frames (None: all ``T``).
            query_ids: (B, num_queries) rows of ``query_embed`` (None: defaults).
            chunk_size: None for full context (training default), else block-causal chunks
                of this many feature frames (equals :meth:`step` streaming).

        Returns:
            ``(out (B, num_queries + T, d_model), out_lens (B,))``; padded frames are zero.
        """
        self._check_feats(feats)
        batch, num, _ = feats.shape
        if feat_lens is None:
            feat_lens = torch.full((batch,), num, dtype=torch.long, device=feats.device)
        queries = self._queries(query_ids, batch, feats.device, feats.dtype)
        x = self._embed_inputs(torch.cat([queries, feats], dim=1), 0)
        out_lens = self.output_lengths(feat_lens.to(feats.device))
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < out_lens[:, None]
        chunks = None if chunk_size is None else self.chunk_ids(num, chunk_size, x.device)
        for layer in [*self.encoders0, *self.encoders]:
            x = layer(x, valid, chunks)
        x = self.after_norm(x)
        for layer in self.tp_encoders:
            x = layer(x, valid, chunks)
        x = self.tp_norm(x)
        return x * valid[..., None].to(x.dtype), out_lens

    def ctc_logits(self, out: torch.Tensor) -> torch.Tensor:
        """(B, T', d_model) encoder output -> (B, T', ctc_vocab) CTC logits (unnormalised)."""
        if self.ctc_lo is None:
            raise EncoderError("this encoder has no CTC head: set encoder.ctc_vocab > 0")
        return self.ctc_lo(out)

    # ---- streaming -------------------------------------------------------------------

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   query_ids: torch.Tensor | None = None,
                   dtype: torch.dtype | None = None) -> SenseVoiceEncoderState:
        """Fresh streaming state; ``query_ids`` (B, num_queries) are emitted by the first
        :meth:`step` (None: defaults)."""
        dtype = dtype or next(self.parameters()).dtype
        if self.cfg.num_queries > 0 and query_ids is None:
            query_ids = self.default_query_ids(batch_size, device)
        caches = [layer.self_attn.init_cache(batch_size, device, dtype)
                  for layer in self._blocks()]
        return SenseVoiceEncoderState(caches=caches,
                                      query_ids=query_ids if self.cfg.num_queries else None,
                                      num_positions=0)

    def _step_chunk(self, x: torch.Tensor, caches: list[SANMCache], first_position: int
                    ) -> tuple[torch.Tensor, list[SANMCache]]:
        """One block-causal chunk (B, C, input_dim) through every block."""
        x = self._embed_inputs(x, first_position)
        new_caches = []
        blocks = self._blocks()
        num_main = 1 + len(self.encoders)
        for i, layer in enumerate(blocks):
            if i == num_main:
                x = self.after_norm(x)
            x, cache = layer.step(x, caches[i])
            new_caches.append(cache)
        if num_main == len(blocks):
            x = self.after_norm(x)
        return self.tp_norm(x), new_caches

    def step(self, feats: torch.Tensor, state: SenseVoiceEncoderState
             ) -> tuple[torch.Tensor, SenseVoiceEncoderState]:
        """Encode the next chunk of features (block-causal; see module docstring).

        Calls with ``C`` frames each (the last may be shorter) reproduce
        ``forward(..., chunk_size=C)``.

        Args:
            feats: (B, C, input_dim) next feature frames.
            state: from :meth:`init_state` or the previous step (not modified).

        Returns:
            ``(out, state)``: out (B, num_queries + C, d_model) on the first call (queries
            first), else (B, C, d_model).
        """
        self._check_feats(feats)
        caches, position, outs = state.caches, state.num_positions, []
        if state.query_ids is not None:
            queries = self._queries(state.query_ids, feats.shape[0], feats.device, feats.dtype)
            out, caches = self._step_chunk(queries, caches, position)
            outs.append(out)
            position += queries.shape[1]
        if feats.shape[1] > 0:
            out, caches = self._step_chunk(feats, caches, position)
            outs.append(out)
            position += feats.shape[1]
        out = (torch.cat(outs, dim=1) if outs
               else feats.new_zeros(feats.shape[0], 0, self.cfg.d_model))
        return out, SenseVoiceEncoderState(caches=caches, query_ids=None,
                                           num_positions=position)


# --------------------------------------------------------------------------------------
# Checkpoints, builder
# --------------------------------------------------------------------------------------


def convert_sensevoice_state_dict(state: dict[str, torch.Tensor], source: str = "checkpoint"
                                  ) -> dict[str, torch.Tensor]:
    """FunASR ``SenseVoiceSmall`` state dict -> :class:`SenseVoiceEncoder` state dict.

    ``encoder.<k>`` -> ``<k>``, ``embed.weight`` -> ``query_embed.weight``,
    ``ctc.ctc_lo.*`` -> ``ctc_lo.*``; a ``module.`` prefix (DDP) is dropped.

    Raises:
        EncoderError: a key that has no place in the encoder (named, with ``source``).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.startswith("encoder."):
            out[name.removeprefix("encoder.")] = value
        elif name == "embed.weight":
            out["query_embed.weight"] = value
        elif name.startswith("ctc.ctc_lo."):
            out[name.removeprefix("ctc.")] = value
        else:
            raise EncoderError(f"{source}: key '{key}' is not part of a SenseVoice encoder "
                               "(expected encoder.*, embed.weight or ctc.ctc_lo.*)")
    return out


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """Encoder named by ``cfg.kind``: :class:`SenseVoiceEncoder` or
    :class:`~minmo.models.whisper_encoder.WhisperEncoderWrapper`.

    Both return ``(out (B, T', d_model), out_lens (B,))`` from ``(feats, feat_lens)`` and
    expose ``output_dim``, ``num_prefix_frames`` and ``output_lengths``.
    """
    if cfg.kind == "sensevoice":
        return SenseVoiceEncoder(cfg)
    if cfg.kind == "whisper":
        from minmo.models.whisper_encoder import WhisperEncoderWrapper

        return WhisperEncoderWrapper(cfg)
    raise EncoderError(f"encoder.kind '{cfg.kind}' is unknown: use sensevoice or whisper")
