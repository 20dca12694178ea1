"""Chunk-aware conditional flow matching: speech tokens -> 80-bin mel (CosyVoice 2 flow).

    tokens (B, S) --input_embedding--> (B, S, D) --encoder--> (B, 2S, D) --encoder_proj-->
    mu (B, 80, 2S) --Euler ODE over the estimator v(x_t, t | mu, spk, cond)--> mel (B, 80, 2S)

* Training (:meth:`ChunkFlowMatching.compute_loss`): optimal-transport CFM,
  ``x_t = (1 - (1 - s) t) z + t x1``, target velocity ``x1 - (1 - s) z``, MSE; ``t`` drawn
  uniformly then bent by the cosine schedule; speaker/mu/prompt condition dropped together with
  probability ``training_cfg_rate`` (classifier-free guidance; an all-zero speaker embedding is
  that same "no speaker" condition); a random mel prefix (prompt) is
  given as ``cond`` in ``prompt_prob`` of the examples and excluded from the loss; one attention
  mask (non-causal, full-causal, chunk-M, chunk-2M) drawn at random per batch.
* Optional prior loss (``prior_loss_weight``, default 0 as CosyVoice 2): MSE of mu against
  the mel, so the token encoder itself learns the mel (Matcha-TTS).
* Inference: Euler with the cosine time schedule, ``n_timesteps`` steps, guidance
  ``v = (1 + w) v(cond) - w v(uncond)``; the starting noise of frame ``f`` is column ``f`` of a
  fixed table, so streaming and offline draw the same noise.
* Streaming (:meth:`init_state` / :meth:`step`): each step encodes the new tokens (given their
  lookahead tokens) against the cached encoder keys, then runs the Euler steps on the new frames
  only, against per-step estimator caches. Work per chunk does not grow with the utterance
  (unlike re-running the flow over all tokens so far); with ``decoder_left_chunks >= 0`` the
  estimator caches are trimmed, so memory is bounded too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from minmo.config import FlowConfig
from minmo.modules.cuda_graphs import CudaGraphCache
from minmo.modules.flow_blocks import (
    MASK_MODES,
    chunk_attention_bias,
    first_needed_key,
    mask_chunk_size,
    padding_bias,
)
from minmo.modules.flow_encoder_blocks import ConformerLayer, LinearEmbed, PreLookaheadLayer, TokenUpsample
from minmo.modules.flow_estimator import ConditionalEstimator, EstimatorCache
from minmo.modules.speech_outputs import LossOutput

NOISE_TABLE_FRAMES = 50 * 300  # 5 minutes of mel frames; positions wrap around beyond


class FlowTokenEncoder(nn.Module):
    """Token embeddings -> per-frame features (see ``modules/flow_encoder_blocks``)."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        d = cfg.encoder_dim
        self.ratio = cfg.token_mel_ratio
        self.embed = LinearEmbed(d, d, cfg.dropout)
        self.pre_lookahead_layer = PreLookaheadLayer(d, cfg.pre_lookahead_len)
        self.encoders = nn.ModuleList(
            [ConformerLayer(d, cfg.encoder_heads, cfg.encoder_ffn_dim, cfg.dropout) for _ in range(cfg.encoder_blocks)]
        )
        self.up_layer = TokenUpsample(d, cfg.token_mel_ratio)
        self.up_embed = LinearEmbed(d, d, cfg.dropout)
        self.up_encoders = nn.ModuleList(
            [ConformerLayer(d, cfg.encoder_heads, cfg.encoder_ffn_dim, cfg.dropout) for _ in range(cfg.encoder_up_blocks)]
        )
        self.after_norm = nn.LayerNorm(d, eps=1e-5)


@dataclass
class FlowStreamState:
    """Per-session streaming state of :class:`ChunkFlowMatching` (owned by the caller).

    Attributes:
        num_tokens: tokens encoded so far (absolute position of the next token).
        mask_mode: attention mask the session streams with.
        spks: ``(B, n_mels)`` projected speaker embedding.
        lookahead_cache: ``(B, D, 2)`` last pre-lookahead conv outputs.
        encoder_kv / up_kv: KV caches of the token-rate and frame-rate encoder layers.
        upsample_cache: ``(B, D, 2 * ratio)`` last upsampled frames.
        estimator: one :class:`EstimatorCache` per Euler step (conditional and unconditional
            branches stacked on the batch axis).
        estimator_start: absolute frame index of the first cached estimator key.
    """

    num_tokens: int
    mask_mode: str
    spks: torch.Tensor
    lookahead_cache: torch.Tensor | None = None
    encoder_kv: list[torch.Tensor | None] = field(default_factory=list)
    upsample_cache: torch.Tensor | None = None
    up_kv: list[torch.Tensor | None] = field(default_factory=list)
    estimator: list[EstimatorCache | None] = field(default_factory=list)
    estimator_start: int = 0


class ChunkFlowMatching(nn.Module):
    """CosyVoice 2-style flow matching; module names follow ``CausalMaskedDiffWithXvec``.

    Args:
        cfg: shapes and flow settings (:class:`minmo.config.FlowConfig`).
    """

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        if cfg.chunk_tokens <= cfg.pre_lookahead_len:
            raise ValueError(
                f"flow.chunk_tokens ({cfg.chunk_tokens}) must exceed flow.pre_lookahead_len "
                f"({cfg.pre_lookahead_len}): the first chunk is chunk_tokens - lookahead tokens"
            )
        for mode in cfg.train_masks:
            mask_chunk_size(mode, cfg.chunk_tokens)  # validates the name
        self.cfg = cfg
        self.n_mels = cfg.n_mels
        self.ratio = cfg.token_mel_ratio
        self.lookahead = cfg.pre_lookahead_len
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.encoder_dim)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.n_mels)
        self.encoder = FlowTokenEncoder(cfg)
        self.encoder_proj = nn.Linear(cfg.encoder_dim, cfg.n_mels)
        self.decoder = nn.Module()
        self.decoder.estimator = ConditionalEstimator(
            in_channels=4 * cfg.n_mels, out_channels=cfg.n_mels, channels=cfg.estimator_channels,
            heads=cfg.estimator_heads, head_dim=cfg.estimator_head_dim,
            n_blocks=cfg.estimator_transformer_blocks, num_mid_blocks=cfg.estimator_mid_blocks,
            dropout=cfg.dropout,
        )
        self._graphed_solve: CudaGraphCache | None = None
        self._graphed_encode: CudaGraphCache | None = None
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("noise_table", torch.randn(cfg.n_mels, NOISE_TABLE_FRAMES, generator=gen), persistent=False)

    # ------------------------------------------------------------------ helpers
    @property
    def estimator(self) -> ConditionalEstimator:
        return self.decoder.estimator

    def _chunk(self, mode: str) -> int:
        return mask_chunk_size(mode, self.cfg.chunk_tokens)

    def project_speaker(self, spk_emb: torch.Tensor) -> torch.Tensor:
        """``(B, spk_embed_dim)`` raw embedding -> ``(B, n_mels)`` (L2-normalised, affine).

        An all-zero embedding is "no speaker" and projects to zeros: the condition
        classifier-free guidance drops to, which the flow stage also trains on speech whose
        speaker it has no embedding for."""
        spk = F.normalize(spk_emb.float(), dim=1)
        known = (spk.abs().sum(dim=1, keepdim=True) > 0).to(spk.dtype)
        return self.spk_embed_affine_layer(spk) * known

    def noise(self, start: int, length: int, batch: int, device: torch.device) -> torch.Tensor:
        """Fixed starting noise for frames ``[start, start + length)``: ``(B, n_mels, length)``."""
        idx = torch.arange(start, start + length, device=self.noise_table.device) % NOISE_TABLE_FRAMES
        return self.noise_table[:, idx].to(device).unsqueeze(0).expand(batch, -1, -1)

    def time_span(self, n_timesteps: int, device: torch.device) -> torch.Tensor:
        """Cosine schedule ``1 - cos(pi/2 * k/n)``, ``k = 0..n``."""
        t = torch.linspace(0, 1, n_timesteps + 1, device=device)
        return 1 - torch.cos(t * 0.5 * torch.pi)

    def encode(self, tokens: torch.Tensor, token_lens: torch.Tensor, mode: str) -> torch.Tensor:
        """Offline encoder: ``(B, S)`` tokens -> mu ``(B, n_mels, ratio * S)``."""
        enc = self.encoder
        b, s = tokens.shape
        keep = (torch.arange(s, device=tokens.device)[None, :] < token_lens[:, None]).unsqueeze(-1)
        x = enc.embed(self.input_embedding(tokens.clamp(min=0))) * keep
        x, _ = enc.pre_lookahead_layer(x)
        chunk = self._chunk(mode)
        bias = chunk_attention_bias(0, s, 0, s, chunk, self.lookahead, 1, -1, x.device)
        bias = bias[None, None] + padding_bias(token_lens, s)
        for layer in enc.encoders:
            x, _ = layer(x, bias)
        x, _ = enc.up_layer(x)
        x = enc.up_embed(x)
        f = s * self.ratio
        bias = chunk_attention_bias(0, f, 0, f, chunk, self.lookahead, self.ratio, -1, x.device)
        bias = bias[None, None] + padding_bias(token_lens * self.ratio, f)
        for layer in enc.up_encoders:
            x, _ = layer(x, bias)
        return self.encoder_proj(enc.after_norm(x)).transpose(1, 2)

    def _estimator_bias(self, mode: str, q_start: int, q_len: int, k_start: int, device: torch.device) -> torch.Tensor:
        k_len = q_start + q_len - k_start
        return chunk_attention_bias(
            q_start, q_len, k_start, k_len, self._chunk(mode), self.lookahead, self.ratio,
            self.cfg.decoder_left_chunks, device,
        )[None, None]

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: dict[str, torch.Tensor], mask_mode: str | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Conditional flow-matching loss.

        Args:
            batch: ``speech_tokens`` ``(B, S)`` long (padding < 0), ``speech_token_lens``
                ``(B,)``, ``mel`` ``(B, n_mels, T)`` (``audio.mel`` features of the same audio),
                ``mel_lens`` ``(B,)``, ``spk_emb`` ``(B, spk_embed_dim)``.
            mask_mode: force one attention mask (default: random from ``cfg.train_masks``).

        Returns:
            Scalar loss and metrics ``{"flow_loss", "mask_mode"}`` (index into ``MASK_MODES``);
            with ``cfg.prior_loss_weight > 0`` also ``prior_loss``, the masked MSE of mu
            against the mel, which the loss adds at that weight: the encoder then predicts the
            mel itself (Matcha-TTS's prior loss), and the estimator refines a mel-like mu.
        """
        tokens, token_lens = batch["speech_tokens"], batch["speech_token_lens"]
        mel, mel_lens, spk = batch["mel"], batch["mel_lens"], batch["spk_emb"]
        device = mel.device
        b, s = tokens.shape
        f = s * self.ratio
        if mask_mode is None:
            modes = self.cfg.train_masks
            mask_mode = modes[int(torch.randint(len(modes), (1,)))]
        x1 = F.pad(mel[:, :, :f], (0, max(0, f - mel.shape[2])))
        frames = torch.minimum(mel_lens.to(device), token_lens.to(device) * self.ratio)
        pos = torch.arange(f, device=device)[None, :]
        mask = (pos < frames[:, None]).unsqueeze(1).to(mel.dtype)  # (B, 1, F)

        mu_pred = self.encode(tokens, token_lens.to(device), mask_mode)
        spks = self.project_speaker(spk)
        use_prompt = torch.rand(b, device=device) < self.cfg.prompt_prob
        prompt_len = (torch.rand(b, device=device) * self.cfg.prompt_max_ratio * frames).long() * use_prompt
        prompt = (pos < prompt_len[:, None]).unsqueeze(1).to(mel.dtype)
        cond = x1 * prompt

        t = torch.rand(b, device=device)
        t = 1 - torch.cos(t * 0.5 * torch.pi)
        z = torch.randn_like(x1)
        sigma = self.cfg.sigma_min
        tt = t[:, None, None]
        y = (1 - (1 - sigma) * tt) * z + tt * x1
        u = x1 - (1 - sigma) * z
        keep = (torch.rand(b, device=device) >= self.cfg.training_cfg_rate).to(mel.dtype)
        mu = mu_pred * keep[:, None, None]
        spks = spks * keep[:, None]
        cond = cond * keep[:, None, None]

        bias = self._estimator_bias(mask_mode, 0, f, 0, device) + padding_bias(frames, f)
        pred, _ = self.estimator(y, mask, mu, t, spks, cond, bias)
        loss_mask = mask * (1 - prompt)
        loss = ((pred - u) ** 2 * loss_mask).sum() / (loss_mask.sum() * self.n_mels).clamp(min=1.0)
        metrics = {"flow_loss": float(loss.detach()), "mask_mode": float(MASK_MODES.index(mask_mode))}
        if self.cfg.prior_loss_weight > 0:
            prior = ((mu_pred - x1) ** 2 * mask).sum() / (mask.sum() * self.n_mels).clamp(min=1.0)
            metrics["prior_loss"] = float(prior.detach())
            loss = loss + self.cfg.prior_loss_weight * prior
        return loss, metrics

    def forward(self, batch: dict[str, torch.Tensor], losses: tuple[str, ...] = ("flow",)) -> LossOutput:
        """Training-loop entry: :meth:`compute_loss` as a :class:`LossOutput`."""
        if "flow" not in losses:
            raise ValueError(f"ChunkFlowMatching trains with the 'flow' loss, got losses={losses}")
        loss, metrics = self.compute_loss(batch)
        return LossOutput(loss, metrics)

    def param_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """``{"flow": {name: parameter}}`` for the training loop."""
        return {"flow": dict(self.named_parameters())}

    # ------------------------------------------------------------------ inference
    def _solve(
        self,
        mu: torch.Tensor,
        mask: torch.Tensor | None,
        spks: torch.Tensor,
        cond: torch.Tensor,
        z: torch.Tensor,
        bias: torch.Tensor,
        caches: list[EstimatorCache | None] | None,
        n_timesteps: int,
        cfg_rate: float,
    ) -> tuple[torch.Tensor, list[EstimatorCache]]:
        """Euler integration with classifier-free guidance (``mask=None``: every frame is real,
        as in streaming); returns the mel and, per Euler step, the estimator cache of these
        frames (to be appended to ``caches``)."""
        b = mu.shape[0]
        t_span = self.time_span(n_timesteps, mu.device)
        x = z
        mu2 = torch.cat([mu, torch.zeros_like(mu)])
        spk2 = torch.cat([spks, torch.zeros_like(spks)])
        cond2 = torch.cat([cond, torch.zeros_like(cond)])
        mask2 = None if mask is None else torch.cat([mask, mask])
        bias2 = torch.cat([bias, bias]) if bias.shape[0] == b and b > 1 else bias
        new_caches = []
        for k in range(n_timesteps):
            t = t_span[k].expand(2 * b)
            v, cache = self.estimator(torch.cat([x, x]), mask2, mu2, t, spk2, cond2, bias2,
                                      None if caches is None else caches[k])
            new_caches.append(cache)
            v_cond, v_uncond = v[:b], v[b:]
            x = x + (t_span[k + 1] - t_span[k]) * ((1.0 + cfg_rate) * v_cond - cfg_rate * v_uncond)
        return x, new_caches

    @torch.no_grad()
    def synthesize(
        self,
        tokens: torch.Tensor,
        spk_emb: torch.Tensor,
        token_lens: torch.Tensor | None = None,
        mask_mode: str = "chunk",
        prompt_tokens: torch.Tensor | None = None,
        prompt_mel: torch.Tensor | None = None,
        n_timesteps: int | None = None,
        cfg_rate: float | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Offline tokens -> mel with one attention mask over the whole sequence.

        Args:
            tokens: ``(B, S)`` speech tokens.
            spk_emb: ``(B, spk_embed_dim)`` speaker embedding.
            token_lens: ``(B,)`` valid tokens (default: all ``S``).
            mask_mode: one of ``MASK_MODES``.
            prompt_tokens / prompt_mel: optional prompt ``(B, P)`` and its mel
                ``(B, n_mels, >= ratio * P)``: prepended as condition, not returned.
            n_timesteps / cfg_rate: default from the config.
            temperature: scale of the starting noise.

        Returns:
            ``(B, n_mels, ratio * S)`` mel (frames beyond ``ratio * token_lens`` are zero).
        """
        n_timesteps = n_timesteps or self.cfg.n_timesteps
        cfg_rate = self.cfg.inference_cfg_rate if cfg_rate is None else cfg_rate
        b, s = tokens.shape
        device = tokens.device
        token_lens = torch.full((b,), s, device=device) if token_lens is None else token_lens.to(device)
        p = 0 if prompt_tokens is None else prompt_tokens.shape[1]
        if p and (prompt_mel is None or prompt_mel.shape[2] < p * self.ratio):
            have = "no prompt_mel" if prompt_mel is None else f"{prompt_mel.shape[2]} frames"
            raise ValueError(f"prompt_mel needs at least {p * self.ratio} frames for {p} prompt tokens, got {have} "
                             "(trim the prompt tokens to the mel's length)")
        if p:
            tokens = torch.cat([prompt_tokens.to(device), tokens], dim=1)
            token_lens = token_lens + p
        f = tokens.shape[1] * self.ratio
        mu = self.encode(tokens, token_lens, mask_mode)
        cond = torch.zeros_like(mu)
        if p:
            cond[:, :, : p * self.ratio] = prompt_mel[:, :, : p * self.ratio].to(mu.dtype)
        frames = token_lens * self.ratio
        mask = (torch.arange(f, device=device)[None, :] < frames[:, None]).unsqueeze(1).to(mu.dtype)
        z = self.noise(0, f, b, device) * temperature
        bias = self._estimator_bias(mask_mode, 0, f, 0, device) + padding_bias(frames, f)
        mel, _ = self._solve(mu, mask, self.project_speaker(spk_emb), cond, z, bias, None, n_timesteps, cfg_rate)
        return (mel * mask)[:, :, p * self.ratio:]

    def init_state(
        self, batch_size: int, spk_emb: torch.Tensor, mask_mode: str = "chunk", device: torch.device | str | None = None
    ) -> FlowStreamState:
        """Fresh streaming state. ``non_causal`` streams only as one final step."""
        if mask_mode not in MASK_MODES:
            raise ValueError(f"unknown flow mask_mode '{mask_mode}' (expected one of {', '.join(MASK_MODES)})")
        device = spk_emb.device if device is None else torch.device(device)
        if spk_emb.shape[0] != batch_size:
            raise ValueError(f"spk_emb has batch {spk_emb.shape[0]}, expected {batch_size}")
        with torch.no_grad():
            spks = self.project_speaker(spk_emb.to(device))
        n_enc, n_up = len(self.encoder.encoders), len(self.encoder.up_encoders)
        return FlowStreamState(
            num_tokens=0, mask_mode=mask_mode, spks=spks, encoder_kv=[None] * n_enc, up_kv=[None] * n_up,
            estimator=[None] * self.cfg.n_timesteps,
        )

    def use_cuda_graphs(self, enabled: bool = True, max_graphs: int = 16, graph_factory=None) -> None:
        """Replay the token encoder and the Euler solve of :meth:`step` as CUDA graphs, one per
        chunk shape (:class:`minmo.modules.cuda_graphs.CudaGraphCache`; a no-op off CUDA). The
        encoder's caches always grow, and so does the estimator's with ``decoder_left_chunks =
        -1``: every chunk index of a stream has its own recordings, so ``max_graphs`` chunks of
        a reply (16: its first 9.6 s) replay and later chunks run eagerly. Each solve recording
        keeps its results, the new frames' estimator caches (~140 MB at CosyVoice 2's shapes
        in fp32). Recordings read the weights in place: call this again after loading other
        weights. ``graph_factory``: see :class:`CudaGraphCache` (tests emulate graphs on CPU)."""
        self._graphed_solve = self._graphed_encode = None
        if enabled:
            self._graphed_solve = CudaGraphCache(self._solve, max_graphs, graph_factory=graph_factory)
            self._graphed_encode = CudaGraphCache(self._encode_chunk, max_graphs, graph_factory=graph_factory)

    def chunk_end(self, start: int, mask_mode: str) -> int:
        """Token index where the attention chunk containing token ``start`` ends."""
        chunk = self._chunk(mask_mode)
        if chunk == 0:
            raise ValueError("non_causal mask has no chunks: it streams only as one final step")
        if chunk == 1:
            return start + 1
        return ((start + self.lookahead) // chunk + 1) * chunk - self.lookahead

    def _encode_chunk(
        self,
        tokens: torch.Tensor,
        future: torch.Tensor | None,
        lookahead_cache: torch.Tensor | None,
        encoder_kv: list[torch.Tensor | None],
        upsample_cache: torch.Tensor | None,
        up_kv: list[torch.Tensor | None],
        pstart: int,
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """Streaming token encoder: tokens ``[pstart, pstart + n)`` (+ lookahead) against the
        cached keys -> mu ``(B, n_mels, ratio * n)``, the new conv caches and the new positions'
        keys/values (to be appended to ``encoder_kv`` / ``up_kv``)."""
        enc = self.encoder
        n = tokens.shape[1]
        device = tokens.device
        x = enc.embed(self.input_embedding(tokens.clamp(min=0)))
        fut = None
        if future is not None and future.shape[1] > 0:
            fut = enc.embed(self.input_embedding(future[:, : self.lookahead].clamp(min=0)))
        x, la_cache = enc.pre_lookahead_layer(x, fut, lookahead_cache)
        bias = chunk_attention_bias(pstart, n, 0, pstart + n, chunk, self.lookahead, 1, -1, device)[None, None]
        new_enc_kv = []
        for layer, kv in zip(enc.encoders, encoder_kv):
            x, kv = layer(x, bias, kv)
            new_enc_kv.append(kv)
        x, up_cache = enc.up_layer(x, upsample_cache)
        x = enc.up_embed(x)
        f0, fn = pstart * self.ratio, n * self.ratio
        bias = chunk_attention_bias(f0, fn, 0, f0 + fn, chunk, self.lookahead, self.ratio, -1, device)[None, None]
        new_up_kv = []
        for layer, kv in zip(enc.up_encoders, up_kv):
            x, kv = layer(x, bias, kv)
            new_up_kv.append(kv)
        mu = self.encoder_proj(enc.after_norm(x)).transpose(1, 2)
        return mu, la_cache, new_enc_kv, up_cache, new_up_kv

    @torch.no_grad()
    def step(
        self,
        tokens: torch.Tensor,
        state: FlowStreamState,
        future: torch.Tensor | None = None,
        final: bool = False,
        cond: torch.Tensor | None = None,
        n_timesteps: int | None = None,
        cfg_rate: float | None = None,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, FlowStreamState]:
        """Stream one chunk of tokens to mel.

        Args:
            tokens: ``(B, n)`` the next tokens. Unless ``final``, they must end on a chunk
                boundary of the session's mask (:meth:`chunk_end`).
            state: from :meth:`init_state` or the previous step (not modified).
            future: ``(B, pre_lookahead_len)`` the tokens after ``tokens`` (required unless
                ``final``; at the end of the stream fewer or none, zero-filled).
            final: this is the last step of the stream.
            cond: ``(B, n_mels, ratio * n)`` prompt mel for these tokens (zeros when None).

        Returns:
            ``(B, n_mels, ratio * n)`` mel for ``tokens`` and the new state.
        """
        n_timesteps = n_timesteps or self.cfg.n_timesteps
        if n_timesteps != len(state.estimator):
            raise ValueError(f"state was made for {len(state.estimator)} Euler steps, got n_timesteps={n_timesteps}")
        cfg_rate = self.cfg.inference_cfg_rate if cfg_rate is None else cfg_rate
        b, n = tokens.shape
        pstart = state.num_tokens
        mode = state.mask_mode
        chunk = self._chunk(mode)
        if chunk == 0 and not (final and pstart == 0):
            raise ValueError("non_causal flow streams only as one final step over all tokens")
        if not final:
            if future is None or future.shape[1] != self.lookahead:
                raise ValueError(f"flow.step needs {self.lookahead} lookahead tokens unless final=True")
            if chunk > 1 and (pstart + n + self.lookahead) % chunk != 0:
                raise ValueError(
                    f"flow.step tokens [{pstart}, {pstart + n}) do not end on a '{mode}' chunk boundary "
                    f"(next boundary: {self.chunk_end(pstart, mode)})"
                )
        device = tokens.device
        encode = self._encode_chunk if self._graphed_encode is None else self._graphed_encode
        mu, la_cache, enc_new, up_cache, up_new = encode(
            tokens, future, state.lookahead_cache, state.encoder_kv, state.upsample_cache, state.up_kv, pstart, chunk
        )
        enc_kv = [new if old is None else torch.cat([old, new], dim=2) for old, new in zip(state.encoder_kv, enc_new)]
        up_kv = [new if old is None else torch.cat([old, new], dim=2) for old, new in zip(state.up_kv, up_new)]
        f0, fn = pstart * self.ratio, n * self.ratio

        cond = torch.zeros_like(mu) if cond is None else cond.to(mu.dtype)
        z = self.noise(f0, fn, b, device) * temperature
        bias = self._estimator_bias(mode, f0, fn, state.estimator_start, device)
        solve = self._solve if self._graphed_solve is None else self._graphed_solve
        mel, new = solve(mu, None, state.spks, cond, z, bias, state.estimator, n_timesteps, cfg_rate)
        caches = [c if old is None else old.extend(c) for old, c in zip(state.estimator, new)]
        keep_from = first_needed_key(f0 + fn, chunk, self.lookahead, self.ratio, self.cfg.decoder_left_chunks)
        start = state.estimator_start
        if keep_from > start:
            drop = keep_from - start
            caches = [EstimatorCache(c.convs, c.kvs[:, :, drop:]) for c in caches]
            start = keep_from
        new_state = FlowStreamState(
            num_tokens=pstart + n, mask_mode=mode, spks=state.spks, lookahead_cache=la_cache,
            encoder_kv=enc_kv, upsample_cache=up_cache, up_kv=up_kv, estimator=caches, estimator_start=start,
        )
        return mel, new_state
