"""The browser page in headless Chromium (Debian's ``chromium``, driven by playwright) with a
fake microphone playing a spoken turn: it connects, streams mic audio, shows the user
transcript, plays reply audio, stops it on Esc ("Stop reply"), and shows the random-weights
banner. A screenshot is saved
(``$MINMO_SCREENSHOT`` or the test's tmp dir)."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from minmo.inference.loading import load_runtime
from minmo.inference.pipeline import GenerationConfig
from minmo.serving.engine import Engine, EngineConfig
from minmo.serving.server import BackgroundServer, create_app

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def turn_wav(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/install.sh installs it)")
    from minmo.audio.io import load_audio

    d = tmp_path_factory.mktemp("browser")
    raw = d / "raw.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "Hello there, what can you do for me?"],
                   check=True)
    wave = load_audio(raw, 48000)
    wave = np.concatenate([np.zeros(24000, np.float32), wave, np.zeros(3 * 48000, np.float32)])
    path = d / "turn.wav"
    sf.write(path, wave, 48000, subtype="PCM_16")
    return path


def test_page_talks_and_listens_in_headless_chromium(turn_wav, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (bash scripts/install.sh --test)")
    sync_api = pytest.importorskip("playwright.sync_api")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rt = load_runtime("tiny", seed=0, vocoder="placeholder")
    gen = GenerationConfig(max_text_tokens=12, max_speech_tokens=60, transcribe_max_tokens=6)
    engine = Engine(rt, EngineConfig(max_sessions=2), gen=gen).start()
    server = BackgroundServer(create_app(engine))
    shot = Path(os.environ.get("MINMO_SCREENSHOT", tmp_path / "page.png"))
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={turn_wav}",
                "--autoplay-policy=no-user-gesture-required"])
            page = browser.new_context().new_page()
            page.goto(server.http_url + "/")
            page.wait_for_function("document.getElementById('banner').textContent.length > 0",
                                   timeout=30_000)
            page.click("#toggle")
            page.wait_for_function(
                "window.minmo.userTranscripts.length > 0 && window.minmo.audioChunks > 0 "
                "&& window.minmo.played > 0 && window.minmo.latenciesMs.length > 0",
                timeout=90_000)
            # "Stop reply" (Esc): cancels a reply still generating, and clears playback here
            # and on the server's clock, which confirms with output_audio_buffer.cleared
            page.keyboard.press("Escape")
            page.wait_for_function(
                "(window.minmo.events['output_audio_buffer.cleared'] || 0) >= 1", timeout=30_000)
            hush_hidden = page.is_hidden("#hush")
            state = page.evaluate("() => window.minmo")
            banner = page.inner_text("#banner")
            log = page.inner_text("#log")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            page.click("#toggle")  # stop: closes the session
            browser.close()
        assert engine.wait_until(lambda: engine.session_count == 0, 30)
    finally:
        server.stop()
        engine.stop()
        torch.set_num_threads(threads)
    assert engine.error is None
    assert "random weights" in banner
    assert state["connected"] is False or state["sessionId"]
    assert state["events"]["input_audio_buffer.speech_started"] >= 1
    assert state["userTranscripts"][0]
    assert state["audioSamples"] > 0 and state["played"] > 0
    assert state["latenciesMs"][0] > 0
    assert "first audio" in log
    assert state["errors"] == []
    assert state["hushed"] == 1 and hush_hidden
    assert shot.stat().st_size > 10_000


PLAYER_SCENARIO = """(src) => {
  globalThis.AudioWorkletProcessor = class {
    constructor() { this.port = { postMessage: () => {} }; }
  };
  globalThis.registerProcessor = () => {};
  const p = new (new Function(src + "; return PcmPlayer;")())();
  const chunk = (ms) => new Float32Array(ms * 24).fill(0.5);
  const run = (quanta) => {  // render quanta of 128 samples: how much audio came out
    let audio = 0;
    for (let i = 0; i < quanta; i++) {
      const out = [[new Float32Array(128)]];
      p.process([], out);
      audio += out[0][0].filter((x) => x !== 0).length;
    }
    return audio;
  };
  const r = {};
  // reply 1, no delay learnt yet: plays at once, runs dry for 10 quanta mid-reply
  p.receive(chunk(320));
  r.first = run(1);
  r.firstReply = r.first + run(59) + run(10);
  p.receive(chunk(600));
  p.receive("end");
  r.firstReply += run(200);
  r.afterDry = p.target;
  // reply 2: held until `target` samples are queued, played without running dry
  p.receive(chunk(40));
  r.heldAudio = run(5);
  p.receive(chunk(40));
  p.receive("end");
  r.secondReply = run(30);
  r.afterClean = p.target;
  // reply 3, shorter than the delay: its end lets it play at once
  p.receive(chunk(20));
  p.receive("end");
  r.shortReply = run(10);
  r.afterShort = p.target;
  // barge-in: clear drops what is queued, keeps the delay
  p.receive(chunk(600));
  run(20);
  p.receive("clear");
  r.afterClear = run(5);
  r.targetAfterClear = p.target;
  // a very long stall is capped at one second
  p.receive(chunk(100));
  run(30);
  run(400);
  p.receive(chunk(100));
  p.receive("end");
  run(100);
  r.capped = p.target;
  return r;
}"""


def test_player_learns_a_playout_delay_from_underruns(tmp_path):
    """The page's player (worklet.js, run in Chromium with the worklet API stubbed): a reply
    plays at once until one runs dry; the silence it caused becomes the delay later replies
    wait for (at most 1 s), a reply that plays without running dry lowers it by a quarter, a
    reply's end plays what is queued at once, and a barge-in's clear keeps what was learnt."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (bash scripts/install.sh --test)")
    sync_api = pytest.importorskip("playwright.sync_api")
    import minmo

    src = (Path(minmo.__file__).parent / "serving" / "web" / "worklet.js").read_text()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless=new", "--no-sandbox", "--disable-gpu"])
        r = browser.new_context().new_page().evaluate(PLAYER_SCENARIO, src)
        browser.close()
    assert r["first"] == 128  # no delay before anything was learnt
    assert r["firstReply"] == 920 * 24  # every sample played, none lost to the stall
    assert r["afterDry"] == 10 * 128  # the stall's length
    assert r["heldAudio"] == 0  # 960 queued < 1280: waits
    assert r["secondReply"] == 80 * 24
    assert r["afterClean"] == 960  # 1280 * 3/4
    assert r["shortReply"] == 480 and r["afterShort"] == 720
    assert r["afterClear"] == 0 and r["targetAfterClear"] == 720
    assert r["capped"] == 24000
