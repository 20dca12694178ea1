"""Streaming token2wav: speech tokens -> 24 kHz audio through flow matching + HiFT.

A session owns a :class:`Token2WavState`; the shared :class:`Token2Wav` holds only weights::

    t2w = Token2Wav(flow, vocoder)
    state = t2w.init_state(spk_emb)                   # (1, 192) speaker embedding
    for tokens in voice_lm_chunks:                    # e.g. 15 tokens at a time
        audio, state = t2w.step(tokens, state)        # (1, samples), may be empty
    audio, state = t2w.step(empty, state, final=True) # flush

Chunking (mask ``chunk``, M = ``flow.chunk_tokens`` = 15, lookahead L = 3): the flow decodes
whole attention chunks; chunk k needs its tokens plus the L tokens after it. Chunks are
offset by L, so the first chunk is M - L = 12 tokens and is decoded as soon as the first
M = 15 tokens have arrived; every later chunk is M tokens and is decoded when the next M
tokens have arrived. The vocoder holds back ``stream_lookahead_frames`` mel frames per step
(their audio comes with the next step, cross-faded) and re-reads ``stream_context_frames`` on
the left, so joins are smooth. Work per chunk is constant: the flow state carries encoder
and estimator caches instead of re-running over all tokens so far.

``synthesize`` is the offline reference: one flow pass with the same mask over all tokens,
one vocoder pass over all frames. Streaming equals it exactly when the vocoder's context and
lookahead cover its receptive field, and closely with the (cheaper) defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minmo.models.flow import ChunkFlowMatching, FlowStreamState
from minmo.models.vocoder import HiFTStreamState, HiFTVocoder


@dataclass
class Token2WavState:
    """Per-session state (owned by the caller).

    Attributes:
        flow: flow-matching stream state.
        vocoder: vocoder stream state.
        pending: ``(B, n)`` tokens received but not yet decoded by the flow.
        prompt_mel: ``(B, n_mels, F)`` prompt mel for prompt tokens still pending.
        prompt_tokens_left: leading pending tokens that belong to the prompt (not voiced).
        finished: True after the final step.
    """

    flow: FlowStreamState
    vocoder: HiFTStreamState
    pending: torch.Tensor
    prompt_mel: torch.Tensor
    prompt_tokens_left: int = 0
    finished: bool = False


class Token2Wav:
    """Tokens -> audio, offline and streaming, sharing one flow and one vocoder.

    Args:
        flow: trained :class:`ChunkFlowMatching` (eval mode).
        vocoder: trained :class:`HiFTVocoder` (eval mode).
        mask_mode: flow attention mask for streaming (``chunk``, ``chunk2``, ``full_causal``;
            ``non_causal`` only decodes at the final step).
        n_timesteps: Euler steps (default: the flow config, 10).
        vocoder_stream: optional ``(context, lookahead, crossfade)`` frames overriding the
            vocoder config.
        cuda_graphs: on CUDA, replay the flow's token encoder and Euler solve and the vocoder's
            F0 predictor and generator as CUDA graphs (one per chunk shape; the first stream of
            each length records them), which removes most of the kernel-launch time at full
            shapes. Same results.
    """

    def __init__(
        self,
        flow: ChunkFlowMatching,
        vocoder: HiFTVocoder,
        mask_mode: str = "chunk",
        n_timesteps: int | None = None,
        vocoder_stream: tuple[int, int, int] | None = None,
        cuda_graphs: bool = False,
    ):
        self.flow = flow
        self.vocoder = vocoder
        self.mask_mode = mask_mode
        self.n_timesteps = n_timesteps or flow.cfg.n_timesteps
        self.vocoder_stream = vocoder_stream
        self.ratio = flow.ratio
        self.lookahead = flow.lookahead
        self.sample_rate = vocoder.cfg.sample_rate
        self.samples_per_token = flow.ratio * vocoder.hop
        if cuda_graphs:
            flow.use_cuda_graphs()
            vocoder.use_cuda_graphs()

    @property
    def device(self) -> torch.device:
        return next(self.flow.parameters()).device

    # ------------------------------------------------------------------ offline
    @torch.no_grad()
    def synthesize(
        self,
        tokens: torch.Tensor,
        spk_emb: torch.Tensor,
        prompt_tokens: torch.Tensor | None = None,
        prompt_mel: torch.Tensor | None = None,
        mask_mode: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Offline chunk-mode reference.

        Args:
            tokens: ``(B, S)``; spk_emb: ``(B, spk_dim)``; optional prompt as in
                :meth:`ChunkFlowMatching.synthesize`.

        Returns:
            audio ``(B, S * samples_per_token)`` and mel ``(B, n_mels, ratio * S)``.
        """
        mel = self.flow.synthesize(tokens.to(self.device), spk_emb.to(self.device), mask_mode=mask_mode or self.mask_mode,
                                   prompt_tokens=prompt_tokens, prompt_mel=prompt_mel, n_timesteps=self.n_timesteps)
        audio, _ = self.vocoder(mel)
        return audio, mel

    # ------------------------------------------------------------------ streaming
    def stream(self, tokens: torch.Tensor, spk_emb: torch.Tensor, chunk_tokens: int = 15) -> torch.Tensor:
        """Stream ``tokens`` ``(B, S)`` through one session, ``chunk_tokens`` at a time (as a
        voice LM would hand them over), and return all the audio ``(B, samples)``."""
        state, pieces = self.init_state(spk_emb), []
        for i in range(0, tokens.shape[1], chunk_tokens):
            audio, state = self.step(tokens[:, i:i + chunk_tokens], state)
            pieces.append(audio)
        audio, state = self.step(tokens[:, :0], state, final=True)
        return torch.cat(pieces + [audio], dim=1)

    def init_state(
        self,
        spk_emb: torch.Tensor,
        prompt_tokens: torch.Tensor | None = None,
        prompt_mel: torch.Tensor | None = None,
    ) -> Token2WavState:
        """New session.

        Args:
            spk_emb: ``(B, spk_dim)`` speaker embedding (one row per session in the batch).
            prompt_tokens / prompt_mel: optional voice prompt ``(B, P)`` and its mel
                ``(B, n_mels, >= ratio * P)``; decoded as condition, never voiced.
        """
        device = self.device
        b = spk_emb.shape[0]
        p = 0 if prompt_tokens is None else prompt_tokens.shape[1]
        pending = torch.zeros(b, 0, dtype=torch.long, device=device)
        pmel = torch.zeros(b, self.flow.n_mels, 0, device=device)
        if p:
            if prompt_mel is None or prompt_mel.shape[2] < p * self.ratio:
                raise ValueError(f"prompt_mel must have at least {p * self.ratio} frames for {p} prompt tokens")
            pending = prompt_tokens.to(device).long()
            pmel = prompt_mel[:, :, : p * self.ratio].to(device)
        return Token2WavState(
            flow=self.flow.init_state(b, spk_emb.to(device), self.mask_mode),
            vocoder=self.vocoder.init_state(b, device),
            pending=pending,
            prompt_mel=pmel,
            prompt_tokens_left=p,
        )

    def _next_span(self, state: Token2WavState, final: bool) -> tuple[int, bool] | None:
        """How many pending tokens the flow decodes next (and whether it is the last step)."""
        start = state.flow.num_tokens
        avail = state.pending.shape[1]
        if self.mask_mode == "non_causal":
            return (avail, True) if final else None
        if self.mask_mode == "full_causal":
            n = min(self.flow.cfg.chunk_tokens, avail - self.lookahead)
        else:
            n = self.flow.chunk_end(start, self.mask_mode) - start
            if avail < n + self.lookahead:
                n = 0
        if n > 0:
            return n, False
        return (avail, True) if final else None

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state: Token2WavState, final: bool = False) -> tuple[torch.Tensor, Token2WavState]:
        """Feed new tokens; return the audio that is ready.

        Args:
            tokens: ``(B, n)`` new speech tokens (``n`` may be 0).
            state: the session state (not modified).
            final: no more tokens will come: decode and flush everything.

        Returns:
            audio ``(B, samples)`` (possibly empty) and the new state.
        """
        if state.finished:
            raise ValueError("token2wav session already finished (final=True was given); start a new state")
        pending = torch.cat([state.pending, tokens.to(state.pending.device).long()], dim=1)
        st = Token2WavState(state.flow, state.vocoder, pending, state.prompt_mel, state.prompt_tokens_left)
        pieces = []
        while True:
            span = self._next_span(st, final)
            if span is None or (span[0] == 0 and not span[1]):
                break
            n, last = span
            chunk, rest = st.pending[:, :n], st.pending[:, n:]
            cond = None
            if st.prompt_mel.shape[2] > 0:
                cond = torch.zeros(chunk.shape[0], self.flow.n_mels, n * self.ratio, device=chunk.device)
                k = min(st.prompt_mel.shape[2], n * self.ratio)
                cond[:, :, :k] = st.prompt_mel[:, :, :k]
                st.prompt_mel = st.prompt_mel[:, :, k:]
            if n > 0:
                mel, st.flow = self.flow.step(chunk, st.flow, future=None if last else rest[:, : self.lookahead],
                                              final=last, cond=cond, n_timesteps=self.n_timesteps)
            else:
                mel = torch.zeros(chunk.shape[0], self.flow.n_mels, 0, device=chunk.device)
            drop = min(st.prompt_tokens_left, n)
            st.prompt_tokens_left -= drop
            mel = mel[:, :, drop * self.ratio:]
            st.pending = rest
            vs = self.vocoder_stream or (None, None, None)
            audio, st.vocoder = self.vocoder.step(mel, st.vocoder, final=last, context_frames=vs[0],
                                                  lookahead_frames=vs[1], crossfade_frames=vs[2])
            pieces.append(audio)
            if last:
                st.finished = True
                break
        if not pieces:
            return torch.zeros(pending.shape[0], 0, device=pending.device), st
        return torch.cat(pieces, dim=1), st


def load_module_weights(module: torch.nn.Module, path: str, prefix: str = "") -> None:
    """Load a safetensors state dict strictly; keys may carry ``prefix`` (it is stripped)."""
    from pathlib import Path

    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: weights file not found (set the config's path to a trained checkpoint)")
    state = load_file(path)
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: state dict does not match {type(module).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def build_token2wav(
    model_cfg, device: torch.device | str = "cpu", mask_mode: str = "chunk", cuda_graphs: bool = False
) -> Token2Wav:
    """Flow + vocoder from a :class:`minmo.config.ModelConfig` (weights from ``flow.path`` and
    ``vocoder.path`` when set, else random), in eval mode on ``device``; ``cuda_graphs`` as in
    :class:`Token2Wav`."""
    flow = ChunkFlowMatching(model_cfg.flow)
    vocoder = HiFTVocoder(model_cfg.vocoder)
    if model_cfg.flow.path:
        load_module_weights(flow, model_cfg.flow.path)
    if model_cfg.vocoder.path:
        load_module_weights(vocoder, model_cfg.vocoder.path, prefix="generator.")
    return Token2Wav(flow.to(device).eval(), vocoder.to(device).eval(), mask_mode=mask_mode, cuda_graphs=cuda_graphs)


def benchmark_token2wav(
    t2w: Token2Wav, num_tokens: int = 150, chunk_tokens: int = 15, repeats: int = 3, seed: int = 0
) -> dict[str, float]:
    """Streaming latency and speed of ``t2w`` on random tokens (batch 1).

    Returns:
        ``first_chunk_ms`` (first ``chunk_tokens`` tokens -> first audio, median over repeats),
        ``chunk_ms`` (mean later chunk), ``rtf`` (compute time / audio time over the stream),
        ``audio_s``, and ``first_chunk_cpu_ms`` (process CPU time of the first chunk: on a
        busy CPU machine wall time includes waiting for a core).
    """
    import statistics
    import time

    device = t2w.device
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, t2w.flow.cfg.vocab_size, (1, num_tokens), generator=gen).to(device)
    spk = torch.randn(1, t2w.flow.cfg.spk_embed_dim, generator=gen).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    firsts, firsts_cpu, chunks, totals, audio_s = [], [], [], [], 0.0
    for r in range(repeats + 1):  # the first run warms up
        state = t2w.init_state(spk)
        samples, total, per = 0, 0.0, []
        for i in range(0, num_tokens, chunk_tokens):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            audio, state = t2w.step(tokens[:, i:i + chunk_tokens], state, final=i + chunk_tokens >= num_tokens)
            sync()
            dt = time.perf_counter() - t0
            if i == 0:
                cpu_first = time.process_time() - c0
            per.append(dt)
            total += dt
            samples += audio.shape[1]
        if r:
            firsts.append(per[0])
            firsts_cpu.append(cpu_first)
            chunks.extend(per[1:-1])
            totals.append(total)
            audio_s = samples / t2w.sample_rate
    return {
        "first_chunk_ms": 1000 * statistics.median(firsts),
        "chunk_ms": 1000 * statistics.mean(chunks) if chunks else float("nan"),
        "rtf": statistics.median(totals) / max(audio_s, 1e-9),
        "audio_s": audio_s,
        "first_chunk_cpu_ms": 1000 * statistics.median(firsts_cpu),
    }
