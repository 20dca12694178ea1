"""Beam search over the LLM's text, for the offline helpers: transcripts and other
speech-to-text passes, and the text of a reply that is then spoken
(:func:`minmo.inference.pipeline.reply`; ``minmo chat`` and ``minmo eval --beam-size``).

Each live hypothesis owns a :class:`~minmo.inference.kv.KVStream`. A kept hypothesis forks
its parent's cache (the layers' tensors are shared, not copied: feeding concatenates onto
them and never writes in place), and one :func:`~minmo.inference.kv.grouped_forward` per
step feeds every live hypothesis its new token.

Ranking is the usual one: a hypothesis ends when the stop token is among the ``beam_size``
best continuations of the step; finished hypotheses are ranked by their summed token
log-probability (the stop token's included) divided by ``length ** length_penalty``
(``length`` = tokens with the stop token; 0: raw log-probability, which prefers short
texts). Search ends when ``beam_size`` hypotheses have finished and no live one, at its
current length, ranks above the worst of them, or at ``max_tokens`` (then the live
hypotheses are ranked as if finished there). With one beam this still differs from greedy
decoding (a stop can lose to a continuation of better average log-probability), so callers
decode greedily when asked for one (:func:`minmo.inference.pipeline.embeddings_to_text`).

A :class:`BeamSearch` advances one batched forward at a time, so a search can also run
inside the scheduler's steps beside other jobs (:func:`minmo.inference.generate.text_step`):
the server's input transcripts (``minmo serve --transcript-beam-size``), whose text is sent
whole when the search ends. The server's replies stay greedy (or sampled): a beam's text is
not final until the search ends, so it cannot be spoken token by token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minmo.inference.kv import KVStream, grouped_forward
from minmo.inference.runtime import MinMoRuntime
from minmo.models.llm import new_kv_cache


@dataclass
class Hypothesis:
    """One beam: its tokens (the stop token excluded), summed log-probability, and whether
    it ended with the stop token (False: cut at ``max_tokens``)."""

    ids: list[int]
    logprob: float
    finished: bool

    def score(self, length_penalty: float) -> float:
        """The ranking score: ``logprob / length ** length_penalty``."""
        length = len(self.ids) + int(self.finished)
        return self.logprob / max(length, 1) ** length_penalty


def fork(stream: KVStream) -> KVStream:
    """A cache holding the same positions as ``stream``, which either may extend without
    changing the other."""
    cache = new_kv_cache()
    for layer, (keys, values) in enumerate(stream.layer_tensors()):
        cache.update(keys, values, layer)
    return KVStream(cache, stream.length)


class BeamSearch:
    """A beam search advanced one batched forward at a time, so that it can share the
    scheduler's LLM steps with other jobs (:func:`minmo.inference.generate.text_step`) or
    run alone (:func:`beam_search`).

    Each step the caller feeds :attr:`feeds` to :attr:`streams` (one row per live
    hypothesis; the first step feeds the prompt) and hands the last position's logits to
    :meth:`advance`. When :attr:`best` is set the search is over.

    Args:
        rt: the runtime whose LLM writes (its stop tokens and embeddings).
        prompt: the prompt's input embeddings ``(n, H)`` (after ``prefix``).
        beam_size: hypotheses kept per step.
        max_tokens: length limit (tokens, the stop token excluded).
        length_penalty: exponent of the length normalisation (see module docstring).
        prefix: a cache already holding the start of the context (a conversation); it is
            forked, never changed. None: the prompt is the whole context.
    """

    def __init__(self, rt: MinMoRuntime, prompt: torch.Tensor, beam_size: int, max_tokens: int,
                 length_penalty: float, prefix: KVStream | None = None) -> None:
        if beam_size < 1 or max_tokens < 1:
            raise ValueError(f"beam_search: beam_size {beam_size} and max_tokens {max_tokens} "
                             "must be >= 1")
        self.rt, self.beam_size, self.max_tokens = rt, beam_size, max_tokens
        self.length_penalty = length_penalty
        self.stops = sorted(rt.stop_ids)
        self.live = [Hypothesis([], 0.0, False)]
        self.streams = [fork(prefix) if prefix is not None else KVStream()]
        self.feeds = [prompt.to(rt.dtype)]
        self.done: list[Hypothesis] = []
        self.steps = 0
        self.best: Hypothesis | None = None

    def advance(self, logits: torch.Tensor) -> None:
        """One step: ``(len(streams), V)`` next-token logits of the rows just fed."""
        if self.best is not None:
            raise RuntimeError("BeamSearch.advance: the search has ended")
        logprobs = logits.float().log_softmax(-1)
        ended, kept = expand(self.live, logprobs, self.beam_size, self.stops)
        self.done.extend(ended)
        self.steps += 1
        if self.steps == self.max_tokens:  # cut at the limit: the live ones as they are
            self.done.extend(hyp for _, hyp in kept)
        elif not _settled(self.done, [hyp for _, hyp in kept], self.beam_size,
                          self.length_penalty):
            self.streams = [fork(self.streams[parent]) for parent, _ in kept]
            self.feeds = [self.rt.embed_ids(hyp.ids[-1:]) for _, hyp in kept]
            self.live = [hyp for _, hyp in kept]
            return
        self.best = max(self.done, key=lambda h: h.score(self.length_penalty))
        self.live, self.streams, self.feeds = [], [], []


@torch.inference_mode()
def beam_search(rt: MinMoRuntime, prompt: torch.Tensor, beam_size: int, max_tokens: int,
                length_penalty: float, prefix: KVStream | None = None) -> Hypothesis:
    """The best continuation of ``prompt`` (``(n, H)`` input embeddings) up to the stop
    token: a :class:`BeamSearch` (same arguments) run alone to its end.

    Returns:
        the best :class:`Hypothesis`.
    """
    search = BeamSearch(rt, prompt, beam_size, max_tokens, length_penalty, prefix)
    while search.best is None:
        hidden = grouped_forward(rt.llm_body, search.streams, search.feeds)
        search.advance(rt.model.llm.logits(torch.stack([h[-1] for h in hidden])))
    return search.best


def expand(live: list[Hypothesis], logprobs: torch.Tensor, beam_size: int,
           stops: list[int]) -> tuple[list[Hypothesis], list[tuple[int, Hypothesis]]]:
    """One step of the search.

    Args:
        live: the live hypotheses.
        logprobs: ``(len(live), V)`` next-token log-probabilities of each.
        beam_size: hypotheses kept.
        stops: the stop token ids (their probabilities are summed: each is one way to end).

    Returns:
        ``(ended, kept)``: the hypotheses that end here (a stop continuation among the
        ``beam_size`` best continuations), and at most ``beam_size`` best continuations
        that do not stop, each as ``(index of its parent in live, hypothesis)``.
    """
    logprobs = logprobs.clone()
    ends = logprobs[:, stops].logsumexp(-1)
    logprobs[:, stops] = float("-inf")
    logprobs[:, stops[0]] = ends
    totals = torch.tensor([h.logprob for h in live])[:, None] + logprobs
    values, flat = totals.flatten().topk(min(2 * beam_size, totals.numel()))
    ended: list[Hypothesis] = []
    kept: list[tuple[int, Hypothesis]] = []
    for rank, (value, index) in enumerate(zip(values.tolist(), flat.tolist())):
        parent, token = divmod(index, logprobs.shape[1])
        if token == stops[0]:
            if rank < beam_size:
                ended.append(Hypothesis(live[parent].ids, value, True))
        elif len(kept) < beam_size:
            kept.append((parent, Hypothesis(live[parent].ids + [token], value, False)))
    return ended, kept


def _settled(done: list[Hypothesis], live: list[Hypothesis], beam_size: int,
             length_penalty: float) -> bool:
    """Whether the search can stop: nothing lives, or ``beam_size`` hypotheses finished and
    none alive ranks above the worst of the best ``beam_size`` of them at its current length."""
    if not live:
        return True
    if len(done) < beam_size:
        return False
    worst_kept = sorted((h.score(length_penalty) for h in done), reverse=True)[beam_size - 1]
    return max(h.score(length_penalty) for h in live) <= worst_kept
