"""Incremental generation streams, steppable one batched call at a time across sessions.

* :class:`TextStream`: the LLM writing a reply (or a transcript) token by token. Each step
  feeds the stream's pending embeddings, samples one token, and (for replies) makes the
  token's *semantic vector*: ``output_projector(hidden that produced y_t, embedding(y_t))``.
  A transcript may instead be a beam search (:class:`~minmo.inference.beam.BeamSearch`),
  whose hypotheses are fed in the same batched forward and whose text is known at its end.
* :class:`VoiceStream`: the voice token LM's 5:15 schedule as a state machine. It holds the
  semantic vectors not fed yet and knows what to feed next: ``SOS``, a group of 5 vectors
  (then 15 speech tokens, one per step), or, once the text is done, the remaining vectors and
  ``TASK`` (then tokens until ``EOS``). Inputs whose logits are not needed (``SOS``, the
  15th token of a group) are fed together with the next input, saving a forward pass. The
  schedule equals ``VoiceTokenLM.push`` (tested with greedy decoding), but never blocks: one
  speech token per step, so a session can be cancelled between any two tokens.

:func:`text_step` and :func:`voice_step` advance many streams with one batched forward each
(:func:`minmo.inference.kv.grouped_forward`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from minmo.inference.beam import BeamSearch
from minmo.inference.ctc_prefix import CtcPrefixScorer
from minmo.inference.kv import KVStream, grouped_forward
from minmo.inference.runtime import MinMoRuntime


@dataclass
class TextStream:
    """One LLM text generation.

    Attributes:
        kv: the cache it extends (a session's conversation, or a throw-away one).
        feed: ``(n, H)`` embeddings to feed at the next step (prompt, then each token).
        max_new_tokens: length limit.
        semantic: compute semantic vectors (replies that will be spoken).
        temperature, top_p: sampling (``temperature == 0``: greedy).
        ids: generated tokens (the stop token excluded).
        last_unfed: the last sampled token when it was never fed (stopped by length or
            cancelled); the conversation must feed it before its closing tokens.
        finish_reason: ``"stop"`` (``<|im_end|>``), ``"length"``, ``"cancelled"`` or None.
        hidden_first_at: number of forward steps done (for latency stats).
        forced: the reply's tokens, given (a text read aloud): each step feeds the next one
            instead of sampling (teacher forcing, as training does), so the semantic vectors
            are those of exactly this text; then the stream stops. None: generate.
        stop_loops: end the text (``finish_reason`` ``"repetition"``) once it repeats
            itself (:func:`ends_in_loop`): a greedy LLM that starts "the area of the area
            of ..." would otherwise write, and speak, the same words to its length limit.
        beam: a beam search writing the text instead (a transcript in a throw-away cache;
            ``kv`` and ``feed`` are then unused): each step feeds all its hypotheses, and
            ``ids`` is set to the best text when the search ends (``finish_reason``
            ``"stop"``, or ``"length"`` when it was cut at the limit).
    """

    kv: KVStream
    feed: torch.Tensor
    max_new_tokens: int
    semantic: bool = False
    temperature: float = 0.0
    top_p: float = 0.9
    generator: torch.Generator | None = None
    ids: list[int] = field(default_factory=list)
    last_unfed: int | None = None
    finish_reason: str | None = None
    steps: int = 0
    ctc: CtcPrefixScorer | None = None
    forced: list[int] | None = None
    stop_loops: bool = False
    beam: BeamSearch | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop generating; a token sampled but not fed stays in ``last_unfed``."""
        if not self.done:
            self.finish_reason = "cancelled"


@dataclass
class TextStepOut:
    """What one step of one stream produced: ``token`` (None at the stop token) and its
    semantic vector ``(D_v,)`` when asked for."""

    token: int | None
    semantic: torch.Tensor | None


def sample_text(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> int:
    """Greedy (``temperature <= 0``) or nucleus sampling from ``(V,)`` logits (on the
    generator's device: a session's sampler lives on the CPU whatever the model's device)."""
    if temperature <= 0:
        return int(logits.argmax())
    if generator is not None and logits.device != generator.device:
        logits = logits.to(generator.device)
    probs = (logits.float() / temperature).softmax(-1)
    p, idx = probs.sort(descending=True)
    keep = (p.cumsum(0) - p) < top_p
    p = p[keep] / p[keep].sum()
    return int(idx[keep][torch.multinomial(p, 1, generator=generator)])


LOOP_MIN_COPIES = 3
LOOP_MIN_TOKENS = 12
LOOP_MAX_PERIOD = 16


def ends_in_loop(ids: list[int]) -> bool:
    """Whether ``ids`` end in a loop: one span of 1-:data:`LOOP_MAX_PERIOD` tokens repeated
    back to back at least :data:`LOOP_MIN_COPIES` times, the copies covering at least
    :data:`LOOP_MIN_TOKENS` tokens ("the area of" four times; twelve zeros in a row, not the
    four of "10000")."""
    n = len(ids)
    for period in range(1, min(LOOP_MAX_PERIOD, n // LOOP_MIN_COPIES) + 1):
        copies = 1
        while (copies + 1) * period <= n and \
                ids[n - (copies + 1) * period: n - copies * period] == ids[n - period:]:
            copies += 1
        if copies >= LOOP_MIN_COPIES and copies * period >= LOOP_MIN_TOKENS:
            return True
    return False


@torch.inference_mode()
def text_step(rt: MinMoRuntime, streams: list[TextStream]) -> list[TextStepOut]:
    """One batched forward + one token for every stream (none may be done); a beam search
    feeds all its hypotheses in the same forward and gives no token until it ends."""
    kvs, feeds, rows = [], [], []
    for s in streams:
        start = len(kvs)
        kvs.extend(s.beam.streams if s.beam is not None else [s.kv])
        feeds.extend(s.beam.feeds if s.beam is not None else [s.feed])
        rows.append(slice(start, len(kvs)))
    hidden = grouped_forward(rt.llm_body, kvs, feeds)
    last = torch.stack([h[-1] for h in hidden])
    logits = rt.model.llm.logits(last)
    outs = []
    for s, row in zip(streams, rows):
        s.steps += 1
        if s.beam is not None:
            s.beam.advance(logits[row])
            if s.beam.best is not None:
                s.ids = list(s.beam.best.ids)
                s.finish_reason = "stop" if s.beam.best.finished else "length"
            outs.append(TextStepOut(None, None))
            continue
        h, lg = last[row.start], logits[row.start]
        if s.forced is not None:
            tok = s.forced[len(s.ids)] if len(s.ids) < len(s.forced) else min(rt.stop_ids)
        elif s.ctc is not None:
            tok = s.ctc.choose(lg, rt.stop_ids)
        else:
            tok = sample_text(lg, s.temperature, s.top_p, s.generator)
        if tok in rt.stop_ids:
            s.finish_reason = "stop"
            s.last_unfed = None
            outs.append(TextStepOut(None, None))
            continue
        s.ids.append(tok)
        emb = rt.embed_ids([tok])
        sem = rt.model.output_projector(h[None], emb)[0] if s.semantic else None
        s.feed = emb
        if len(s.ids) >= s.max_new_tokens:
            s.finish_reason = "length"
            s.last_unfed = tok
        elif s.stop_loops and ends_in_loop(s.ids):
            s.finish_reason = "repetition"
            s.last_unfed = tok
        outs.append(TextStepOut(tok, sem))
    return outs


@dataclass
class VoiceStream:
    """Voice token LM generation state for one reply (see module docstring).

    Attributes:
        kv: voice-LM cache.
        pending: semantic vectors received, not fed.
        text_done: the LLM finished (no more vectors will come).
        max_tokens: speech-token limit (the stream then ends as if ``EOS``).
        greedy: argmax instead of repetition-aware sampling.
        tokens: all speech tokens produced.
        finished: ``EOS`` sampled, limit reached, or cancelled.
    """

    kv: KVStream = field(default_factory=KVStream)
    pending: list[torch.Tensor] = field(default_factory=list)
    text_done: bool = False
    max_tokens: int = 1500
    greedy: bool = False
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)
    finished: bool = False
    started: bool = False
    group_left: int = 0
    tail: bool = False
    unfed_token: int | None = None
    expects_token: bool = False

    def add_semantic(self, vectors: torch.Tensor) -> None:
        """Queue ``(T, D_v)`` (or ``(D_v,)``) semantic vectors."""
        if vectors.dim() == 1:
            vectors = vectors[None]
        self.pending.extend(vectors.unbind(0))

    def finish_text(self) -> None:
        """No more vectors will come: after them comes ``TASK`` and the tail."""
        self.text_done = True

    def cancel(self) -> None:
        self.finished = True

    def ready(self, n_sem: int) -> bool:
        """Whether :meth:`next_input` has something to feed now (not finished, not waiting
        for text)."""
        if self.finished:
            return False
        in_group = self.group_left > 0 or self.tail
        return (not self.started or (in_group and self.unfed_token is not None)
                or (not in_group and self.block_ready(n_sem)))

    def block_ready(self, n_sem: int) -> bool:
        """Whether the next block of semantic vectors is known: more than ``n_sem`` are
        pending (so this block is not the last), or the text is done."""
        return len(self.pending) > n_sem or self.text_done

    def next_input(self, rt: MinMoRuntime) -> torch.Tensor | None:
        """Embeddings ``(n, D_v)`` to feed now, or None (finished, or waiting for text).

        Sets :attr:`expects_token`: whether the logits after this input are sampled.
        """
        vlm = rt.model.voice_lm
        if not self.ready(vlm.n_sem):
            return None
        parts: list[torch.Tensor] = []
        if not self.started:
            parts.append(vlm.special_embedding.weight[0:1])
        in_group = self.group_left > 0 or self.tail
        if self.unfed_token is not None and (in_group or self.block_ready(vlm.n_sem)):
            parts.append(vlm.speech_embedding.weight[self.unfed_token][None])
        if not in_group and self.block_ready(vlm.n_sem):
            if len(self.pending) > vlm.n_sem:
                parts.append(torch.stack(self.pending[:vlm.n_sem]))
                del self.pending[:vlm.n_sem]
                self.group_left = vlm.n_speech
            else:
                if self.pending:
                    parts.append(torch.stack(self.pending))
                    self.pending.clear()
                parts.append(vlm.special_embedding.weight[1:2])
                self.tail = True
        if not self.started:
            self.started = True
        if self.unfed_token is not None and (self.group_left > 0 or self.tail):
            self.unfed_token = None
        # SOS alone (waiting for text) is fed early; its logits are not sampled
        self.expects_token = self.group_left > 0 or self.tail
        return torch.cat(parts)

    def on_logits(self, rt: MinMoRuntime, logits: torch.Tensor) -> int | None:
        """Sample the next speech token from ``(V,)`` logits (if one is due); None if none
        was due or the stream ended."""
        if not self.expects_token or self.finished:
            return None
        vlm = rt.model.voice_lm
        tok = vlm.sample(logits, self.tokens, self.generator, allow_eos=self.tail,
                         greedy=self.greedy)
        if tok == vlm.eos_id:
            self.finished = True
            return None
        self.tokens.append(tok)
        self.unfed_token = tok
        if not self.tail:
            self.group_left -= 1
        if len(self.tokens) >= self.max_tokens:
            self.finished = True
        return tok


@torch.inference_mode()
def voice_step(rt: MinMoRuntime, streams: list[VoiceStream]) -> list[int | None]:
    """Advance each stream by one forward (those with nothing to feed are skipped).

    Returns:
        per stream, the speech token produced this step (or None).
    """
    todo, inputs = [], []
    for i, s in enumerate(streams):
        x = s.next_input(rt)
        if x is not None:
            todo.append(i)
            inputs.append(x.to(rt.device))
    out: list[int | None] = [None] * len(streams)
    if not todo:
        return out
    hidden = grouped_forward(rt.vlm_body, [streams[i].kv for i in todo], inputs)
    logits = rt.model.voice_lm.decoder(torch.stack([h[-1] for h in hidden])).float()
    for i, lg in zip(todo, logits):
        out[i] = streams[i].on_logits(rt, lg)
    return out
