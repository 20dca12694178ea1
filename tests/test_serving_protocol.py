"""Realtime protocol over a real uvicorn server (tiny model, random weights): a spoken turn's
event order, every server event valid against the openai SDK's types, the SDK's own client,
manual turns, text replies, API key, session limit, oversize frames."""

import asyncio
import base64
import contextlib
import dataclasses
import json
import shutil
import subprocess

import httpx
import numpy as np
import pytest
import torch

from minmo.inference.loading import load_runtime
from minmo.inference.pipeline import GenerationConfig
from minmo.serving.client import RealtimeClient
from minmo.serving.engine import Engine, EngineConfig
from minmo.serving.server import BackgroundServer, ServerConfig, create_app

GEN = GenerationConfig(max_text_tokens=8, max_speech_tokens=45, transcribe_max_tokens=5)


def espeak_24k(text: str, tmp, voice: str = "en") -> np.ndarray:
    """A spoken turn: 0.5 s silence, speech, 1.2 s silence (float32, 24 kHz)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/install.sh installs it)")
    from minmo.audio.io import load_audio

    path = tmp / f"{abs(hash((text, voice)))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    wave = load_audio(path, 24000)
    return np.concatenate([np.zeros(12000, np.float32), wave, np.zeros(28800, np.float32)])


@pytest.fixture(scope="module")
def turn(tmp_path_factory):
    return espeak_24k("What is the weather like today?", tmp_path_factory.mktemp("turn"))


@contextlib.contextmanager
def serving(rt, cfg=None, gen=GEN, **engine_kw):
    engine = Engine(rt, EngineConfig(**engine_kw), gen=gen).start()
    server = BackgroundServer(create_app(engine, cfg or ServerConfig()))
    try:
        yield engine, server
    finally:
        server.stop()
        engine.stop()
    assert engine.error is None, engine.error


def validate(events):
    """Every server event parses with the openai SDK's own (pydantic) types."""
    from openai.types.realtime import RealtimeServerEvent
    from pydantic import TypeAdapter

    adapter = TypeAdapter(RealtimeServerEvent)
    for ev in events:
        adapter.validate_python(ev)


def test_spoken_turn_event_order_and_sdk_types(turn):
    rt = load_runtime("tiny", seed=0, vocoder="token2wav")  # the real streaming decoder
    async def main(url):
        async with RealtimeClient(url + "/v1/realtime?model=minmo") as c:
            created = await c.wait_for("session.created", 10)
            assert created["session"]["minmo"]["random_weights"] is True
            assert "random weights" in created["session"]["minmo"]["warning"]
            await c.send_audio(turn)
            done = await c.wait_for("response.done", 60)
            await c.wait_for("conversation.item.input_audio_transcription.completed", 30)
            return c.events, done

    with serving(rt) as (engine, server):
        events, done = asyncio.run(main(server.ws_url))
    types = [e["type"] for e in events]
    order = ["session.created", "input_audio_buffer.speech_started",
             "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
             "response.created", "response.output_item.added", "response.content_part.added",
             "response.output_audio_transcript.delta", "response.output_audio.delta",
             "response.output_audio.done", "response.output_audio_transcript.done",
             "response.content_part.done", "response.output_item.done", "response.done"]
    positions = [types.index(t) for t in order]
    assert positions == sorted(positions), types
    assert types.count("response.output_audio.delta") >= 2  # streamed in chunks
    # random weights rarely stop by themselves: the 8-token text limit ends the reply
    status = done["response"]["status"]
    assert status == "completed" or (
        status == "incomplete" and done["response"]["status_details"]["reason"] == "max_output_tokens")
    started = events[types.index("input_audio_buffer.speech_started")]
    stopped = events[types.index("input_audio_buffer.speech_stopped")]
    assert 0 < started["audio_start_ms"] < 500 < stopped["audio_end_ms"] < len(turn) / 24
    assert started["item_id"] == stopped["item_id"]
    transcript = events[types.index("conversation.item.input_audio_transcription.completed")]
    assert transcript["item_id"] == started["item_id"] and transcript["transcript"]
    audio = np.concatenate([np.frombuffer(base64.b64decode(e["delta"]), "<i2") for e in events
                            if e["type"] == "response.output_audio.delta"])
    assert audio.size == 45 * 24000 // 25
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    assert text == done["response"]["output"][0]["content"][0]["transcript"]
    validate(events)


def test_openai_sdk_client_completes_an_audio_turn(rt, turn):
    from openai import AsyncOpenAI

    async def main(port):
        client = AsyncOpenAI(api_key="sk-test", base_url=f"http://127.0.0.1:{port}/v1",
                             websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)
        async with client.realtime.connect(model="minmo") as conn:
            await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"]})
            pcm = (turn * 32767).astype("<i2").tobytes()
            for k in range(0, len(pcm), 9600):
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[k:k + 9600]).decode())
            seen, audio_bytes = [], 0
            while True:
                ev = await asyncio.wait_for(conn.recv(), 60)
                seen.append(ev.type)
                if ev.type == "response.output_audio.delta":
                    audio_bytes += len(base64.b64decode(ev.delta))
                if ev.type == "response.done":
                    return seen, ev, audio_bytes

    with serving(rt, ServerConfig(api_key="sk-test")) as (engine, server):
        seen, done, audio_bytes = asyncio.run(main(server.port))
    assert seen[0] == "session.created" and "session.updated" in seen
    assert done.response.status in ("completed", "incomplete")
    assert audio_bytes == 2 * 45 * 24000 // 25


def test_manual_turn_text_reply_and_beta_names(rt, turn):
    async def main(url):
        async with RealtimeClient(url + "/v1/realtime", beta=True) as c:
            await c.wait_for("session.created")
            await c.send({"type": "session.update", "session": {
                "modalities": ["text"], "turn_detection": None,
                "input_audio_transcription": None}})
            upd = await c.wait_for("session.updated")
            assert upd["session"]["audio"]["input"]["turn_detection"] is None
            await c.send_audio(turn)
            await c.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
            await c.wait_for("input_audio_buffer.committed")
            await c.send({"type": "response.create"})
            done = await c.wait_for("response.done", 60)
            await c.send({"type": "input_audio_buffer.commit", "event_id": "c2"})
            err = await c.wait_for("error")
            # a typed user message, then a second reply
            await c.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "And tomorrow?"}]}})
            await c.wait_for("conversation.item.created")
            await c.send({"type": "response.create"})
            done2 = await c.wait_for("response.done", 60)
            return c.types(), done, err, done2

    with serving(rt) as (engine, server):
        types, done, err, done2 = asyncio.run(main(server.ws_url))
    assert "input_audio_buffer.speech_started" not in types  # manual turns: no VAD events
    assert "response.text.delta" in types and "response.output_text.delta" not in types
    assert "response.audio.delta" not in types and "response.output_audio.delta" not in types
    assert done["response"]["status"] == "incomplete"  # 8-token limit with random weights
    assert err["error"]["code"] == "input_audio_buffer_commit_empty"
    assert err["error"]["event_id"] == "c2"
    assert done2["response"]["output"][0]["content"][0]["type"] == "output_text"


def test_beam_transcripts_are_searched_in_the_engine_as_offline_and_sent_whole(
        rt, turn, monkeypatch):
    """``minmo serve --transcript-beam-size``: the input transcript is a beam search run
    inside the engine's batched steps beside the reply; it is sent as one delta, and its
    text is what the same search finds run alone on the same prompt."""
    from minmo.inference import pipeline as P
    from minmo.inference.beam import beam_search

    searches = []

    class Recorded(P.BeamSearch):
        def __init__(self, rt_, prompt, *args, **kwargs):
            super().__init__(rt_, prompt, *args, **kwargs)
            searches.append((prompt, self))

    monkeypatch.setattr(P, "BeamSearch", Recorded)
    gen = dataclasses.replace(GEN, beam_size=3, transcribe_max_tokens=6)

    async def main(url):
        async with RealtimeClient(url + "/v1/realtime") as c:
            await c.wait_for("session.created")
            await c.send_audio(turn)
            await c.wait_for("response.done", 60)
            done = await c.wait_for("conversation.item.input_audio_transcription.completed", 60)
            return c.events, done

    with serving(rt, gen=gen) as (engine, server):
        events, done = asyncio.run(main(server.ws_url))
    deltas = [e["delta"] for e in events
              if e["type"] == "conversation.item.input_audio_transcription.delta"]
    assert len(searches) == 1 and searches[0][1].best is not None
    prompt, search = searches[0]
    alone = beam_search(rt, prompt, 3, 6, gen.length_penalty)
    assert done["transcript"] == rt.decode(alone.ids) == rt.decode(search.best.ids)
    assert deltas == [done["transcript"]]
    # the reply was streamed token by token all the same
    assert sum(e["type"] == "response.output_audio_transcript.delta" for e in events) > 1
    validate(events)


def test_api_key_required(rt):
    import websockets

    async def main(url):
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            async with websockets.connect(url + "/v1/realtime"):
                pass
        status_missing = info.value.response.status_code
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            async with RealtimeClient(url + "/v1/realtime", api_key="wrong"):
                pass
        status_wrong = info.value.response.status_code
        async with websockets.connect(url + "/v1/realtime",
                                      subprotocols=["realtime", "openai-insecure-api-key.k3y"]) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        return status_missing, status_wrong, first

    with serving(rt, ServerConfig(api_key="k3y")) as (engine, server):
        missing, wrong, first = asyncio.run(main(server.ws_url))
        assert engine.wait_until(lambda: engine.session_count == 0, 10)
        assert engine.metrics.counters.get("sessions_opened") == 1
    assert missing == wrong == 401
    assert first["type"] == "session.created"


def test_session_limit_and_oversize_frames(rt):
    async def main(url, engine):
        async with RealtimeClient(url + "/v1/realtime") as a, \
                RealtimeClient(url + "/v1/realtime") as b:
            await a.wait_for("session.created")
            await b.wait_for("session.created")
            async with RealtimeClient(url + "/v1/realtime") as c:
                refused = await c.wait_for("error")
                with pytest.raises(Exception):
                    await c.recv(10)  # closed by the server
                close_code = c.ws.close_code
            await a.send("x" * 5000)  # over max_message_bytes
            big = await a.wait_for("error")
            await a.send({"type": "session.update", "session": {"instructions": "Be brief."}})
            upd = await a.wait_for("session.updated")
        # the server frees a slot when it has seen the close, not when the client sent it
        assert await asyncio.to_thread(engine.wait_until, lambda: engine.session_count == 0, 10)
        async with RealtimeClient(url + "/v1/realtime") as d:  # slots freed again
            again = await d.wait_for("session.created")
        return refused, close_code, big, upd, again

    with serving(rt, ServerConfig(max_message_bytes=4000), max_sessions=2) as (engine, server):
        refused, code, big, upd, again = asyncio.run(main(server.ws_url, engine))
        health = httpx.get(server.http_url + "/healthz").json()
        metrics = httpx.get(server.http_url + "/metrics").text
    assert refused["error"]["code"] == "session_limit_reached" and code == 1013
    assert big["error"]["code"] == "message_too_large"
    assert upd["session"]["instructions"] == "Be brief."
    assert again["type"] == "session.created"
    assert health["status"] == "ok" and health["model"]["random_weights"] is True
    assert health["versions"]["torch"] == torch.__version__
    assert "minmo_sessions" in metrics and 'stage="first_audio"' in metrics


def test_page_and_health_endpoints(rt):
    with serving(rt) as (engine, server):
        page = httpx.get(server.http_url + "/")
        js = httpx.get(server.http_url + "/static/app.js")
        worklet = httpx.get(server.http_url + "/static/worklet.js")
    assert page.status_code == 200 and 'id="banner"' in page.text
    assert js.status_code == 200 and "audioWorklet.addModule" in js.text
    assert "random weights" in js.text  # the banner text for untrained models
    assert worklet.status_code == 200 and "registerProcessor" in worklet.text


def test_idle_session_is_closed(rt):
    async def main(url):
        async with RealtimeClient(url + "/v1/realtime") as c:
            await c.wait_for("session.created")
            err = await c.wait_for("error", 30)  # nothing sent: the server gives up
            with pytest.raises(Exception):
                await c.recv(10)
            return err, c.ws.close_code

    with serving(rt, ServerConfig(idle_timeout_s=0.3)) as (engine, server):
        err, code = asyncio.run(main(server.ws_url))
        assert engine.wait_until(lambda: engine.session_count == 0, 10)
    assert err["error"]["code"] == "idle_timeout" and code == 1000


def test_bench_reads_the_servers_metrics_text():
    """`minmo bench serve` reads stage means and counters back from `/metrics` text."""
    from minmo.serving.bench import counters, stage_means
    from minmo.serving.metrics import Metrics

    m = Metrics()
    m.observe("first_audio", 0.2)
    m.observe("first_audio", 0.4)
    m.inc("drafts_taken", 3)
    m.inc("drafts_dropped")
    text = m.render()
    assert abs(stage_means(text)["first_audio"] - 0.3) < 1e-6
    got = counters(text)
    assert got["drafts_taken"] == 3 and got["drafts_dropped"] == 1


def test_bench_table_reports_underruns_and_the_stall_free_start():
    from minmo.serving.bench import LevelResult, TurnResult, markdown_table

    r = LevelResult(1, [TurnResult(1.0, 0.5, 3.0, True), TurnResult(1.2, 0.0, 3.0, True),
                        TurnResult(0.8, 0.2, 3.0, True)], cpu_cores=1.0)
    assert abs(r.stall_free_start() - 1.2) < 1e-9  # median of 1.5, 1.2, 1.0
    assert not r.real_time  # one turn ran dry for 0.5 s
    row = markdown_table([r]).splitlines()[-1]
    assert "| 1000 ms |" in row and "200 / 500 ms" in row and "| 1200 ms |" in row
