"""Full duplex and robustness over a real server (tiny model, random weights): barge-in and
back-channel through the engine's decision seam, 8 concurrent sessions without cross-talk,
a fuzz of hostile frames, and a client vanishing mid-response."""

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import random
import shutil
import subprocess

import numpy as np
import pytest
import torch

from minmo.inference.pipeline import GenerationConfig
from minmo.models.duplex import Decision
from minmo.serving.client import RealtimeClient
from minmo.serving.engine import Engine, EngineConfig
from minmo.serving.server import BackgroundServer, ServerConfig, create_app

SR = 16000


def speech_24k(text, tmp, voice="en", lead=0.3, tail=1.0):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/install.sh installs it)")
    from minmo.audio.io import load_audio

    path = tmp / (hashlib.md5(f"{text}|{voice}".encode()).hexdigest() + ".wav")
    if not path.exists():
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    wave = load_audio(path, 24000)
    return np.concatenate([np.zeros(int(24000 * lead), np.float32), wave,
                           np.zeros(int(24000 * tail), np.float32)])


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("duplex")


@contextlib.contextmanager
def serving(rt, gen, hook=None, cfg=None, **engine_kw):
    engine = Engine(rt, EngineConfig(**engine_kw), gen=gen, decision_hook=hook).start()
    server = BackgroundServer(create_app(engine, cfg or ServerConfig()))
    try:
        yield engine, server
    finally:
        server.stop()
        engine.stop()
    assert engine.error is None, engine.error


class Seam:
    """Decision hook: while the assistant is busy and the VAD hears the user, answer
    ``busy_decision``; record the frames where it did."""

    def __init__(self, busy_decision):
        self.busy_decision = busy_decision
        self.fired: list = []

    def __call__(self, info):
        if (info.responding or info.speaking) and info.vad_active:
            self.fired.append(info)
            return self.busy_decision
        return None


async def _speak_while_it_talks(c, first, second):
    """Send ``first``, wait until its reply is speaking, send ``second``: the reply's id and
    the index of the first event after ``second`` was sent."""
    await c.send_audio(first)
    created = await c.wait_for("response.created", 30)
    await c.wait_for("response.output_audio.delta", 30)
    mark = len(c.events)
    await c.send_audio(second)
    return created["response"]["id"], mark


def test_barge_in_stops_audio_within_one_frame_and_a_new_turn_follows(rt, tmp):
    gen = GenerationConfig(max_text_tokens=40, max_speech_tokens=600, transcribe_max_tokens=4)
    seam = Seam(Decision.STOP)
    first = speech_24k("Tell me a long story about the sea.", tmp)
    barge = speech_24k("Wait, stop please.", tmp, lead=0.0, tail=1.2)

    async def main(url):
        async with RealtimeClient(url + "/v1/realtime") as c:
            rid, mark = await _speak_while_it_talks(c, first, barge)
            started = await c.wait_for("input_audio_buffer.speech_started", 30, since=mark)
            done = await c.wait_for(lambda e: e["type"] == "response.done"
                                    and e["response"]["id"] == rid, 30)
            nxt = await c.wait_for(lambda e: e["type"] == "response.done"
                                   and e["response"]["id"] != rid, 60)
            return c.events, rid, started, done, nxt

    with serving(rt, gen, seam) as (engine, server):
        events, rid, started, done, nxt = asyncio.run(main(server.ws_url))
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    assert done["response"]["output"][0]["status"] == "incomplete"
    i_started = events.index(started)
    late = [e for e in events[i_started:] if e["type"] == "response.output_audio.delta"
            and e["response_id"] == rid]
    assert late == []  # no audio of the interrupted reply after the barge-in
    sent = sum(len(base64.b64decode(e["delta"])) // 2 for e in events
               if e["type"] == "response.output_audio.delta" and e["response_id"] == rid)
    assert 0 < sent < 600 * 24000 // 25  # cut short
    # decided at the first frame covering the user's onset: at most one frame late
    stop = seam.fired[0]
    onset = (started["audio_start_ms"] + 300) * SR // 1000  # prefix padding 300 ms
    assert 0 <= stop.end_sample - onset <= int(0.12 * SR) + 512
    # the interruption became the next user turn and got its own reply
    types = [e["type"] for e in events]
    assert types.index("input_audio_buffer.speech_stopped", i_started) > i_started
    assert nxt["response"]["status"] in ("completed", "incomplete")


def test_back_channel_continue_keeps_talking(rt, tmp):
    gen = GenerationConfig(max_text_tokens=12, max_speech_tokens=150, transcribe_max_tokens=4)
    seam = Seam(Decision.CONTINUE)
    first = speech_24k("How do I bake bread?", tmp)
    uh_huh = speech_24k("uh huh", tmp, lead=0.0, tail=0.8)

    async def main(url):
        async with RealtimeClient(url + "/v1/realtime") as c:
            rid, mark = await _speak_while_it_talks(c, first, uh_huh)
            done = await c.wait_for("response.done", 60)
            return c.events[mark:], rid, done, c

    with serving(rt, gen, seam) as (engine, server):
        after, rid, done, c = asyncio.run(main(server.ws_url))
    assert seam.fired, "the back-channel was heard while the assistant spoke"
    assert done["response"]["id"] == rid and done["response"]["status"] != "cancelled"
    assert not any(e["type"] == "input_audio_buffer.speech_started" for e in after)
    assert c.audio(rid).size == 150 * 24000 // 25  # every chunk was sent


def _turn_digest(events):
    audio = b"".join(base64.b64decode(e["delta"]) for e in events
                     if e["type"] == "response.output_audio.delta")
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    return text, hashlib.sha1(audio).hexdigest(), len(audio)


def test_eight_concurrent_sessions_hear_only_their_own_reply(rt, tmp):
    # greedy speech tokens: random weights give near-uniform distributions, where sampling
    # would turn batched-vs-single float noise (1e-6) into different draws
    gen = GenerationConfig(max_text_tokens=6, max_speech_tokens=30, voice_greedy=True,
                           transcribe_max_tokens=3)
    # each session's reply has its own length (3 + k text tokens) and instructions, so a
    # reply (or part of one) delivered to the wrong session shows
    sentences = ["one two three", "the cat sat down", "open the window", "good morning",
                 "where is the station", "I like green tea", "call me later", "it is raining"]
    voices = ["en", "en+f3", "en-us", "en+m3", "en-gb", "en+f2", "en+m7", "en-us+f4"]
    waves = [speech_24k(s, tmp, v) for s, v in zip(sentences, voices)]

    async def one(url, k):
        async with RealtimeClient(url + "/v1/realtime") as c:
            # a random-weights model barely listens: distinct instructions make each
            # session's reply distinct, so a reply heard by the wrong session shows
            await c.send({"type": "session.update", "session": {
                "instructions": f"You are assistant {k}. {sentences[k]}",
                "max_output_tokens": 3 + k}})
            await c.wait_for("session.updated")
            await c.send_audio(waves[k])
            await c.wait_for("response.done", 120)
            return _turn_digest(c.events)

    async def alone(url):
        return [await one(url, k) for k in range(8)]

    async def together(url):
        return await asyncio.gather(*(one(url, k) for k in range(8)))

    with serving(rt, gen, max_sessions=8) as (engine, server):
        ref = asyncio.run(alone(server.ws_url))
        # closed sessions are dropped on the engine's next tick: all eight slots free first
        assert engine.wait_until(lambda: engine.session_count == 0, 30)
        got = asyncio.run(together(server.ws_url))
    assert len({r[:2] for r in ref}) == 8  # eight different replies (text, audio)
    assert [g[2] for g in got] == [30 * 24000 // 25 * 2] * 8
    assert got == ref  # each session heard exactly its own reply


def _hostile_frames(rng):
    good_audio = base64.b64encode(np.zeros(480, "<i2").tobytes()).decode()
    makers = [
        lambda: "{not json",
        lambda: "",
        lambda: "[1, 2, 3]",
        lambda: json.dumps({"no_type": 1}),
        lambda: json.dumps({"type": 42}),
        lambda: json.dumps({"type": "response.explode", "event_id": "x"}),
        lambda: json.dumps({"type": "input_audio_buffer.append", "audio": "@@@not base64@@@"}),
        lambda: json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}),
        lambda: json.dumps({"type": "input_audio_buffer.append", "audio": 123}),
        lambda: json.dumps({"type": "session.update", "session": "nope"}),
        lambda: json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}),
        lambda: json.dumps({"type": "session.update", "session": {"turn_detection": {"threshold": 7}}}),
        lambda: json.dumps({"type": "session.update", "session": {"output_modalities": ["video"]}}),
        lambda: json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": []}}),
        lambda: json.dumps({"type": "conversation.item.create", "item": {"role": "wizard", "content": [{"type": "input_text", "text": "x"}]}}),
        lambda: json.dumps({"type": "conversation.item.create", "item": {"role": "user", "content": [{"type": "input_audio", "audio": "%%%"}]}}),
        lambda: json.dumps({"type": "conversation.item.truncate", "item_id": "nope", "audio_end_ms": 5}),
        lambda: json.dumps({"type": "conversation.item.delete", "item_id": "x"}),
        lambda: json.dumps({"type": "response.cancel"}),
        lambda: json.dumps({"type": "response.create", "response": {"max_output_tokens": -3}}),
        lambda: json.dumps({"type": "input_audio_buffer.commit"}),
        lambda: "[" * 100_000 + "]" * 100_000,
        lambda: bytes(rng.getrandbits(8) for _ in range(64)),
        lambda: "x" * 70_000,  # over max_message_bytes
        lambda: json.dumps({"type": "input_audio_buffer.append", "audio": good_audio})[:-5],
    ]
    return makers


def test_fuzz_1000_hostile_frames_no_crash_other_sessions_unaffected(rt, tmp):
    gen = GenerationConfig(max_text_tokens=6, max_speech_tokens=30, transcribe_max_tokens=3)
    turn = speech_24k("Is this still working?", tmp)
    rng = random.Random(0)
    makers = _hostile_frames(rng)
    per_session = 260

    async def attacker(url, seed):
        r = random.Random(seed)
        async with RealtimeClient(url + "/v1/realtime") as c:
            await c.wait_for("session.created")
            for _ in range(per_session):
                await c.send(makers[r.randrange(len(makers))]())
            for _ in range(per_session):
                await c.wait_for("error", 60)
            # still alive and working after all that
            await c.send({"type": "session.update", "session": {"instructions": "ok"}})
            await c.wait_for("session.updated", 30)
            return sum(e["type"] == "error" for e in c.events)

    async def victim(url):
        async with RealtimeClient(url + "/v1/realtime") as c:
            await c.send_audio(turn)
            done = await c.wait_for("response.done", 120)
            return done, [e for e in c.events if e["type"] == "error"]

    async def main(url):
        return await asyncio.gather(victim(url), *(attacker(url, s) for s in range(4)))

    with serving(rt, gen, cfg=ServerConfig(max_message_bytes=65536), max_sessions=8) as (engine, server):
        (done, victim_errors), *errors = asyncio.run(main(server.ws_url))
        assert engine.wait_until(lambda: engine.session_count == 0, 30)
    assert errors == [per_session] * 4  # every hostile frame answered by exactly one error
    assert sum(errors) >= 1000
    assert victim_errors == [] and done["response"]["status"] in ("completed", "incomplete")


def test_client_vanishing_mid_response_frees_its_state(rt, tmp):
    gen = GenerationConfig(max_text_tokens=40, max_speech_tokens=600, transcribe_max_tokens=4)
    turn = speech_24k("Please talk for a long time.", tmp)

    async def main(url):
        c = RealtimeClient(url + "/v1/realtime")
        await c.__aenter__()
        await c.send_audio(turn)
        await c.wait_for("response.output_audio.delta", 30)
        c.ws.transport.abort()  # vanish: no close handshake

    with serving(rt, gen) as (engine, server):
        asyncio.run(main(server.ws_url))
        assert engine.wait_until(lambda: engine.session_count == 0, 30)
        sessions = list(engine.sessions.values())
        assert not engine._has_work()
        import httpx

        metrics = httpx.get(server.http_url + "/metrics").text
    assert sessions == []
    assert "minmo_sessions 0" in metrics


def test_internal_error_in_one_session_closes_only_that_session(rt, tmp):
    gen = GenerationConfig(max_text_tokens=6, max_speech_tokens=30, transcribe_max_tokens=3)
    turn = speech_24k("Hello there.", tmp)
    doomed: set = set()

    def hook(info):
        if info.session_id in doomed:
            raise RuntimeError("injected failure")
        return None

    async def main(url):
        async with RealtimeClient(url + "/v1/realtime") as bad, \
                RealtimeClient(url + "/v1/realtime") as good:
            created = await bad.wait_for("session.created")
            doomed.add(created["session"]["id"])
            await bad.send_audio(turn[:24000])
            err = await bad.wait_for("error", 30)
            with pytest.raises(Exception):
                await bad.recv(10)
            await good.send_audio(turn)
            done = await good.wait_for("response.done", 60)
            return err, bad.ws.close_code, done

    with serving(rt, gen, hook) as (engine, server):
        err, code, done = asyncio.run(main(server.ws_url))
    assert err["error"]["code"] == "session_failed" and code == 1011
    assert done["response"]["status"] in ("completed", "incomplete")


def _question_interruption_and_blip(tmp):
    """A question, a sustained interruption, and its first 150 ms alone (a blip), 24 kHz."""
    first = speech_24k("Tell me about the mountains.", tmp)
    talk = speech_24k("No no, tell me about rivers instead.", tmp, lead=0.0, tail=1.2)
    voiced = np.nonzero(np.abs(talk) > 0.05)[0]
    blip = np.concatenate([talk[voiced[0]:voiced[0] + 3600], np.zeros(24000, np.float32)])
    return first, talk, blip


async def _ask_and_hear_the_reply(client, question):
    """Send ``question``; return its reply's id once the reply's audio is coming."""
    await client.send_audio(question)
    created = await client.wait_for("response.created", 30)
    await client.wait_for("response.output_audio.delta", 30)
    return created["response"]["id"]


def test_vad_rule_without_predictor_blips_continue_sustained_speech_interrupts(rt, tmp):
    """Random weights: the VAD rule decides. A 150 ms blip during the assistant's speech (an
    echo or a click) does not interrupt; sustained speech does."""
    gen = GenerationConfig(max_text_tokens=40, max_speech_tokens=600, transcribe_max_tokens=4)
    first, talk, blip = _question_interruption_and_blip(tmp)

    async def main(url):
        async with RealtimeClient(url + "/v1/realtime") as c:
            rid = await _ask_and_hear_the_reply(c, first)
            mark = len(c.events)
            await c.send_audio(blip)
            # the blip is processed once the audio after it is: wait for a later delta
            await c.send_audio(np.zeros(4800, np.float32))
            await c.wait_for("response.output_audio.delta", 30, since=len(c.events))
            blip_events = [e["type"] for e in c.events[mark:]]
            await c.send_audio(talk)
            done = await c.wait_for(lambda e: e["type"] == "response.done", 60)
            return rid, blip_events, done

    with serving(rt, gen) as (engine, server):
        assert not engine.limits.turns.trust_predictor  # random weights: the VAD rule
        rid, blip_events, done = asyncio.run(main(server.ws_url))
    assert "input_audio_buffer.speech_started" not in blip_events
    assert "response.done" not in blip_events
    assert done["response"]["id"] == rid and done["response"]["status"] == "cancelled"


def test_a_short_barge_in_heard_as_a_command_interrupts(rt, tmp, monkeypatch):
    """The same 150 ms blip, when the model reads it as "Stop.", interrupts: too short for
    the length rule, so the server transcribes it once the user pauses, and a command stops
    the reply (``TurnPolicy.read_commands``)."""
    import minmo.serving.session as S

    read = []

    def transcribe(rt_, wave, gen=None, system=None):
        read.append(wave.size)
        return "Stop."

    monkeypatch.setattr(S.P, "transcribe", transcribe)
    gen = GenerationConfig(max_text_tokens=40, max_speech_tokens=600, transcribe_max_tokens=4)
    first, talk, blip = _question_interruption_and_blip(tmp)

    async def main(url):
        async with RealtimeClient(url + "/v1/realtime") as c:
            rid = await _ask_and_hear_the_reply(c, first)
            await c.send_audio(blip)
            await c.send_audio(np.zeros(4800, np.float32))
            done = await c.wait_for(lambda e: e["type"] == "response.done", 60)
            mark = len(c.events)
            await c.send_audio(np.zeros(24000, np.float32))  # 1 s of silence after "stop"
            await c.wait_for("input_audio_buffer.committed", 30, since=mark)
            await c.send_audio(np.zeros(12000, np.float32))
            # its transcript comes after anything the commit emitted (a response.created)
            await c.wait_for("conversation.item.input_audio_transcription.completed", 60,
                             since=mark)
            return rid, done, [e["type"] for e in c.events[mark:]]

    with serving(rt, gen) as (engine, server):
        rid, done, after = asyncio.run(main(server.ws_url))
    assert done["response"]["id"] == rid and done["response"]["status"] == "cancelled"
    assert len(read) == 1 and read[0] < 16000 * 1.0  # the blip and its pause, read once
    # the turn the command opened is committed, and not answered: "stop" asks for silence
    assert "input_audio_buffer.committed" in after and "response.created" not in after


def _ticked_dialogue(rt, tmp, defer_s):
    """Drive an engine tick by tick (no threads, inline decoder): a user turn, its reply, a
    sustained interruption 0.4 s into the reply's audio, silence until its reply is over.
    Returns the event types,
    every frame the session decided on, the listening passes that fed frames, and the most
    audio ever held back."""
    import minmo.serving.engine as E

    gen = GenerationConfig(max_text_tokens=30, max_speech_tokens=150, transcribe_max_tokens=4,
                           voice_greedy=True)
    engine = Engine(rt, EngineConfig(vocoder_thread=False, defer_listening_s=defer_s), gen=gen)
    events, frames, passes, held, transcript_waits = [], [], [0], [0], [0]
    engine.reserve()
    engine.open(lambda ev: events.append((engine.ticks, ev["type"])))
    engine.tick()
    (s,) = engine.sessions.values()
    decide = s.on_frame
    s.on_frame = lambda f, hook: (frames.append((f.index, f.end_s, f.probs, f.speaking,
                                                 f.decision)), decide(f, hook))
    listen = E.listen_step

    def counting(*a, **k):
        out = listen(*a, **k)
        passes[0] += any(out)
        return out

    def feed(wave):
        pcm = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
        for k in range(0, pcm.size, 960):  # 40 ms per tick, as a microphone
            engine.submit(s.id, "audio", pcm[k:k + 960])
            waiting = [j for j, _ in s.transcripts if not j.finished]
            if waiting and s.responding and not set(map(id, waiting)) & set(map(id, s.live_jobs())):
                transcript_waits[0] += 1  # this tick the reply's start goes first
            engine.tick()
            held[0] = max(held[0], s.listen_backlog_samples)

    E.listen_step = counting
    try:
        feed(speech_24k("Tell me about the sea.", tmp, tail=0.0))
        while "response.output_audio.delta" not in [t for _, t in events]:
            feed(np.zeros(960, np.float32))
        feed(np.zeros(int(0.4 * 24000), np.float32))
        feed(speech_24k("No wait, tell me about rivers.", tmp, lead=0.0, tail=2.0))
        for _ in range(2000):  # until the second reply has been heard and nothing is held
            if not (s.responding or s.speaking() or s.listen_backlog_samples):
                break
            feed(np.zeros(960, np.float32))
    finally:
        E.listen_step = listen
    return events, frames, passes[0], held[0], transcript_waits[0]


def test_deferred_listening_decides_exactly_as_every_tick_with_fewer_passes(rt, tmp):
    """While the assistant speaks, frames that cannot change anything are held and fed in
    one pass; the session still sees every frame, with the same stream times, speaking
    flags, predictor outputs and decisions, and the dialogue (reply, barge-in, next turn)
    runs identically, each event at the same tick (nothing is decided later)."""
    events0, frames0, passes0, held0, waits0 = _ticked_dialogue(rt, tmp, 0.0)
    events1, frames1, passes1, held1, _ = _ticked_dialogue(rt, tmp, 3.0)  # long: any delay shows
    types0 = [t for _, t in events0]
    assert "input_audio_buffer.speech_started" in types0[types0.index("response.created"):]
    assert types0.count("response.created") >= 2  # the interruption got its own reply
    assert events1 == events0
    assert held0 == 0 and held1 > 0
    assert passes1 < passes0
    assert len(frames1) == len(frames0)
    for a, b in zip(frames0, frames1):
        assert a[0] == b[0] and a[1] == b[1] and a[3] == b[3] and a[4] == b[4]
        torch.testing.assert_close(a[2], b[2], atol=1e-4, rtol=1e-4)
    assert any(f[3] for f in frames1)  # some frames began while the assistant was audible
    # the user's transcript waited behind the reply's start (until 2 s of its audio was
    # ahead of playback), then completed
    assert waits0 > 0
    assert "conversation.item.input_audio_transcription.completed" in types0


def test_playback_intervals_answer_for_past_samples():
    from minmo.serving.session import Playback

    p = Playback()
    p.add(1000, 500)
    p.add(1200, 300)  # sent while the first still plays: queued after it
    assert p.intervals == [[1000, 1800]]
    assert not p.audible(999, 100)  # before playback began (not: "before it ends")
    assert p.audible(1000, 100) and p.audible(1899, 100) and not p.audible(1900, 100)
    p.add(5000, 200)  # after a silence: a new interval
    assert p.intervals == [[1000, 1800], [5000, 5200]]
    assert not p.audible(3000, 100) and p.audible(1500, 100)
    assert p.lead(5050) == 150 and p.lead(6000) == 0
    p.cut(5100)  # barge-in at 5100
    assert p.intervals == [[1000, 1800], [5000, 5100]]
    p.cut(5000)  # cut at its start: the interval goes
    assert p.intervals == [[1000, 1800]]


def _ticked_turn(rt, tmp, speculate):
    """Tick by tick: a user turn with a 0.3 s pause inside it (longer than the 100 ms after
    which a draft starts, shorter than the VAD rule's 500 ms), then silence until the reply
    is done. Returns the events as ``(step_jobs calls so far, type, payload without ids)``
    and the server's counters."""
    import minmo.serving.engine as E

    gen = GenerationConfig(max_text_tokens=20, max_speech_tokens=90, transcribe_max_tokens=4)
    engine = Engine(rt, EngineConfig(vocoder_thread=False, speculate=speculate), gen=gen)
    calls, events = [0], []
    ids = {"event_id", "item_id", "response_id", "previous_item_id", "item", "response", "session"}
    engine.reserve()
    engine.open(lambda ev: events.append(
        (calls[0], ev["type"], {k: v for k, v in ev.items() if k not in ids})))
    engine.tick()
    (s,) = engine.sessions.values()
    step = E.P.step_jobs

    def counting(*a, **k):
        calls[0] += 1
        return step(*a, **k)

    def feed(wave):
        pcm = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
        for k in range(0, pcm.size, 960):  # 40 ms per tick, as a microphone
            engine.submit(s.id, "audio", pcm[k:k + 960])
            engine.tick()

    E.P.step_jobs = counting
    try:
        feed(speech_24k("Tell me about the sea,", tmp, tail=0.3))
        feed(speech_24k("and the rivers.", tmp, lead=0.0, tail=0.0))
        for _ in range(1000):
            if "response.done" in [t for _, t, _ in events]:
                break
            feed(np.zeros(960, np.float32))
    finally:
        E.P.step_jobs = step
    return events, dict(engine.metrics.counters)


def test_speculative_reply_says_the_same_having_started_before_the_commit(rt, tmp):
    """With speculation the server starts the reply once the VAD hears 100 ms of silence:
    the pause inside the turn starts a draft that the user's next words drop (conversation
    rewound), the turn's end starts one the commit takes. The client gets the same events
    with the same text and audio as without, and the reply's first audio goes out with
    ``response.created``, made before the commit by steps that ran while the turn was
    still being decided."""
    plain, plain_counts = _ticked_turn(rt, tmp, speculate=False)
    drafted, counts = _ticked_turn(rt, tmp, speculate=True)
    assert not any("draft" in k for k in plain_counts)
    assert counts["drafts_started"] == 2 and counts["drafts_dropped"] == 1
    assert counts["drafts_taken"] == 1
    assert [e[1:] for e in drafted] == [e[1:] for e in plain]
    types = [t for _, t, _ in plain]
    created, audio = types.index("response.created"), types.index("response.output_audio.delta")
    assert types.count("input_audio_buffer.speech_started") == 1  # the pause kept one turn
    assert types.count("response.created") == 1
    assert plain[audio][0] > plain[created][0]  # made by a step after the commit
    assert drafted[audio][0] == drafted[created][0]  # made by steps before it


def test_a_client_event_drops_the_draft_and_the_conversation_is_as_before(rt, tmp):
    """While a draft waits for the turn decision, a client event that could change the
    conversation (here a typed user item) drops it first: the conversation holds exactly
    what it held before the draft, plus the new item."""
    gen = GenerationConfig(max_text_tokens=8, max_speech_tokens=30, transcribe_max_tokens=4)
    engine = Engine(rt, EngineConfig(vocoder_thread=False), gen=gen)
    engine.reserve()
    engine.open(lambda ev: None)
    engine.tick()
    (s,) = engine.sessions.values()
    before = (s.voice.chat.kv.length, len(s.voice.chat.items), len(s.voice.chat.pending))
    pcm = (np.clip(speech_24k("Tell me about the sea.", tmp, tail=0.4), -1, 1) * 32767)
    pcm = pcm.astype(np.int16)
    for k in range(0, pcm.size, 960):
        engine.submit(s.id, "audio", pcm[k:k + 960])
        engine.tick()
        if s.draft is not None and not s.draft.wants_step():
            break
    assert s.draft is not None and s.voice.chat.kv.length > before[0]  # prompt fed
    engine.submit(s.id, "event", {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})
    engine._apply_commands()  # the event alone, without the rest of a tick
    assert s.draft is None and engine.metrics.counters["drafts_dropped"] == 1
    chat = s.voice.chat
    assert chat.kv.length == before[0] and len(chat.items) == before[1] + 1
    assert len(chat.pending) == before[2] + 1 and chat.items[-1].text == "hi"
    engine.tick()  # the turn is still open and silent: a new draft answers both items
    assert s.draft is not None and engine.metrics.counters["drafts_started"] == 2


def test_drafts_wait_for_the_silence_a_commit_keeps_and_at_least_100_ms(rt):
    """A draft needs the silence a commit keeps (min(silence_duration_ms, 100)) and at least
    `draft_silence_ms`: with a short silence_duration_ms it would otherwise start (and be
    dropped) at every gap between words."""
    engine = Engine(rt, EngineConfig(vocoder_thread=False))
    engine.reserve()
    engine.open(lambda ev: None)
    engine.tick()
    (s,) = engine.sessions.values()
    s.turn.open, s.turn_start, s.gate.last_speech_sample = True, 0, 16000

    def ready(silence_ms, td_ms=None):
        if td_ms is not None:
            s.settings.turn_detection.silence_duration_ms = td_ms
        s.clock = s.heard + silence_ms * 16
        return s.can_draft()

    assert not ready(99) and ready(100)  # default silence_duration_ms 500: 100 ms kept
    assert not ready(60, td_ms=40) and not ready(99) and ready(100)  # 40 ms kept, 100 heard
    s.limits = dataclasses.replace(s.limits, draft_silence_ms=300)
    assert not ready(299) and ready(300)


def _ticked_long_turn(rt, tmp, speculate):
    """A turn cut by `max_turn_seconds` just after the user stops: the cut commits audio up to
    its frame, not the VAD's last speech + 100 ms, so a draft (started at 100 ms of silence)
    answers other audio than the commit."""
    from minmo.serving.session import SessionLimits
    from minmo.serving.turns import TurnPolicy

    wave = speech_24k("Tell me about the sea.", tmp, tail=1.0)
    voiced_end = np.nonzero(np.abs(wave) > 0.02)[0][-1] / 24000
    limits = SessionLimits(turns=TurnPolicy.for_model(rt.model.cfg),
                           max_turn_seconds=float(voiced_end) + 0.25)
    gen = GenerationConfig(max_text_tokens=12, max_speech_tokens=45, transcribe_max_tokens=4)
    engine = Engine(rt, EngineConfig(vocoder_thread=False, speculate=speculate), gen=gen,
                    limits=limits)
    events = []
    ids = {"event_id", "item_id", "response_id", "previous_item_id", "item", "response", "session"}
    engine.reserve()
    engine.open(lambda ev: events.append((ev["type"], {k: v for k, v in ev.items()
                                                       if k not in ids})))
    engine.tick()
    (s,) = engine.sessions.values()
    pcm = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
    for k in range(0, pcm.size, 960):
        engine.submit(s.id, "audio", pcm[k:k + 960])
        engine.tick()
    for _ in range(500):
        if "response.done" in [t for t, _ in events]:
            break
        engine.submit(s.id, "audio", np.zeros(960, np.int16))
        engine.tick()
    return events, dict(engine.metrics.counters)


def test_a_commit_of_other_audio_drops_the_draft(rt, tmp):
    """The draft is taken only when the commit takes exactly its audio: a turn cut at
    `max_turn_seconds` during the silence drops it and answers the committed audio, the same
    events as without speculation."""
    plain, _ = _ticked_long_turn(rt, tmp, speculate=False)
    drafted, counts = _ticked_long_turn(rt, tmp, speculate=True)
    assert counts["drafts_started"] >= 1 and counts.get("drafts_taken", 0) == 0
    assert drafted == plain
    assert [t for t, _ in plain].count("response.created") == 1
