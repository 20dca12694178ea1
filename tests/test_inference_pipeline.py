"""Inference layer on the tiny model: prompts, batched caches, 5:15 voice stream, listening
stream (streaming == offline), replies, multi-turn context and cancellation."""

import numpy as np
import pytest
import torch

from minmo.inference import pipeline as P
from minmo.inference.generate import VoiceStream, ends_in_loop, text_step, voice_step
from minmo.inference.kv import KVStream, batched_forward
from minmo.inference.listen import ListenConfig, listen_step, new_listen_state
from minmo.inference.loading import load_runtime
from minmo.inference.prompts import (
    ASR_INSTRUCTION,
    assistant_header_ids,
    system_ids,
    user_speech_ids,
)
from minmo.models.duplex import pool_flags, speaking_lookup


def _wave(seconds=1.5, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def test_prompt_ids_equal_training_layout(rt):
    from minmo.data.chatml import build_chat_ids

    tok = rt.tok
    ref = build_chat_ids(tok, "You are a helpful assistant.", ASR_INSTRUCTION, True, None)
    before, after = user_speech_ids(tok, ASR_INSTRUCTION)
    ours = system_ids(tok, "You are a helpful assistant.") + before + after + assistant_header_ids(tok)
    assert ours == ref.input_ids
    assert len(system_ids(tok, "You are a helpful assistant.") + before) == ref.speech_pos


def test_batched_forward_equals_one_stream_at_a_time(rt):
    g = torch.Generator().manual_seed(0)
    h = rt.model.llm.hidden_size
    prompts = [torch.randn(n, h, generator=g) for n in (3, 7, 1)]
    steps = [torch.randn(n, h, generator=g) for n in (1, 2, 1)]
    solo = [KVStream() for _ in prompts]
    ref = []
    for s, p, x in zip(solo, prompts, steps):
        batched_forward(rt.llm_body, [s], [p])
        ref.append(batched_forward(rt.llm_body, [s], [x])[0])
    many = [KVStream() for _ in prompts]
    for s, p in zip(many, prompts):
        batched_forward(rt.llm_body, [s], [p])
    got = batched_forward(rt.llm_body, many, steps)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the caches were extended correctly: one more batched step still agrees
    nxt = [torch.randn(1, h, generator=g) for _ in prompts]
    ref2 = [batched_forward(rt.llm_body, [s], [x])[0] for s, x in zip(solo, nxt)]
    got2 = batched_forward(rt.llm_body, many, nxt)
    for a, b in zip(ref2, got2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert [s.length for s in many] == [s.length for s in solo] == [5, 10, 3]


def test_voice_stream_schedule_equals_push(rt):
    vlm = rt.model.voice_lm
    g = torch.Generator().manual_seed(1)
    sem = torch.randn(13, vlm.hidden_size, generator=g)
    # reference: VoiceTokenLM.push fed 4 vectors at a time, then text_done
    state = vlm.init_state()
    ref = []
    with torch.inference_mode():
        for k in range(0, 13, 4):
            toks, state = vlm.push(sem[k:k + 4], state, greedy=True, max_tail_tokens=40)
            ref += toks
        toks, state = vlm.push(sem[:0], state, text_done=True, greedy=True, max_tail_tokens=40)
        ref += toks
    vs = VoiceStream(greedy=True, max_tokens=10_000)
    got = []
    fed = 0
    for _ in range(500):
        if fed < 13 and (not got or len(got) % 7 == 0):
            vs.add_semantic(sem[fed:fed + 4])
            fed += 4
            if fed >= 13:
                vs.finish_text()
        tok = voice_step(rt, [vs])[0]
        if tok is not None:
            got.append(tok)
        if vs.finished:
            break
    # push's tail is capped at 40 tokens: compare the full groups plus that many tail tokens
    assert len(ref) >= 30
    assert got[:len(ref)] == ref


def test_text_step_batched_matches_single(rt):
    def make(seed):
        sess = P.new_session(rt)
        P.add_user_speech(rt, sess, rt.encode_speech(_wave(1.0, seed)))
        return P.start_reply(rt, sess, audio=False)

    solo = [make(s) for s in (0, 1)]
    for job in solo:
        for _ in range(6):
            text_step(rt, [job.text])
    pair = [make(s) for s in (0, 1)]
    for _ in range(6):
        text_step(rt, [j.text for j in pair])
    assert [j.text.ids for j in solo] == [j.text.ids for j in pair]


def test_listening_stream_equals_offline_and_ignores_chunking(rt):
    wave = _wave(2.0, 3)
    cfg = ListenConfig(encoder_chunk=2)
    system = rt.model.cfg.system_prompt

    def stream(chunk):
        st = new_listen_state(rt, cfg)
        frames = []
        for k in range(0, len(wave), chunk):
            frames += listen_step(rt, [st], [wave[k:k + chunk]], [lambda t: False], [system], cfg)[0]
        return frames

    a, b = stream(640), stream(5000)
    assert len(a) == len(b) > 10
    for fa, fb in zip(a, b):
        assert fa.end_s == fb.end_s
        torch.testing.assert_close(fa.probs, fb.probs, atol=1e-5, rtol=1e-4)
    # offline: encoder in the same block-causal regime, projector, LLM, predictor in one pass
    m = rt.model
    with torch.inference_mode():
        feats = m.frontend(wave)
        usable = (feats.shape[0] // 2) * 2
        feats = feats[None, :usable]
        enc, enc_lens = m.encoder(feats, torch.tensor([usable]), chunk_size=2)
        proj, plens = m.input_projector(enc, enc_lens)
        n = len(a)
        before, _ = user_speech_ids(rt.tok, "")
        prefix = rt.embed_ids(system_ids(rt.tok, system) + before)
        hid = m.llm(torch.cat([prefix, proj[0, :n]])[None]).hidden[0, -n:]
        logits = m.duplex(hid[None], torch.zeros(1, n, dtype=torch.long), torch.tensor([n]))
    torch.testing.assert_close(torch.stack([f.probs for f in a]), logits[0].softmax(-1),
                               atol=1e-4, rtol=1e-3)
    assert a[0].end_s is None and a[2].end_s == pytest.approx(0.12)


def test_listening_gives_the_predictor_the_speaking_flags_training_gives_it(rt):
    """One definition of the assistant-speaking flag (the state as each frame begins): the
    flags the streaming listener passes for a recorded dialogue equal the training flags."""
    speaking10 = np.zeros(200, dtype=np.uint8)
    speaking10[37:121] = 1  # starts and stops inside frames
    cfg = ListenConfig(encoder_chunk=2)
    st = new_listen_state(rt, cfg)
    wave = _wave(2.0, 5)
    frames = []
    for k in range(0, len(wave), 800):
        frames += listen_step(rt, [st], [wave[k:k + 800]], [speaking_lookup(speaking10)],
                              ["sys"], cfg)[0]
    starts, _ = rt.model.speech_frame_spans(len(frames))
    trained = pool_flags(torch.from_numpy(speaking10), starts)
    timed = [f for f in frames if f.end_s is not None]
    assert len(timed) > 10 and any(f.speaking for f in timed) and not all(f.speaking for f in timed)
    assert [int(f.speaking) for f in timed] == [int(trained[f.index]) for f in timed]
    # the frame in which the assistant falls silent still says "speaking": it decides then
    per = round(rt.llm_frame_seconds * 100)
    cut = next(f for f in timed if int(starts[f.index]) < 121 < int(starts[f.index]) + per)
    assert cut.speaking


def test_listening_context_is_bounded(rt):
    cfg = ListenConfig(max_frames=40, keep_frames=10)
    st = new_listen_state(rt, cfg)
    wave = _wave(8.0, 4)
    frames = []
    for k in range(0, len(wave), 1920):
        frames += listen_step(rt, [st], [wave[k:k + 1920]], [lambda t: True], ["sys"], cfg)[0]
    assert len(frames) > 60
    assert st.kv.length <= 40 + 2
    assert all(torch.isfinite(f.probs).all() for f in frames)
    assert frames[-1].speaking


def test_reply_streams_text_tokens_and_audio(rt):
    sess = P.new_session(rt, P.SessionConfig(generation=P.GenerationConfig(
        max_text_tokens=12, max_speech_tokens=50, seed=0)))
    r = P.reply(rt, _wave(), sess)
    assert r.text and r.transcript is not None
    assert len(r.speech_tokens) == 50  # random weights never sample EOS this early
    assert r.wave.shape == (50 * rt.sample_rate_out // 25,)
    assert set(r.timings) >= {"first_token", "five_tokens", "first_audio"}
    # same seed, same session config: same reply
    sess2 = P.new_session(rt, sess.cfg)
    r2 = P.reply(rt, _wave(), sess2)
    assert r2.text == r.text and r2.speech_tokens == r.speech_tokens
    # the second turn reuses the cache: it grows, and holds both turns
    before = sess.chat.kv.length
    P.reply(rt, _wave(1.0, 5), sess, with_transcript=False)
    assert sess.chat.kv.length > before
    assert [it.role for it in sess.chat.items] == ["user", "assistant", "user", "assistant"]


def test_a_reply_given_its_text_speaks_as_the_generated_one(rt):
    """``say``: the LLM is fed the given words (teacher forcing) instead of choosing them; fed
    the words it would have chosen, its semantic vectors, and so the speech, are the same."""
    gen = P.GenerationConfig(max_text_tokens=8, max_speech_tokens=40, seed=0)

    def speak(say):
        sess = P.new_session(rt, P.SessionConfig(generation=gen))
        P.add_user_text(rt, sess, "Read this aloud.")
        job = P.start_reply(rt, sess, say=say)
        tokens = [t for ev in P.run_job(rt, job, gen) if isinstance(ev, P.SpeechTokens)
                  for t in ev.tokens]
        return job, tokens, sess

    free, free_tokens, _ = speak(None)
    words = rt.decode(free.text.ids)
    assert rt.tok.encode(words) == free.text.ids  # the words name the same tokens
    said, said_tokens, sess = speak(words)
    assert said.text.ids == free.text.ids and said.text.finish_reason == "stop"
    assert said_tokens == free_tokens and len(said_tokens) == 40
    assert sess.chat.items[-1].text == words
    other, _, sess = speak("hello there")
    assert other.emitted == "hello there" and sess.chat.items[-1].text == "hello there"


def test_context_budget_drops_oldest_turns(rt):
    cfg = P.SessionConfig(max_context_tokens=90,
                          generation=P.GenerationConfig(max_text_tokens=6, max_speech_tokens=5))
    sess = P.new_session(rt, cfg)
    for k in range(4):
        P.reply(rt, _wave(0.8, k), sess, with_transcript=False)
        assert sess.chat.kv.length + sess.chat.pending_len() <= 90
    assert len(sess.chat.items) < 8  # old turns were dropped
    assert sess.chat.items[-1].role == "assistant"


def test_fast_start_first_speech_chunk_in_one_step_same_output(rt):
    """The first speech chunk comes out of the first step_jobs call (its n_sem + 1 text
    tokens in that call), later calls pace text 1 token each, and the schedule changes
    nothing generated (text, speech tokens, audio) against the paced 1 + 3 schedule."""
    n_sem, n_speech = rt.model.voice_lm.n_sem, rt.model.voice_lm.n_speech

    def run(voice_steps, fast_start):
        sess = P.new_session(rt, P.SessionConfig(generation=P.GenerationConfig(
            max_text_tokens=20, max_speech_tokens=60, seed=3)))
        P.add_user_speech(rt, sess, rt.encode_speech(_wave()))
        job = P.start_reply(rt, sess)
        per_call, audio = [], []
        while not job.finished:
            evs = P.step_jobs(rt, [job], voice_steps, fast_start=fast_start)[0]
            per_call.append((len(job.text.ids), len(job.voice.tokens)))
            audio += [e.samples for e in evs if isinstance(e, P.AudioChunk)]
        return job, per_call, np.concatenate(audio)

    fast, fast_calls, fast_audio = run(15, True)
    paced, paced_calls, paced_audio = run(3, False)
    assert fast_calls[0] == (n_sem + 1, n_speech)  # first chunk's tokens in call one
    assert fast_calls[1][0] == n_sem + 2  # then one text token per call
    assert paced_calls[0] == (1, 0) and paced_calls[n_sem][1] == 3
    assert len(fast_calls) < len(paced_calls)
    assert fast.text.ids == paced.text.ids and fast.voice.tokens == paced.voice.tokens
    assert len(fast.voice.tokens) == 60
    np.testing.assert_array_equal(fast_audio, paced_audio)


@pytest.mark.parametrize("context", [2048, 80])  # 80: the draft's turn rebuilds the cache
def test_rewound_draft_leaves_no_trace(rt, context):
    """A reply started and dropped (a speculative draft: its user turn, prompt, steps and
    sampler draws) and the conversation rewound: the next turn's reply, cache and items are
    exactly those of a session where the draft never happened."""
    gen = P.GenerationConfig(max_text_tokens=8, max_speech_tokens=40, temperature=0.9, seed=5)

    def session():
        sess = P.new_session(rt, P.SessionConfig(generation=gen, max_context_tokens=context))
        P.reply(rt, _wave(0.8, 1), sess, with_transcript=False)  # history in the cache
        return sess

    def answer(sess):
        P.add_user_speech(rt, sess, rt.encode_speech(_wave(1.0, 3)))
        job = P.start_reply(rt, sess)
        while not job.finished:
            P.step_jobs(rt, [job])
        return job

    plain = session()
    drafted = session()
    mark = P.mark_chat(drafted)
    kv_length, n_items = drafted.chat.kv.length, len(drafted.chat.items)
    P.add_user_speech(rt, drafted, rt.encode_speech(_wave(1.2, 2)))
    draft = P.start_reply(rt, drafted)
    for _ in range(3):
        P.step_jobs(rt, [draft])
    assert drafted.chat.kv.length > kv_length and draft.text.ids
    rebuilt = drafted.chat.kv.cache is not mark.cache
    assert rebuilt == (context == 80)
    draft.discard()
    P.rewind_chat(drafted, mark)
    assert draft.finished and P.step_jobs(rt, [draft]) == [[]]
    assert drafted.chat.kv.length == kv_length and len(drafted.chat.items) == n_items
    a, b = answer(plain), answer(drafted)
    assert b.text.ids == a.text.ids and b.voice.tokens == a.voice.tokens
    assert drafted.chat.kv.length == plain.chat.kv.length
    for (ka, va), (kb, vb) in zip(plain.chat.kv.layer_tensors(), drafted.chat.kv.layer_tensors()):
        torch.testing.assert_close(kb, ka)
        torch.testing.assert_close(vb, va)


def test_cancel_closes_the_turn_and_the_next_reply_works(rt):
    sess = P.new_session(rt, P.SessionConfig(generation=P.GenerationConfig(
        max_text_tokens=30, max_speech_tokens=200)))
    P.add_user_speech(rt, sess, rt.encode_speech(_wave()))
    job = P.start_reply(rt, sess)
    for _ in range(8):
        P.step_jobs(rt, [job])
    job.cancel(rt)
    assert job.finished and job.status == "cancelled"
    assert P.step_jobs(rt, [job]) == [[]]  # nothing more once cancelled
    said = len(job.text.ids)
    assert sess.chat.items[-1].role == "assistant"
    # unfed last token + <|im_end|>\n wait in front of the next prompt
    assert sess.chat.pending_len() == 1 + len(rt.tok.encode("\n")) + 1
    r = P.reply(rt, _wave(1.0, 9), sess, with_transcript=False)
    assert r.text and said > 0


def test_text_only_reply_and_transcribe(rt):
    sess = P.new_session(rt, P.SessionConfig(generation=P.GenerationConfig(max_text_tokens=5)))
    events = list(P.respond(rt, sess, text="hello there", audio=False))
    assert isinstance(events[-1], P.JobDone)
    assert not any(isinstance(e, P.AudioChunk) for e in events)
    text = P.transcribe(rt, _wave(), P.GenerationConfig(transcribe_max_tokens=7))
    assert isinstance(text, str) and text
    same = P.speech_to_text(rt, _wave(), ASR_INSTRUCTION, max_tokens=7)
    assert same == text  # transcribe is the ASR instruction pass
    other = P.speech_to_text(rt, _wave(), "Translate the speech into German.", max_tokens=3)
    assert isinstance(other, str) and other


def test_loop_rule_needs_three_copies_covering_twelve_tokens():
    area = [11, 12, 13]  # "the area of"
    assert ends_in_loop([5] + area * 4) and not ends_in_loop([5] + area * 3)
    assert ends_in_loop([1] + [0] * 12) and not ends_in_loop([1] + [0] * 11)  # "10000" is fine
    assert ends_in_loop(list(range(6)) * 3)  # a period of 6, three times
    assert not ends_in_loop(list(range(6)) * 2 + [0])  # two copies, then something new
    assert not ends_in_loop(list(range(20)) * 2)  # a period longer than 16
    assert not ends_in_loop([])


def test_a_reply_that_loops_stops_where_the_loop_is_seen(rt, monkeypatch):
    cycle = [101, 102, 103]  # the LLM made to write one three-token span over and over
    logits = rt.model.llm.logits
    calls = []

    def looping(hidden):  # one call per text step (one stream here)
        out = logits(hidden)
        calls.append(1)
        bias = torch.zeros(out.shape[-1], dtype=out.dtype)
        bias[cycle[(len(calls) - 1) % 3]] = 1e4
        return out + bias

    monkeypatch.setattr(rt.model.llm, "logits", looping)
    ids = {}
    for stop in (True, False):
        calls.clear()
        gen = P.GenerationConfig(max_text_tokens=30, stop_loops=stop)
        session = P.new_session(rt, P.SessionConfig(generation=gen))
        P.add_user_text(rt, session, "hi")
        job = P.start_reply(rt, session, audio=False)
        events = list(P.run_job(rt, job, gen))
        ids[stop] = job.text.ids
        assert events[-1].status == "incomplete"
        assert job.text.finish_reason == ("repetition" if stop else "length")
        assert session.chat.items[-1].role == "assistant"  # what was said is kept
    assert ids[False] == (cycle * 10)[:30]
    assert ids[True] == cycle * 4  # cut at the fourth copy: 12 tokens
    # a read-aloud text is said whole, loop or not
    session = P.new_session(rt)
    job = P.start_reply(rt, session, audio=False, say=cycle * 6)
    list(P.run_job(rt, job))
    assert job.text.ids == cycle * 6


def test_reply_through_streaming_token2wav():
    rt2 = load_runtime("tiny", seed=0, vocoder="token2wav")
    assert rt2.vocoder.name.startswith("token2wav") and "noise" in rt2.info.warning
    sess = P.new_session(rt2, P.SessionConfig(generation=P.GenerationConfig(
        max_text_tokens=8, max_speech_tokens=40, seed=0)))
    P.add_user_speech(rt2, sess, rt2.encode_speech(_wave()))
    job = P.start_reply(rt2, sess)
    chunks = [e.samples for e in P.run_job(rt2, job) if isinstance(e, P.AudioChunk)]
    assert len(chunks) >= 2  # streamed: audio arrives in several chunks
    assert sum(c.size for c in chunks) == 40 * 960  # 2 mel frames x 480 samples per token
    assert all(np.isfinite(c).all() for c in chunks)


def test_vocoder_pool_gives_the_same_audio_as_inline(rt):
    """The decoder on a worker thread gives the same audio; the first chunk does not wait for
    the worker (it comes out of the call that made its tokens)."""
    from minmo.inference.vocoder_pool import VocoderPool

    def run(pool):
        sess = P.new_session(rt, P.SessionConfig(generation=P.GenerationConfig(
            max_text_tokens=8, max_speech_tokens=40, voice_greedy=True)))
        P.add_user_speech(rt, sess, rt.encode_speech(_wave()))
        job = P.start_reply(rt, sess)
        audio, done, first_call = [], None, None
        for call in range(10_000):
            for ev in P.step_jobs(rt, [job], pool=pool)[0]:
                if isinstance(ev, P.AudioChunk):
                    audio.append(ev.samples)
                    first_call = call if first_call is None else first_call
                elif isinstance(ev, P.JobDone):
                    done = ev
            if job.finished:
                break
            if pool is not None and job.vocoder_inflight and not pool.pending():
                assert ready.wait(30)  # the worker's next result (an event, not a timer)
                ready.clear()
        return np.concatenate(audio), done, first_call

    import threading

    ready = threading.Event()
    inline, d1, first1 = run(None)
    pool = VocoderPool(rt.vocoder)
    pool.on_done = ready.set
    try:
        pooled, d2, first2 = run(pool)
    finally:
        pool.close()
    assert d1.status == d2.status and d1.text == d2.text
    assert first2 == first1 == 0  # a reply's first audio is decoded in the call, not queued
    np.testing.assert_array_equal(pooled, inline)
    assert inline.size == 40 * 960


def _whisper_model_yaml(directory, stream_chunk=None):
    """The tiny model with a (small, random) Whisper front end and encoder, minmo-small's
    layout; ``stream_chunk`` None: the windowed listening path."""
    import dataclasses

    from minmo.config import load_model_config, save_yaml

    cfg, small = load_model_config("tiny"), load_model_config("minmo-small")
    cfg.frontend = small.frontend
    cfg.encoder = dataclasses.replace(small.encoder, d_model=64, num_heads=4, ffn_dim=128,
                                      num_blocks=2, stream_chunk=stream_chunk)
    cfg.projector = dataclasses.replace(cfg.projector, downsample=small.projector.downsample,
                                        kernel_size=small.projector.kernel_size)
    path = directory / "model.yaml"
    save_yaml(cfg, path)
    return str(path)


@pytest.fixture(scope="module")
def whisper_rt(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_runtime(_whisper_model_yaml(tmp_path_factory.mktemp("whisper")), seed=0,
                       vocoder="placeholder")
    torch.set_num_threads(threads)


def test_cached_whisper_listening_equals_the_duplex_training_features(tmp_path):
    """encoder.stream_chunk: the listening stream's predictor inputs are exactly the offline
    pass the duplex stage trains on (MinMo.encode_speech(streaming=True)), flags included."""
    from minmo.eval.model_binding import bind_minmo_model
    from minmo.eval.readers import EvalItem

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = bind_minmo_model(_whisper_model_yaml(tmp_path, stream_chunk=4))
        speaking = np.zeros(400, dtype=np.uint8)
        speaking[130:260] = 1
        np.savez(tmp_path / "l.npz", labels=np.zeros(400, dtype=np.int8),
                 assistant_speaking=speaking)
        item = EvalItem("d", "duplex", None, "", "en", extra={"labels": str(tmp_path / "l.npz")})
        # a live stream starts in silence (the front end's floor is then causal too)
        wave = np.concatenate([np.zeros(8000, np.float32), _wave(3.5, 7)])
        streamed = model.duplex(wave, 16000, item)
        offline = model.duplex(wave, 16000, item, streaming=False)
    finally:
        torch.set_num_threads(threads)
    decided = ~np.isclose(streamed.probs[:, 0], 1.0)
    assert decided.sum() >= decided.size - 1  # all but the last frame (conv look-ahead)
    np.testing.assert_allclose(streamed.probs[decided], offline.probs[decided], atol=1e-4)
    # and they differ from the full-context features (the windowed stream's training regime)
    m = model.rt.model
    with torch.inference_mode():
        feats = m.frontend(wave)[None]
        lens = torch.tensor([feats.shape[1]])
        chunked, _ = m.encode_speech(feats, lens, streaming=True)
        full, _ = m.encode_speech(feats, lens)
    assert (chunked - full).abs().max() > 1e-3


@pytest.mark.parametrize("lookahead,overlap", [(1, 0.0), (5, 1.0)])
def test_windowed_encoder_loses_no_frame_across_window_restarts(whisper_rt, lookahead, overlap):
    rt = whisper_rt
    cfg = ListenConfig(window_seconds=3.0, window_lookahead_frames=lookahead,
                       window_overlap_seconds=overlap)
    st = new_listen_state(rt, cfg)
    wave = _wave(7.0, 6)  # two restarts
    frames = []
    for k in range(0, len(wave), 1280):
        frames += listen_step(rt, [st], [wave[k:k + 1280]], [lambda s: False], ["sys"], cfg)[0]
    ends = np.array([f.end_s for f in frames])
    frame_s = rt.llm_frame_seconds
    np.testing.assert_allclose(np.diff(ends), frame_s, atol=1e-9)  # no gap, no repeat
    assert ends[0] == pytest.approx(frame_s)
    # 350 encoder frames of 20 ms, the last `lookahead` held back, 4 per LLM frame
    assert len(frames) == (350 - lookahead) // round(frame_s / 0.02)
    with pytest.raises(ValueError, match="window_overlap_seconds"):
        new_listen_state(rt, ListenConfig(window_seconds=3.0, window_overlap_seconds=2.0))
