"""Per-session state and the speaking side of inference: conversation, replies, transcripts.

A :class:`VoiceSession` is everything one conversation owns: its listening stream
(:mod:`minmo.inference.listen`), its conversation KV cache with the items in it, and its
random generator. The shared :class:`~minmo.inference.runtime.MinMoRuntime` holds none of it.

Replies are :class:`ResponseJob` objects advanced by :func:`step_jobs`, which steps many
jobs (of many sessions) at once: one batched LLM step (one text token each; a reply's
first ``n_sem + 1`` come in one call), then batched voice-LM steps until every stream waits
for text (at most ``voice_steps``), then token2wav on every 15 new speech tokens::

    text token -> text delta, semantic vector -> (every 5) voice LM -> (every 15 tokens)
    token2wav -> audio chunk

The serving engine calls :func:`step_jobs` for all sessions each tick; the offline helpers
:func:`respond`, :func:`reply` and :func:`transcribe` call it for one job until done.

Input transcripts: the MinMo LLM itself transcribes, in a second cheap pass with the ASR
instruction (``"Transcribe the speech."``) over the same speech embeddings, in a throw-away
cache (:func:`new_transcription`); it is batched with the replies.

Conversation context policy: the cache holds the system block and whole items. Before an
item or reply would exceed ``max_context_tokens`` (minus the reply budget), the oldest
items are dropped and the cache is rebuilt in one prefill from the kept items' stored
embeddings. The system block is never dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from minmo.inference.beam import BeamSearch, Hypothesis, beam_search
from minmo.inference.ctc_prefix import CtcPrefixScorer
from minmo.inference.generate import TextStream, VoiceStream, text_step, voice_step
from minmo.inference.kv import KVStream, grouped_forward
from minmo.inference.listen import ListenConfig, ListenState, new_listen_state
from minmo.inference.prompts import (
    ASR_INSTRUCTION,
    CHAT_INSTRUCTION,
    assistant_close_ids,
    assistant_header_ids,
    assistant_text_ids,
    system_ids,
    user_speech_ids,
    user_text_ids,
)
from minmo.inference.runtime import MinMoRuntime


@dataclass
class GenerationConfig:
    """Reply generation settings.

    Attributes:
        max_text_tokens: reply length limit (text tokens).
        temperature, top_p: text sampling (``temperature == 0``: greedy).
        max_speech_tokens: speech length limit (25 tokens per second).
        voice_greedy: argmax speech tokens instead of repetition-aware sampling.
        voice_steps: at most this many voice-LM steps per :func:`step_jobs` call (it stops
            earlier when every stream waits for text; one token2wav chunk is 15).
        fast_start: a reply's first speech chunk does not wait for scheduler ticks: its
            first ``n_sem + 1`` text tokens come in one :func:`step_jobs` call.
        transcribe_max_tokens: input-transcript length limit.
        transcribe_ctc_weight: the CTC share of joint CTC/attention decoding of transcripts
            (:mod:`minmo.inference.ctc_prefix`; 0: the LLM alone, greedy).
        beam_size: beam width of the text of transcripts and other speech-to-text passes
            (:func:`new_transcription`, so also :func:`transcribe`, :func:`speech_to_text`
            and the server's input transcripts) and of :func:`reply`'s text, which its
            speech then reads (:mod:`minmo.inference.beam`); 1: greedy. Replies that are
            streamed (:func:`start_reply`, :func:`respond`, the server's) ignore it: they
            are written, and spoken, token by token.
        length_penalty: beam search ranks finished texts by log-probability /
            length ** this (0: raw log-probability, which prefers short texts; 1: the
            mean token log-probability).
        stop_loops: a generated reply that starts repeating itself
            (:func:`~minmo.inference.generate.ends_in_loop`: a span repeated three times,
            at least 12 tokens) ends there, ``incomplete`` as if cut by its length limit,
            instead of writing and speaking the loop to ``max_text_tokens``.
        seed: session generator seed (None: nondeterministic).
    """

    max_text_tokens: int = 200
    temperature: float = 0.0
    top_p: float = 0.9
    max_speech_tokens: int = 1500
    voice_greedy: bool = False
    voice_steps: int = 15
    fast_start: bool = True
    transcribe_max_tokens: int = 96
    transcribe_ctc_weight: float = 0.0
    beam_size: int = 1
    length_penalty: float = 0.5  # chosen on real held-out speech: docs/eval.md
    stop_loops: bool = True
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.beam_size > 1 and self.transcribe_ctc_weight > 0:
            raise ValueError("joint CTC decoding of transcripts is greedy: set "
                             "transcribe_ctc_weight or beam_size, not both")


@dataclass
class SessionConfig:
    """Per-session settings."""

    system_prompt: str | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    max_context_tokens: int = 2048


# ---- events -----------------------------------------------------------------------------


@dataclass
class TextDelta:
    """New reply (or transcript) text."""

    text: str


@dataclass
class SpeechTokens:
    """Speech tokens produced in one step."""

    tokens: list[int]


@dataclass
class AudioChunk:
    """``(N,)`` float32 reply audio at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int


@dataclass
class JobDone:
    """A job ended. ``status``: ``completed``, ``incomplete`` (length) or ``cancelled``."""

    status: str
    text: str


JobEvent = TextDelta | SpeechTokens | AudioChunk | JobDone


# ---- conversation -----------------------------------------------------------------------


@dataclass
class ChatItem:
    """One item in the conversation cache: role, plain text (if any) and the embeddings
    that were (or will be) fed for it, ``(n, H)``."""

    role: str
    text: str | None
    embeds: torch.Tensor


@dataclass
class Conversation:
    """The conversation KV cache and its items.

    Attributes:
        kv: LLM cache (system block + fed items).
        system: system prompt text.
        items: items in order (fed or pending).
        pending: embeddings not fed yet; they go in front of the next reply's prompt.
    """

    kv: KVStream
    system: str
    items: list[ChatItem] = field(default_factory=list)
    pending: list[torch.Tensor] = field(default_factory=list)
    system_len: int = 0

    def pending_len(self) -> int:
        return sum(p.shape[0] for p in self.pending)


@dataclass
class VoiceSession:
    """Everything one conversation owns."""

    cfg: SessionConfig
    system: str
    listen: ListenState
    chat: Conversation
    generator: torch.Generator


def new_session(rt: MinMoRuntime, cfg: SessionConfig | None = None) -> VoiceSession:
    """A fresh session: empty conversation (system block pending), fresh listening stream."""
    cfg = cfg or SessionConfig()
    system = cfg.system_prompt if cfg.system_prompt is not None else rt.model.cfg.system_prompt
    gen = torch.Generator(device="cpu")
    if cfg.generation.seed is not None:
        gen.manual_seed(cfg.generation.seed)
    else:
        gen.seed()
    chat = Conversation(KVStream(), system)
    sys_emb = rt.embed_ids(system_ids(rt.tok, system))
    chat.pending.append(sys_emb)
    chat.system_len = sys_emb.shape[0]
    return VoiceSession(cfg, system, new_listen_state(rt, cfg.listen), chat, gen)


def set_system_prompt(rt: MinMoRuntime, session: VoiceSession, system: str) -> None:
    """Replace the system prompt; the conversation is rebuilt on the next reply."""
    session.system = system
    session.chat.system = system
    _rebuild(rt, session.chat, keep_from=0, feed_now=False)


def _rebuild(rt: MinMoRuntime, chat: Conversation, keep_from: int, feed_now: bool) -> None:
    """Restart the cache: system block + items[keep_from:] (fed now, or left pending)."""
    chat.items = chat.items[keep_from:]
    chat.kv.reset()
    sys_emb = rt.embed_ids(system_ids(rt.tok, chat.system))
    chat.system_len = sys_emb.shape[0]
    chat.pending = [sys_emb, *(it.embeds for it in chat.items)]
    if feed_now:
        grouped_forward(rt.llm_body, [chat.kv], [torch.cat(chat.pending)])
        chat.pending = []


def _fit(rt: MinMoRuntime, session: VoiceSession, extra: int) -> None:
    """Drop the oldest items until ``extra`` more positions fit in the context budget."""
    chat = session.chat
    limit = session.cfg.max_context_tokens
    total = chat.kv.length + chat.pending_len() + extra
    if total <= limit:
        return
    sizes = [it.embeds.shape[0] for it in chat.items]
    used = chat.system_len + sum(sizes) + extra
    drop = 0
    while drop < len(sizes) and used > limit:
        used -= sizes[drop]
        drop += 1
    if used > limit:
        raise ValueError(f"one turn needs {used} positions but max_context_tokens is {limit}; "
                         "raise max_context_tokens or shorten the turn")
    _rebuild(rt, chat, keep_from=drop, feed_now=False)


@dataclass
class ChatMark:
    """Where a conversation stood (:func:`mark_chat`), to return to (:func:`rewind_chat`)."""

    cache: Any
    length: int
    items: list[ChatItem]
    pending: list[torch.Tensor]
    system_len: int
    rng: torch.Tensor


def mark_chat(session: VoiceSession) -> ChatMark:
    """The conversation's state now: its cache, items, pending inputs and sampler state."""
    chat = session.chat
    return ChatMark(chat.kv.cache, chat.kv.length, list(chat.items), list(chat.pending),
                    chat.system_len, session.generator.get_state())


def rewind_chat(session: VoiceSession, mark: ChatMark) -> None:
    """Forget everything added to the conversation since ``mark``: items, fed positions
    and sampler draws (a reply started speculatively and not taken, ``minmo.serving``).
    A job started since must be dropped, never stepped again."""
    chat, kv = session.chat, session.chat.kv
    if kv.cache is mark.cache:
        kv.truncate(mark.length)
    else:  # rebuilt since (:func:`_fit`): the old cache was replaced, not changed
        kv.cache, kv.length = mark.cache, mark.length
    chat.items, chat.pending, chat.system_len = list(mark.items), list(mark.pending), \
        mark.system_len
    session.generator.set_state(mark.rng)


def add_user_speech(rt: MinMoRuntime, session: VoiceSession, speech: torch.Tensor,
                    transcript: str | None = None) -> ChatItem:
    """Append a spoken user turn (``(F, H)`` speech embeddings) to the conversation."""
    before, after = user_speech_ids(rt.tok, CHAT_INSTRUCTION)
    emb = torch.cat([rt.embed_ids(before), speech.to(rt.dtype), rt.embed_ids(after)])
    return _add(rt, session, ChatItem("user", transcript, emb))


def add_user_text(rt: MinMoRuntime, session: VoiceSession, text: str) -> ChatItem:
    """Append a typed user turn."""
    return _add(rt, session, ChatItem("user", text, rt.embed_ids(user_text_ids(rt.tok, text))))


def add_assistant_text(rt: MinMoRuntime, session: VoiceSession, text: str) -> ChatItem:
    """Append an assistant turn given as text (history set by the client)."""
    emb = rt.embed_ids(assistant_text_ids(rt.tok, text))
    return _add(rt, session, ChatItem("assistant", text, emb))


def _add(rt: MinMoRuntime, session: VoiceSession, item: ChatItem) -> ChatItem:
    _fit(rt, session, item.embeds.shape[0])
    session.chat.items.append(item)
    session.chat.pending.append(item.embeds)
    return item


# ---- jobs -------------------------------------------------------------------------------


@dataclass
class ResponseJob:
    """One reply (or transcript) being generated.

    Attributes:
        text: the LLM stream.
        voice: the voice-LM stream (None: text only).
        vocoder_state: token2wav state.
        kind: ``"reply"`` or ``"transcript"``.
        timings: seconds since ``t0`` of ``first_token``, ``five_tokens``,
            ``first_speech_chunk`` (15 tokens), ``first_audio``.
    """

    text: TextStream
    voice: VoiceStream | None
    vocoder_state: Any
    kind: str = "reply"
    emitted: str = ""
    unvocoded: list[int] = field(default_factory=list)
    vocoder_flushed: bool = False
    vocoder_inflight: int = 0
    ready_audio: list[np.ndarray] = field(default_factory=list)
    finished: bool = False
    status: str = "in_progress"
    session: VoiceSession | None = None
    item: ChatItem | None = None
    t0: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)

    def cancel(self, rt: MinMoRuntime) -> None:
        """Stop now: no further events; the conversation keeps what was said so far."""
        if self.finished:
            return
        self._stop("cancelled")
        self._close(rt)

    def discard(self) -> None:
        """Stop without a trace in the conversation: the caller rewinds it
        (:func:`rewind_chat`) to where it stood before this job started."""
        self._stop("discarded")
        self.finished = True

    def _stop(self, status: str) -> None:
        self.text.cancel()
        if self.voice is not None:
            self.voice.cancel()
        self.status = status

    def _mark(self, name: str) -> None:
        self.timings.setdefault(name, time.perf_counter() - self.t0)

    def _close(self, rt: MinMoRuntime) -> None:
        """Finish; a reply's words (up to where it stopped) become a history item."""
        self.finished = True
        if self.kind != "reply" or self.session is None:
            return
        chat = self.session.chat
        unfed = [] if self.text.finish_reason == "stop" else [self.text.feed]
        close = rt.embed_ids(assistant_close_ids(rt.tok))
        chat.pending.extend([*unfed, close])
        said = rt.embed_ids(self.text.ids) if self.text.ids else close[:0]
        header = rt.embed_ids(assistant_header_ids(rt.tok))
        self.item = ChatItem("assistant", self.emitted, torch.cat([header, said, close]))
        chat.items.append(self.item)


def start_reply(rt: MinMoRuntime, session: VoiceSession, audio: bool = True,
                gen: GenerationConfig | None = None, say: str | list[int] | None = None,
                say_ends: bool = True) -> ResponseJob:
    """Begin a reply to the conversation so far (pending items are fed with its prompt).

    ``say``: the reply's text (or its token ids), given instead of generated (read aloud):
    the LLM is fed it token by token for its hidden states, and the voice LM speaks exactly
    these words; then the reply ends (``say_ends``), or stops there as cut by its length
    limit (``incomplete``)."""
    gen = gen or session.cfg.generation
    forced = rt.tok.encode(say) if isinstance(say, str) else say
    max_text = len(forced) + int(say_ends) if forced is not None else gen.max_text_tokens
    _fit(rt, session, len(assistant_header_ids(rt.tok)) + max_text + 2)
    chat = session.chat
    header = rt.embed_ids(assistant_header_ids(rt.tok))
    prompt = torch.cat([*chat.pending, header])
    chat.pending = []
    text = TextStream(chat.kv, prompt, max_text, semantic=audio, temperature=gen.temperature,
                      top_p=gen.top_p, generator=session.generator, forced=forced,
                      stop_loops=gen.stop_loops and forced is None)
    voice = None
    if audio:
        voice = VoiceStream(max_tokens=gen.max_speech_tokens, greedy=gen.voice_greedy,
                            generator=session.generator)
    job = ResponseJob(text, voice, rt.vocoder.init_state() if audio else None, "reply",
                      session=session)
    return job


def _beam_reply(rt: MinMoRuntime, session: VoiceSession, gen: GenerationConfig) -> Hypothesis:
    """The best reply text to the conversation so far by beam search, leaving the
    conversation as it was (its pending items stay pending)."""
    _fit(rt, session, len(assistant_header_ids(rt.tok)) + gen.max_text_tokens + 2)
    prompt = torch.cat([*session.chat.pending, rt.embed_ids(assistant_header_ids(rt.tok))])
    return beam_search(rt, prompt, gen.beam_size, gen.max_text_tokens, gen.length_penalty,
                       prefix=session.chat.kv)


def _speech_prompt(rt: MinMoRuntime, system: str, speech: torch.Tensor,
                   instruction: str) -> torch.Tensor:
    """Input embeddings of a speech-in, text-out prompt (the training layout), up to the
    assistant header."""
    before, after = user_speech_ids(rt.tok, instruction)
    return torch.cat([rt.embed_ids(system_ids(rt.tok, system) + before), speech.to(rt.dtype),
                      rt.embed_ids(after + assistant_header_ids(rt.tok))])


def _system_of(session_or_system: VoiceSession | str) -> str:
    return (session_or_system.system if isinstance(session_or_system, VoiceSession)
            else session_or_system)


def new_transcription(rt: MinMoRuntime, session_or_system: VoiceSession | str,
                      speech: torch.Tensor, gen: GenerationConfig | None = None,
                      instruction: str = ASR_INSTRUCTION,
                      max_tokens: int | None = None) -> ResponseJob:
    """A speech-in, text-out job over ``(F, H)`` speech embeddings in its own throw-away
    cache: the transcript (ASR instruction) by default, or any task's ``instruction``
    (translation, language ID, ...). Greedy, streamed token by token; with
    ``gen.beam_size > 1`` a beam search (:class:`~minmo.inference.beam.BeamSearch`) whose
    text comes whole when it ends. ``max_tokens`` defaults to ``gen.transcribe_max_tokens``."""
    gen = gen or GenerationConfig()
    prompt = _speech_prompt(rt, _system_of(session_or_system), speech, instruction)
    limit = max_tokens or gen.transcribe_max_tokens
    text = TextStream(KVStream(), prompt, limit)
    if gen.beam_size > 1:
        text.beam = BeamSearch(rt, prompt, gen.beam_size, limit, gen.length_penalty)
    elif gen.transcribe_ctc_weight > 0 and instruction == ASR_INSTRUCTION:
        text.ctc = CtcPrefixScorer(rt.ctc_log_probs(speech), gen.transcribe_ctc_weight)
    return ResponseJob(text, None, None, "transcript")


def embeddings_to_text(rt: MinMoRuntime, session_or_system: VoiceSession | str,
                       speech: torch.Tensor, gen: GenerationConfig | None = None,
                       instruction: str = ASR_INSTRUCTION, max_tokens: int | None = None) -> str:
    """The whole text of one speech-in, text-out pass over ``(F, H)`` speech embeddings: a
    :func:`new_transcription` job (greedy, or a beam search) run to its end."""
    gen = gen or GenerationConfig()
    job = new_transcription(rt, session_or_system, speech, gen, instruction, max_tokens)
    for _ in run_job(rt, job, gen):
        pass
    return job.emitted


def _text_delta(rt: MinMoRuntime, job: ResponseJob) -> str:
    full = rt.decode(job.text.ids)
    if full.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
        return ""
    delta = full[len(job.emitted):] if full.startswith(job.emitted) else ""
    job.emitted = full if full.startswith(job.emitted) else job.emitted
    return delta


@torch.inference_mode()
def step_jobs(rt: MinMoRuntime, jobs: list[ResponseJob], voice_steps: int = 15,
              pool: Any = None, fast_start: bool = True) -> list[list[JobEvent]]:
    """Advance every unfinished job: a text token, speech tokens, audio, and its end.

    1. text: one batched LLM step for every job still writing; with ``fast_start`` a reply
       whose voice LM cannot begin yet (it needs ``n_sem + 1`` semantic vectors, or the end
       of the text) gets up to that many steps in this call, so its first speech chunk comes
       out of one call instead of ``n_sem + 1``;
    2. speech: batched voice-LM steps until every stream waits for text (5:15: at most 3
       tokens per text token while the reply is being written) or ``voice_steps`` is reached
       (after the text ends it runs ahead at up to ``voice_steps`` per call);
    3. audio: new speech tokens to the decoder in multiples of its ``feed_tokens`` (flushed
       when the speech ends); a reply's first audio is decoded here, later chunks on
       ``pool``'s worker thread when given (their audio comes out on a later call);
    4. a job whose text, speech and audio are all out ends with :class:`JobDone`.

    Scheduling does not change what is generated: the voice LM's inputs depend only on the
    text, not on when it arrived (tested).

    Args:
        pool: a :class:`~minmo.inference.vocoder_pool.VocoderPool`; None: all inline.

    Returns:
        per job, its events of this step (a finished job's last one is :class:`JobDone`).
    """
    events: list[list[JobEvent]] = [[] for _ in jobs]
    if pool is not None:
        for job, wave in pool.collect():
            job.vocoder_inflight -= 1
            if not job.finished and len(wave):
                job.ready_audio.append(wave)
    n_sem = rt.model.voice_lm.n_sem
    _write_text(rt, jobs, events, n_sem + 1 if fast_start else 1, n_sem)
    _write_speech(rt, jobs, events, voice_steps, n_sem)
    _decode_audio(rt, jobs, pool)
    for i, job in enumerate(jobs):
        if not job.finished and job.ready_audio:
            job._mark("first_audio")
            events[i].extend(AudioChunk(w, rt.sample_rate_out) for w in job.ready_audio)
            job.ready_audio.clear()
    for i, job in enumerate(jobs):
        if _all_out(job):
            events[i].extend(_finish(rt, job))
    return events


def _write_text(rt: MinMoRuntime, jobs: list[ResponseJob], events: list[list[JobEvent]],
                rounds: int, n_sem: int) -> None:
    """Step 1 of :func:`step_jobs`: round 0 steps every writing job, later rounds only the
    replies whose voice LM still waits for its first block."""
    def starting(job: ResponseJob) -> bool:
        return job.voice is not None and not job.voice.tokens and not job.voice.block_ready(n_sem)

    for round_ in range(rounds):
        live = [i for i, j in enumerate(jobs)
                if not j.finished and not j.text.done and (round_ == 0 or starting(j))]
        if not live:
            return
        for i, out in zip(live, text_step(rt, [jobs[i].text for i in live])):
            job = jobs[i]
            if out.token is not None:
                job._mark("first_token")
                if len(job.text.ids) == 5:
                    job._mark("five_tokens")
                delta = _text_delta(rt, job)
                if delta:
                    events[i].append(TextDelta(delta))
                if job.voice is not None and out.semantic is not None:
                    job.voice.add_semantic(out.semantic)
            if job.text.done and job.voice is not None:
                job.voice.finish_text()


def _write_speech(rt: MinMoRuntime, jobs: list[ResponseJob], events: list[list[JobEvent]],
                  max_steps: int, n_sem: int) -> None:
    """Step 2 of :func:`step_jobs`: batched voice-LM steps while any stream can take one."""
    for _ in range(max_steps):
        vjobs = [i for i, j in enumerate(jobs)
                 if not j.finished and j.voice is not None and j.voice.ready(n_sem)]
        if not vjobs:
            return
        for i, tok in zip(vjobs, voice_step(rt, [jobs[i].voice for i in vjobs])):
            if tok is not None:
                jobs[i].unvocoded.append(tok)
                events[i].append(SpeechTokens([tok]))


def _decode_audio(rt: MinMoRuntime, jobs: list[ResponseJob], pool: Any) -> None:
    """Step 3 of :func:`step_jobs`: due speech tokens to the decoder (audio into
    ``job.ready_audio`` now, or from the pool on a later call)."""
    feed = max(1, int(getattr(rt.vocoder, "feed_tokens", 15)))
    for job in jobs:
        if job.finished or job.voice is None or job.vocoder_flushed:
            continue
        last = job.voice.finished
        if len(job.unvocoded) < feed and not last:
            continue
        n = len(job.unvocoded) if last else (len(job.unvocoded) // feed) * feed
        toks = torch.tensor(job.unvocoded[:n], dtype=torch.long)
        del job.unvocoded[:n]
        job.vocoder_flushed = last
        if len(job.voice.tokens) >= 15:
            job._mark("first_speech_chunk")
        # a reply's first audio is decoded here, not queued: the worker's result would only
        # be collected on a later call (order is kept: nothing of this job is in flight)
        first = "first_audio" not in job.timings and not job.vocoder_inflight
        if pool is not None and not first:
            pool.submit(job, toks, last)
            continue
        wave, job.vocoder_state = rt.vocoder.step(toks, job.vocoder_state, last=last)
        if len(wave):
            job.ready_audio.append(np.asarray(wave, dtype=np.float32))


def _all_out(job: ResponseJob) -> bool:
    """The job's text is done and (for a spoken reply) all its audio decoded and collected."""
    if job.finished or not job.text.done:
        return False
    return job.voice is None or (job.vocoder_flushed and not job.vocoder_inflight)


def _finish(rt: MinMoRuntime, job: ResponseJob) -> list[JobEvent]:
    """Step 4 of :func:`step_jobs`: the last text (held back until complete) and JobDone."""
    out: list[JobEvent] = []
    tail = rt.decode(job.text.ids)
    if tail != job.emitted and tail.startswith(job.emitted):
        out.append(TextDelta(tail[len(job.emitted):]))
        job.emitted = tail
    job.status = "incomplete" if job.text.finish_reason in ("length", "repetition") \
        else "completed"
    job._close(rt)
    out.append(JobDone(job.status, job.emitted))
    return out


# ---- one-session helpers ----------------------------------------------------------------


def run_job(rt: MinMoRuntime, job: ResponseJob, gen: GenerationConfig | None = None
            ) -> Iterator[JobEvent]:
    """Step one job to the end, yielding its events."""
    gen = gen or GenerationConfig()
    while not job.finished:
        for ev in step_jobs(rt, [job], gen.voice_steps, fast_start=gen.fast_start)[0]:
            yield ev


def respond(rt: MinMoRuntime, session: VoiceSession, wave: np.ndarray | None = None,
            text: str | None = None, audio: bool = True,
            say: str | None = None) -> Iterator[JobEvent]:
    """One user turn (speech ``wave`` at 16 kHz, or ``text``) and the streamed reply
    (``say``: its given text, see :func:`start_reply`), decoded token by token as the server
    decodes it (greedy or sampled; ``beam_size`` is for :func:`reply`)."""
    if wave is not None:
        add_user_speech(rt, session, rt.encode_speech(wave))
    elif text is not None:
        add_user_text(rt, session, text)
    job = start_reply(rt, session, audio=audio, say=say)
    yield from run_job(rt, job, session.cfg.generation)


def transcribe(rt: MinMoRuntime, wave: np.ndarray, gen: GenerationConfig | None = None,
               system: str | None = None) -> str:
    """Transcript of a 16 kHz waveform by the MinMo LLM (ASR instruction prompt)."""
    return speech_to_text(rt, wave, ASR_INSTRUCTION, gen=gen, system=system)


def speech_to_text(rt: MinMoRuntime, wave: np.ndarray, instruction: str,
                   max_tokens: int | None = None, gen: GenerationConfig | None = None,
                   system: str | None = None) -> str:
    """One speech-in, text-out pass with any task instruction, e.g. ``"Translate the speech
    into German."`` -- the training prompt layout (greedy, or a beam search: ``gen``)."""
    return embeddings_to_text(rt, system if system is not None else rt.model.cfg.system_prompt,
                              rt.encode_speech(wave), gen, instruction, max_tokens)


@dataclass
class Reply:
    """Result of :func:`reply`.

    Attributes:
        transcript: the user's words as the model transcribed them (None if not asked).
        text: reply text.
        wave: ``(N,)`` float32 reply speech at ``sample_rate`` (empty for text only).
        speech_tokens: the reply's speech tokens.
        status: ``completed`` or ``incomplete``.
        timings: seconds from the reply's start: ``first_token``, ``five_tokens``,
            ``first_speech_chunk``, ``first_audio``, ``total``.
    """

    transcript: str | None
    text: str
    wave: np.ndarray
    sample_rate: int
    speech_tokens: list[int]
    status: str
    timings: dict[str, float]


def reply(rt: MinMoRuntime, wave: np.ndarray | None, session: VoiceSession | None = None,
          with_transcript: bool = True, audio: bool = True, text: str | None = None,
          say: str | None = None) -> Reply:
    """One turn offline: the user's speech ``wave`` (16 kHz; its transcript optional) or
    typed ``text``, then the reply text (``say``: given, see :func:`start_reply`) and the
    reply speech. With ``beam_size > 1`` in the session's generation config the transcript
    and the reply text are beam-searched, and the reply's speech then reads that text (its
    timings then count the search before the first token)."""
    session = session or new_session(rt)
    gen = session.cfg.generation
    if gen.beam_size > 1 and gen.temperature > 0 and say is None:
        raise ValueError("reply: the reply text is beam-searched (beam_size > 1), which is "
                         "deterministic: set temperature (sampling) or beam_size, not both")
    transcript = None
    if wave is not None:
        speech = rt.encode_speech(wave)
        if with_transcript:
            transcript = embeddings_to_text(rt, session, speech, gen)
        add_user_speech(rt, session, speech, transcript)
    elif text is not None:
        add_user_text(rt, session, text)
    say_ends, searched_from = True, None
    if say is None and gen.beam_size > 1:  # the best text, then its speech
        searched_from = time.perf_counter()
        best = _beam_reply(rt, session, gen)
        say, say_ends = best.ids, best.finished
    job = start_reply(rt, session, audio=audio, say=say, say_ends=say_ends)
    if searched_from is not None:  # the reply began with its search: its timings count it
        job.t0 = searched_from
    chunks, tokens = [], []
    for ev in run_job(rt, job, gen):
        if isinstance(ev, AudioChunk):
            chunks.append(ev.samples)
        elif isinstance(ev, SpeechTokens):
            tokens.extend(ev.tokens)
    job.timings["total"] = time.perf_counter() - job.t0
    out = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return Reply(transcript, job.emitted, out, rt.sample_rate_out, tokens, job.status,
                 dict(job.timings))
