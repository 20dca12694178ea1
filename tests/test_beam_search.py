"""Beam search over the LLM's text (``minmo.inference.beam``) on the tiny model: its
cached, batched, forked search scores exactly what one uncached forward gives the text it
returns, forks never disturb each other, and its ranking follows the documented rules."""

import numpy as np
import pytest
import torch

from minmo.inference import pipeline as P
from minmo.inference.beam import Hypothesis, beam_search, expand, fork
from minmo.inference.kv import KVStream, batched_forward
from minmo.inference.prompts import ASR_INSTRUCTION, assistant_header_ids


def _wave(seconds=1.2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 200 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _prompt(rt, seed=0):
    return P._speech_prompt(rt, rt.model.cfg.system_prompt, rt.encode_speech(_wave(seed=seed)),
                            ASR_INSTRUCTION)


@torch.inference_mode()
def _uncached_logprob(rt, prompt, ids, finished):
    """Sum of log-probabilities of ``ids`` (then the stop tokens, folded, when finished) by
    one forward over the whole sequence, without any cache."""
    seq = torch.cat([prompt, rt.embed_ids(ids)]) if ids else prompt
    hidden = batched_forward(rt.llm_body, [KVStream()], [seq])[0]
    logprobs = rt.model.llm.logits(hidden[prompt.shape[0] - 1:]).float().log_softmax(-1)
    total = sum(float(logprobs[i, t]) for i, t in enumerate(ids))
    if finished:
        total += float(logprobs[len(ids), sorted(rt.stop_ids)].logsumexp(-1))
    return total


@pytest.mark.parametrize("beam_size,max_tokens,stop_bias", [(3, 6, 0.0), (4, 40, 0.0),
                                                            (4, 40, 6.0)])
def test_the_returned_text_is_scored_as_an_uncached_forward_scores_it(rt, beam_size, max_tokens,
                                                                      stop_bias, monkeypatch):
    if stop_bias:  # random weights never stop by themselves: make stopping likely
        logits = rt.model.llm.logits
        bias = torch.zeros(logits(torch.zeros(1, rt.model.llm.hidden_size)).shape[-1])
        bias[sorted(rt.stop_ids)] = stop_bias
        monkeypatch.setattr(rt.model.llm, "logits", lambda h: logits(h) + bias)
    prompt = _prompt(rt)
    best = beam_search(rt, prompt, beam_size, max_tokens, 1.0)
    assert len(best.ids) <= max_tokens
    assert best.finished == bool(stop_bias) and (best.finished or len(best.ids) == max_tokens)
    assert best.logprob == pytest.approx(_uncached_logprob(rt, prompt, best.ids, best.finished),
                                         abs=1e-3)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@torch.inference_mode()
def test_a_beam_as_wide_as_the_vocabulary_finds_the_best_text_of_two_tokens(rt, length_penalty):
    prompt = _prompt(rt, seed=1)
    (stop,) = rt.stop_ids
    vocab = rt.model.llm.logits(prompt[-1:]).shape[-1]
    # every text of at most two tokens, scored by brute force: [stop], [t, stop], [t, u]
    root = KVStream()
    first = rt.model.llm.logits(batched_forward(rt.llm_body, [root], [prompt])[0][-1:])
    first = first.float().log_softmax(-1)[0]
    heads = [t for t in range(vocab) if t != stop]
    streams = [fork(root) for _ in heads]
    hidden = batched_forward(rt.llm_body, streams, [rt.embed_ids([t]) for t in heads])
    second = rt.model.llm.logits(torch.stack([h[-1] for h in hidden])).float().log_softmax(-1)
    texts = [Hypothesis([], float(first[stop]), True)]
    for row, t in enumerate(heads):
        texts.append(Hypothesis([t], float(first[t] + second[row, stop]), True))
        u = int(second[row].masked_fill(torch.arange(vocab) == stop, float("-inf")).argmax())
        texts.append(Hypothesis([t, u], float(first[t] + second[row, u]), False))
    brute = max(texts, key=lambda h: h.score(length_penalty))
    found = beam_search(rt, prompt, vocab, 2, length_penalty)
    assert (found.ids, found.finished) == (brute.ids, brute.finished)
    assert found.logprob == pytest.approx(brute.logprob, abs=1e-3)


def test_forks_extend_independently(rt):
    g = torch.Generator().manual_seed(0)
    h = rt.model.llm.hidden_size
    parent = KVStream()
    batched_forward(rt.llm_body, [parent], [torch.randn(4, h, generator=g)])
    before = [k.clone() for k, _ in parent.layer_tensors()]
    a, b = fork(parent), fork(parent)
    xa, xb = torch.randn(2, h, generator=g), torch.randn(1, h, generator=g)
    ha, hb = batched_forward(rt.llm_body, [a, b], [xa, xb])
    assert (a.length, b.length, parent.length) == (6, 5, 4)
    assert all(torch.equal(k, k0) for (k, _), k0 in zip(parent.layer_tensors(), before))
    # each fork continues exactly as the parent itself would have
    solo = fork(parent)
    assert torch.allclose(batched_forward(rt.llm_body, [solo], [xb])[0], hb, atol=1e-5)


def test_ranking_divides_by_length_with_the_stop_token_counted():
    short = Hypothesis([5], -2.0, True)     # 2 tokens with the stop: -1.0 a token
    long = Hypothesis([5, 6, 7], -3.2, True)  # 4 tokens: -0.8 a token
    cut = Hypothesis([5, 6, 7, 8], -3.2, False)  # no stop token: 4 tokens
    assert long.score(1.0) > short.score(1.0)
    assert short.score(0.0) > long.score(0.0)  # raw log-probability prefers short
    assert cut.score(1.0) == pytest.approx(-0.8)
    assert Hypothesis([], -1.0, True).score(1.0) == -1.0


def test_settings_are_checked(rt):
    with pytest.raises(ValueError, match=">= 1"):
        beam_search(rt, _prompt(rt), 0, 5, 1.0)
    with pytest.raises(ValueError, match=">= 1"):
        P.GenerationConfig(beam_size=0)
    with pytest.raises(ValueError, match="not both"):
        P.GenerationConfig(beam_size=2, transcribe_ctc_weight=0.3)
    # transcripts never sample: a beam for them beside sampled (streamed) replies is fine,
    # but reply() beam-searches its text too, which sampling contradicts
    both = P.GenerationConfig(beam_size=2, temperature=0.7, max_text_tokens=3,
                              transcribe_max_tokens=3)
    with pytest.raises(ValueError, match="not both"):
        P.reply(rt, _wave(), P.new_session(rt, P.SessionConfig(generation=both)))


def test_reply_with_a_beam_says_the_best_text_of_the_conversation_and_speaks_it(rt):
    wave = _wave(seed=2)
    gen1 = P.GenerationConfig(max_text_tokens=6, max_speech_tokens=30, transcribe_max_tokens=6)
    gen4 = P.GenerationConfig(max_text_tokens=6, max_speech_tokens=30, transcribe_max_tokens=6,
                              beam_size=4)
    one = P.reply(rt, wave, P.new_session(rt, P.SessionConfig(generation=gen1)))
    four = P.reply(rt, wave, P.new_session(rt, P.SessionConfig(generation=gen4)))
    speech = rt.encode_speech(wave)
    heard = beam_search(rt, P._speech_prompt(rt, rt.model.cfg.system_prompt, speech,
                                             ASR_INSTRUCTION), 4, 6, gen4.length_penalty)
    assert four.transcript == rt.decode(heard.ids)
    # the reply: the same search over the conversation (system, the user's speech, header)
    conversation = P.new_session(rt, P.SessionConfig(generation=gen4))
    P.add_user_speech(rt, conversation, speech, None)
    chat = conversation.chat
    header = rt.embed_ids(assistant_header_ids(rt.tok))
    best = beam_search(rt, torch.cat([*chat.pending, header]), 4, 6, gen4.length_penalty,
                       prefix=chat.kv)
    assert four.text == rt.decode(best.ids) != one.text
    assert four.status == ("completed" if best.finished else "incomplete")
    assert four.wave.size > 0 and len(four.speech_tokens) > 0  # and its speech reads it
    # the server's path (start_reply) decodes greedily whatever the beam setting
    streamed = P.new_session(rt, P.SessionConfig(generation=gen4))
    text = "".join(ev.text for ev in P.respond(rt, streamed, wave=wave, audio=False)
                   if isinstance(ev, P.TextDelta))
    assert text == P.reply(rt, wave, P.new_session(rt, P.SessionConfig(generation=gen1)),
                           audio=False).text


def test_a_step_ends_only_stops_among_the_best_and_keeps_the_best_others():
    live = [Hypothesis([7], -1.0, False), Hypothesis([8], -2.0, False)]
    nothing = float("-inf")
    lp = torch.full((2, 5), nothing)
    lp[0, 0], lp[0, 1], lp[0, 3] = -0.1, -0.5, -3.0  # stops 0 and 1 fold: log(e^-0.1 + e^-0.5)
    lp[1, 3], lp[1, 4] = -0.2, -0.3
    ended, kept = expand(live, lp, 2, [0, 1])
    both = float(torch.tensor([-0.1, -0.5]).logsumexp(0))
    assert [(h.ids, h.logprob) for h in ended] == [([7], pytest.approx(-1.0 + both))]
    assert [(p, h.ids, h.logprob) for p, h in kept] == [
        (1, [8, 3], pytest.approx(-2.2)), (1, [8, 4], pytest.approx(-2.3))]
    # a stop ranked below the beam does not end its hypothesis
    lp2 = torch.full((1, 4), nothing)
    lp2[0, 2], lp2[0, 3], lp2[0, 0] = -0.1, -0.2, -0.3  # stop third: outside a beam of 2
    ended, kept = expand(live[:1], lp2, 2, [0])
    assert ended == [] and [h.ids for _, h in kept] == [[7, 2], [7, 3]]


def test_a_beam_transcript_stepped_beside_a_reply_finds_what_the_search_alone_finds(rt):
    """The server's path: a beam transcript job shares step_jobs' batched LLM steps with
    a streamed reply; it gives no text until its search ends, then all of it at once, and
    neither job changes what the other writes."""
    gen = P.GenerationConfig(max_text_tokens=6, transcribe_max_tokens=8, beam_size=4,
                             length_penalty=0.5)
    speech = rt.encode_speech(_wave(seed=3))
    alone = beam_search(rt, P._speech_prompt(rt, rt.model.cfg.system_prompt, speech,
                                             ASR_INSTRUCTION), 4, 8, 0.5)

    def reply_job():
        session = P.new_session(rt, P.SessionConfig(generation=gen))
        P.add_user_speech(rt, session, rt.encode_speech(_wave(seed=4)))
        return P.start_reply(rt, session, audio=False)

    solo_reply = reply_job()
    solo_text = "".join(ev.text for ev in P.run_job(rt, solo_reply, gen)
                        if isinstance(ev, P.TextDelta))
    transcript = P.new_transcription(rt, rt.model.cfg.system_prompt, speech, gen)
    reply = reply_job()
    jobs, events, steps = [transcript, reply], [[], []], 0
    while not all(j.finished for j in jobs):
        for got, new in zip(events, P.step_jobs(rt, jobs, fast_start=False)):
            got.extend(new)
        steps += 1
        if not transcript.finished:
            assert events[0] == []  # nothing of a beam's text is known before it ends
    deltas = [ev.text for ev in events[0] if isinstance(ev, P.TextDelta)]
    assert deltas == ([rt.decode(alone.ids)] if alone.ids else [])
    assert events[0][-1] == P.JobDone("completed" if alone.finished else "incomplete",
                                      rt.decode(alone.ids))
    assert "".join(ev.text for ev in events[1] if isinstance(ev, P.TextDelta)) == solo_text
    assert steps > 1
