"""The listening stream: user audio in, one duplex decision per LLM speech frame out.

Per session, continuously (also while the assistant speaks)::

    16 kHz samples -> front end (streaming fbank+LFR) -> encoder (streaming) -> input
    projector (causal, streaming) -> LLM (the session's *listening* KV cache, prompt
    ``system + user("") <|startofspeech|>`` then speech frames, as the training ``duplex``
    rows) -> duplex predictor (causal, streaming; sees the assistant-speaking flag)

The listening cache is separate from the conversation cache: the duplex stream is one long
user turn that never closes, while the conversation grows turn by turn.

Encoders: with ``encoder.stream_chunk`` set (minmo-small), the encoder streams block-causal
chunks of that many frames with a cache — SenseVoice and Whisper alike — and the duplex stage
trains the predictor on exactly these features (``MinMo.encode_speech(streaming=True)``), so
streaming equals offline. Without it, SenseVoice streams in chunks of ``encoder_chunk`` LFR
frames, and Whisper re-encodes the current window (at most ``window_seconds``) whenever new
frames are due, emitting only frames that are new and at least ``window_lookahead_frames``
from the window's right edge (a restarted window keeps ``window_overlap_seconds`` of emitted
audio as left context and starts at the first frame not yet emitted); both then differ from
the full-context features the duplex stage trained on (docs/minmo_small.md, duplex). Turns
sent to the LLM for answers are re-encoded offline, full context (see ``pipeline``).

Bounded context: after ``max_frames`` LLM speech frames the listening cache is rebuilt from
the prompt and the last ``keep_frames`` speech embeddings, the duplex predictor is replayed
over them, and the encoder and projector restart (positions continue as if the query
frames were already seen).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from minmo.inference.kv import KVStream, grouped_forward
from minmo.inference.prompts import DUPLEX_INSTRUCTION, system_ids, user_speech_ids
from minmo.inference.runtime import MinMoRuntime
from minmo.models.duplex import Decision


@dataclass
class ListenConfig:
    """Listening-stream settings (see module docstring)."""

    encoder_chunk: int = 2  # SenseVoice without encoder.stream_chunk
    max_frames: int = 500
    keep_frames: int = 200
    window_seconds: float = 10.0
    # windowed (Whisper) encoders: frames held back from the window's edge before they are
    # emitted (each sees that many frames ahead; decisions come that much later), and the
    # audio kept as left context when the window restarts
    window_lookahead_frames: int = 1
    # also the left context a cached (stream_chunk) Whisper stream re-encodes at its 30 s restart
    window_overlap_seconds: float = 2.0


@dataclass
class DuplexFrame:
    """The predictor's output for one LLM speech frame.

    Attributes:
        index: speech frame number in the session (query frames included).
        end_s: stream time (seconds of user audio) where the frame ends; None for the
            encoder's query frames (not audio).
        probs: ``(4,)`` probabilities of LISTEN, RESPOND, STOP, CONTINUE.
        decision: the predictor's decision from ``probs`` (``DuplexPredictor.decide``).
        speaking: the assistant-speaking flag the predictor was given.
    """

    index: int
    end_s: float | None
    probs: torch.Tensor
    decision: Decision
    speaking: bool


@dataclass
class ListenState:
    """One session's listening stream (owned by the session)."""

    frontend: Any
    encoder: Any  # the encoder's streaming state; None: windowed re-encoding
    projector: Any
    duplex: Any
    kv: KVStream = field(default_factory=KVStream)
    prefix_fed: bool = False
    samples_in: int = 0
    lfr_out: int = 0
    feat_buffer: list[torch.Tensor] = field(default_factory=list)
    enc_times: deque = field(default_factory=deque)
    window_feats: list[torch.Tensor] = field(default_factory=list)
    window_emitted: int = 0
    window_lfr_start: int = 0
    enc_frames: int = 0  # encoder frames emitted (cached Whisper stream)
    frames_out: int = 0
    speech_frames: int = 0
    recent: deque = field(default_factory=deque)


def new_listen_state(rt: MinMoRuntime, cfg: ListenConfig) -> ListenState:
    """Fresh listening state for one session."""
    if not 0 <= cfg.window_overlap_seconds <= cfg.window_seconds / 2:
        raise ValueError(f"ListenConfig.window_overlap_seconds {cfg.window_overlap_seconds} must be "
                         f"within [0, window_seconds / 2 = {cfg.window_seconds / 2}]")
    m = rt.model
    enc_state = None
    if m.cfg.encoder.kind == "whisper" and m.cfg.encoder.stream_chunk:
        enc_state = m.encoder.init_state(
            1, rt.device, chunk_size=m.cfg.encoder.stream_chunk,
            context_frames=round(cfg.window_overlap_seconds / m.frame_seconds))
    elif m.cfg.encoder.kind != "whisper":
        enc_state = m.encoder.init_state(1, rt.device)
    return ListenState(
        frontend=m.frontend.init_state(1),
        encoder=enc_state,
        projector=m.input_projector.init_state(1, rt.device, rt.dtype),
        duplex=m.duplex.init_state(1, rt.device, rt.dtype),
        recent=deque(maxlen=cfg.keep_frames),
    )


def listening_prompt(rt: MinMoRuntime, system: str) -> torch.Tensor:
    """Embeddings of the listening stream's prompt (the training ``duplex`` rows' layout):
    ``system + user(DUPLEX_INSTRUCTION) <|startofspeech|>``; speech frames follow."""
    before, _ = user_speech_ids(rt.tok, DUPLEX_INSTRUCTION)
    return rt.embed_ids(system_ids(rt.tok, system) + before)


def _encode_chunked(rt: MinMoRuntime, st: ListenState, cfg: ListenConfig,
                    feats: torch.Tensor) -> list[torch.Tensor]:
    """SenseVoice: block-causal chunks of LFR frames through its cached ``step``."""
    m = rt.model
    size = m.cfg.encoder.stream_chunk or cfg.encoder_chunk
    st.feat_buffer.append(feats)
    buf = torch.cat(st.feat_buffer)
    usable = (buf.shape[0] // size) * size
    enc_out = []
    for start in range(0, usable, size):
        chunk = buf[start:start + size][None]
        had_queries = st.encoder.query_ids is not None
        out, st.encoder = m.encoder.step(chunk, st.encoder)
        if had_queries:
            st.enc_times.extend([None] * m.num_prefix_frames)
        enc_out.append(out[0])
        for _ in range(chunk.shape[1]):
            st.lfr_out += 1
            st.enc_times.append(st.lfr_out * m.frame_seconds)
    st.feat_buffer = [buf[usable:]] if usable < buf.shape[0] else []
    return enc_out


def _encode_cached(rt: MinMoRuntime, st: ListenState, feats: torch.Tensor
                   ) -> list[torch.Tensor]:
    """Whisper with ``stream_chunk``: mel frames through its cached block-causal ``step``."""
    out, st.encoder = rt.model.encoder.step(feats[None], st.encoder)
    for _ in range(out.shape[1]):
        st.enc_frames += 1
        st.enc_times.append(st.enc_frames * rt.model.frame_seconds)
    return [out[0]] if out.shape[1] else []


def _encode_window(rt: MinMoRuntime, st: ListenState, cfg: ListenConfig,
                   feats: torch.Tensor) -> list[torch.Tensor]:
    """Whisper without ``stream_chunk``: re-encode the window, emit the frames now due."""
    m = rt.model
    st.window_feats.append(feats)
    window = torch.cat(st.window_feats)
    lens = torch.tensor([window.shape[0]], device=rt.device)
    out, out_lens = m.encoder(window[None], lens)
    enc_out = []
    # frames near the window's edge see little ahead: hold the last ones back
    ready = int(out_lens[0]) - max(1, cfg.window_lookahead_frames)
    if ready > st.window_emitted:
        enc_out.append(out[0, st.window_emitted:ready])
        for k in range(st.window_emitted, ready):
            # whisper: 2 feature frames per encoder frame, 10 ms each
            st.enc_times.append((st.window_lfr_start + 2 * (k + 1)) * 0.01)
        st.window_emitted = ready
    st.lfr_out += feats.shape[0]
    if window.shape[0] * 0.01 >= cfg.window_seconds:
        # restart from the first frame not emitted yet, with some audio before it as left
        # context (those frames are not emitted again)
        keep = max(0, st.window_emitted - int(cfg.window_overlap_seconds / 0.02))
        st.window_feats = [window[2 * keep:]]
        st.window_lfr_start += 2 * keep
        st.window_emitted -= keep
    return enc_out


def _encode_new(rt: MinMoRuntime, st: ListenState, cfg: ListenConfig,
                wave: np.ndarray) -> torch.Tensor:
    """Samples -> new projector frames ``(n, H)`` (updates ``st.enc_times`` and counters)."""
    m = rt.model
    feats, st.frontend = m.frontend.step(wave, st.frontend)
    enc_out: list[torch.Tensor] = []
    if feats.shape[0] > 0:
        feats = feats.to(rt.device)
        if st.encoder is None:
            enc_out = _encode_window(rt, st, cfg, feats)
        elif m.cfg.encoder.kind == "whisper":
            enc_out = _encode_cached(rt, st, feats)
        else:
            enc_out = _encode_chunked(rt, st, cfg, feats)
    if not enc_out:
        return torch.zeros(0, m.llm.hidden_size, device=rt.device, dtype=rt.dtype)
    proj, st.projector = m.input_projector.step(torch.cat(enc_out)[None].to(rt.dtype),
                                                st.projector)
    return proj[0]


def _frame_times(st: ListenState, n: int, stride: int,
                 enc_frame_s: float) -> list[tuple[float, float] | None]:
    """``(start_s, end_s)`` of the next ``n`` LLM frames (``None``: a query frame)."""
    times: list[tuple[float, float] | None] = []
    for _ in range(n):
        popped = [st.enc_times.popleft() for _ in range(min(stride, len(st.enc_times)))]
        real = [t for t in popped if t is not None]
        times.append((max(0.0, real[0] - enc_frame_s), real[-1]) if real else None)
    return times


@torch.inference_mode()
def listen_step(rt: MinMoRuntime, states: list[ListenState], waves: list[np.ndarray],
                speaking: list[Callable[[float], bool]], system: list[str],
                cfg: ListenConfig) -> list[list[DuplexFrame]]:
    """Feed each session's new 16 kHz samples; return its new duplex frames.

    Args:
        rt: shared runtime.
        states: per-session listening states (updated in place).
        waves: per-session ``(N,)`` float32 samples at 16 kHz (may be empty).
        speaking: per session, ``f(start_s) -> bool``: was the assistant speaking when the
            frame starting at ``start_s`` began (the flag training gives the predictor:
            :func:`minmo.models.duplex.speaking_before`).
        system: per-session system prompt (used when the stream starts or is rebuilt).
        cfg: settings.

    Returns:
        per session, the frames completed by these samples (often 0 or 1).
    """
    m = rt.model
    new_frames: list[torch.Tensor] = []
    for st, wave in zip(states, waves):
        st.samples_in += int(len(wave))
        new_frames.append(_encode_new(rt, st, cfg, np.asarray(wave, dtype=np.float32)))
    todo = [i for i, f in enumerate(new_frames) if f.shape[0] > 0]
    results: list[list[DuplexFrame]] = [[] for _ in states]
    if not todo:
        return results
    inputs = []
    for i in todo:
        st = states[i]
        x = new_frames[i]
        if not st.prefix_fed:
            x = torch.cat([listening_prompt(rt, system[i]), x])
        inputs.append(x)
    hidden = grouped_forward(rt.llm_body, [states[i].kv for i in todo], inputs)
    stride = m.input_projector.stride
    for i, h in zip(todo, hidden):
        st = states[i]
        n = new_frames[i].shape[0]
        st.prefix_fed = True
        h = h[-n:]
        spans = _frame_times(st, n, stride, m.frame_seconds)
        times = [span[1] if span else None for span in spans]
        # the engine's state as the frame began (models.duplex.speaking_before: as in training)
        flags = [bool(speaking[i](span[0])) if span else False for span in spans]
        flag_t = torch.tensor([flags], dtype=torch.long, device=rt.device)
        logits, st.duplex = m.duplex.step(h[None], flag_t, st.duplex)
        probs = logits[0].float().softmax(-1)
        decisions = m.duplex.decide(probs).tolist()
        for k in range(n):
            results[i].append(DuplexFrame(st.frames_out, times[k], probs[k],
                                          Decision(decisions[k]), flags[k]))
            st.frames_out += 1
        st.recent.extend(zip(new_frames[i].unbind(0), flags))
        if st.kv.length > cfg.max_frames:
            _rebuild(rt, st, system[i])
    return results


def _rebuild(rt: MinMoRuntime, st: ListenState, system: str) -> None:
    """Bounded context: restart cache, predictor, encoder and projector from recent frames."""
    m = rt.model
    frames = list(st.recent)
    st.kv.reset()
    emb = torch.stack([f for f, _ in frames]) if frames else None
    prompt = listening_prompt(rt, system)
    x = prompt if emb is None else torch.cat([prompt, emb])
    h = grouped_forward(rt.llm_body, [st.kv], [x])[0]
    st.duplex = m.duplex.init_state(1, rt.device, rt.dtype)
    if frames:
        flags = torch.tensor([[f for _, f in frames]], dtype=torch.long, device=rt.device)
        _, st.duplex = m.duplex.step(h[-len(frames):][None], flags, st.duplex)
    if st.encoder is not None and m.cfg.encoder.kind != "whisper":
        # (a cached Whisper stream keeps its encoder state: it bounds itself, at 30 s)
        fresh = m.encoder.init_state(1, rt.device)
        st.encoder = dataclasses.replace(fresh, query_ids=None,
                                         num_positions=m.num_prefix_frames)
    st.projector = m.input_projector.init_state(1, rt.device, rt.dtype)
    st.enc_times.clear()
