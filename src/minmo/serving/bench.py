"""End-to-end serving benchmark: real clients stream spoken turns in real time to a server in
this process and time end of speech -> first reply audio byte, and whether playback would
keep up (no underrun), at growing numbers of concurrent sessions.

Used by ``minmo bench serve`` and ``benchmarks/bench_serve.py``.

Definitions:

* *end of speech*: the wall time the client sent the last sample of speech (the turn's
  trailing silence is streamed after it, in real time, and more silence until the reply is
  done: the microphone stays open, so the server keeps listening while it speaks);
* *first audio*: the wall time the first ``response.output_audio.delta`` arrived; the
  latency therefore includes the silence the server waits for before it answers (the VAD
  rule's ``silence_duration_ms``, or a trusted duplex predictor's shorter wait);
* *real time*: every session got its reply, each audio chunk arrived before a player started
  at the first chunk would need it (underrun at most ``slack_s``), and the p95 latency stays
  conversational (at most ``max_p95_s``, 1.5 s: the server keeps up with the microphones).
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class TurnResult:
    """One session's turn."""

    latency_s: float | None
    underrun_s: float
    audio_s: float
    ok: bool


@dataclass
class LevelResult:
    """All sessions at one concurrency level."""

    sessions: int
    turns: list[TurnResult] = field(default_factory=list)
    slack_s: float = 0.1
    max_p95_s: float = 1.5
    cpu_cores: float = float("nan")  # server CPU seconds per wall second during the level

    @property
    def latencies(self) -> list[float]:
        return [t.latency_s for t in self.turns if t.latency_s is not None]

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies)
        if not lat:
            return float("nan")
        return float(np.percentile(lat, q))

    def stall_free_start(self, q: float = 50) -> float:
        """Percentile of latency + worst underrun per turn: when a player that buffers just
        enough never to run dry would start that reply."""
        starts = [t.latency_s + t.underrun_s for t in self.turns if t.latency_s is not None]
        return float(np.percentile(starts, q)) if starts else float("nan")

    @property
    def real_time(self) -> bool:
        return bool(self.turns) and all(t.ok and t.underrun_s <= self.slack_s
                                        for t in self.turns) and self.pct(95) <= self.max_p95_s


def speech_turn(text: str = "Hello, could you tell me what the weather will be like tomorrow?",
                silence_s: float = 1.0) -> tuple[np.ndarray, int]:
    """An espeak-ng turn at 24 kHz: (wave with 0.3 s lead and ``silence_s`` of silence after
    the file, index just after the last speech sample)."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from minmo.audio.io import load_audio

    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng not found: install it (bash scripts/install.sh)")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "turn.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
        wave = load_audio(path, 24000)
    # the end of speech: the last 10 ms frame above 1 % of the loudest (espeak-ng pads its
    # output with silence, which must not count as speech)
    frames = wave[: wave.size // 240 * 240].reshape(-1, 240)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    voiced = np.nonzero(rms > 0.01 * rms.max())[0]
    speech_end = (int(voiced[-1]) + 1) * 240 if voiced.size else wave.size
    lead = np.zeros(int(0.3 * 24000), np.float32)
    return np.concatenate([lead, wave, np.zeros(int(silence_s * 24000), np.float32)]), \
        lead.size + speech_end


async def _one_turn(url: str, wave: np.ndarray, speech_end: int, timeout: float) -> TurnResult:
    from minmo.serving.client import RealtimeClient

    marks: dict[str, float] = {}

    def on_chunk(sent: int) -> None:
        if sent >= speech_end and "end" not in marks:
            marks["end"] = time.perf_counter()

    async with RealtimeClient(url) as c:
        await c.wait_for("session.created", timeout)
        reader = asyncio.create_task(c.wait_for("response.done", timeout))
        await c.send_audio(wave, chunk_ms=40, realtime=True, on_chunk=on_chunk)
        # the microphone stays open (silence) until the reply is done, as a browser's does:
        # the server keeps listening (for barge-in) while it speaks
        frame, k, start = np.zeros(24000 * 40 // 1000, np.float32), 0, time.perf_counter()
        while not reader.done():
            await c.send_audio(frame)
            k += 1
            await asyncio.wait({reader}, timeout=max(0.0, start + 0.04 * k - time.perf_counter()))
        try:
            await reader
        except (asyncio.TimeoutError, Exception):
            return TurnResult(None, float("inf"), 0.0, False)
        first, underrun, played = None, 0.0, 0.0
        for ev, t in zip(c.events, c.times):
            if ev["type"] != "response.output_audio.delta":
                continue
            if first is None:
                first = t
            underrun = max(underrun, t - (first + played))
            played += len(base64.b64decode(ev["delta"])) / 2 / 24000
        latency = first - marks["end"] if first is not None and "end" in marks else None
        return TurnResult(latency, underrun, played, first is not None)


async def _level(url: str, health: str, n: int, wave: np.ndarray, speech_end: int,
                 rounds: int, timeout: float) -> LevelResult:
    level = LevelResult(n)
    for r in range(rounds):
        await _sessions_closed(health, timeout)  # the last round's sessions are gone
        offsets = [k * 0.037 for k in range(n)]  # staggered starts, as real users

        async def delayed(k: int) -> TurnResult:
            await asyncio.sleep(offsets[k])
            return await _one_turn(url, wave, speech_end, timeout)

        level.turns += await asyncio.gather(*(delayed(k) for k in range(n)))
    return level


async def _sessions_closed(health: str, timeout: float) -> None:
    """Wait until the server's ``/healthz`` counts no session (closed connections are
    dropped on its next tick, which a busy engine may take a moment to reach)."""
    import httpx

    deadline = time.perf_counter() + timeout
    async with httpx.AsyncClient() as client:
        while (await client.get(health, timeout=5)).json()["sessions"] > 0:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the server still holds sessions after {timeout} s")
            await asyncio.sleep(0.05)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_cpu(base: str) -> float:
    """CPU seconds the server process has used (from its /metrics)."""
    import httpx

    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith("minmo_process_cpu_seconds_total"):
            return float(line.split()[1])
    return float("nan")


def run_serve_benchmark(model: str | None = "tiny", levels: tuple[int, ...] = (1, 2, 4, 8),
                        rounds: int = 2, max_text_tokens: int = 24, max_speech_tokens: int = 150,
                        threads: int = 1, vocoder: str = "auto", timeout: float = 90.0,
                        progress: bool = True, device: str = "cpu",
                        defer_listening: float = 1.0, speculate: bool = True,
                        transcript_beam_size: int = 1, quantize: str = "none"
                        ) -> tuple[list[LevelResult], dict]:
    """Start ``minmo serve`` (on ``device``) in a child process (its own interpreter, as in
    production) and measure each concurrency level with real-time clients from this process.

    Returns:
        per-level results and a dict of facts (model info, settings, server metrics).
    """
    import os
    import subprocess
    import sys

    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "minmo.cli.main", "serve", "--port", str(port),
           "--threads", str(threads), "--max-sessions", str(max(levels) + 1),
           "--max-text-tokens", str(max_text_tokens), "--max-speech-tokens",
           str(max_speech_tokens), "--vocoder", vocoder, "--device", device,
           "--defer-listening", str(defer_listening),
           "--speculate" if speculate else "--no-speculate",
           "--transcript-beam-size", str(transcript_beam_size), "--quantize", quantize]
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        health = None
        deadline = time.perf_counter() + 180
        while time.perf_counter() < deadline and proc.poll() is None:
            try:
                health = httpx.get(base + "/healthz", timeout=2).json()
                break
            except httpx.HTTPError:
                time.sleep(0.25)
        if health is None:
            err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
            raise RuntimeError(f"minmo serve did not come up on port {port}: {err[-2000:]}")
        wave, speech_end = speech_turn()
        url = f"ws://127.0.0.1:{port}/v1/realtime"
        asyncio.run(_level(url, base + "/healthz", 1, wave, speech_end, 1, timeout))  # warm-up
        results = []
        for n in levels:
            cpu0, t0 = _server_cpu(base), time.perf_counter()
            res = asyncio.run(_level(url, base + "/healthz", n, wave, speech_end, rounds,
                                     timeout))
            res.cpu_cores = (_server_cpu(base) - cpu0) / (time.perf_counter() - t0)
            results.append(res)
            if progress:
                print(f"  {n:3d} sessions: p50 {res.pct(50) * 1000:6.0f} ms  p95 "
                      f"{res.pct(95) * 1000:6.0f} ms  worst underrun "
                      f"{max(t.underrun_s for t in res.turns) * 1000:6.0f} ms  real time: "
                      f"{'yes' if res.real_time else 'no'}", flush=True)
        metrics = httpx.get(base + "/metrics", timeout=5).text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    facts = {"model": health["model"], "threads": threads, "device": device,
             "turn_seconds": round(len(wave) / 24000, 2),
             "speech_seconds": round(speech_end / 24000, 2), "max_text_tokens": max_text_tokens,
             "max_speech_tokens": max_speech_tokens, "rounds": rounds,
             "silence_duration_ms": 500, "metrics": metrics}
    return results, facts


def markdown_table(results: list[LevelResult]) -> str:
    """Results as a markdown table."""
    lines = ["| concurrent sessions | turns | end of speech → first audio p50 | p95 | "
             "playback underrun, median / worst | stall-free start p50 | real time | "
             "server CPU (cores busy) |",
             "|---:|---:|---:|---:|---:|---:|:---:|---:|"]
    for r in results:
        under = [t.underrun_s for t in r.turns]
        median = float(np.median(under)) if under else float("nan")
        worst = max(under, default=float("nan"))
        lines.append(f"| {r.sessions} | {len(r.turns)} | {r.pct(50) * 1000:.0f} ms | "
                     f"{r.pct(95) * 1000:.0f} ms | {median * 1000:.0f} / {worst * 1000:.0f} ms | "
                     f"{r.stall_free_start() * 1000:.0f} ms | "
                     f"{'yes' if r.real_time else 'no'} | {r.cpu_cores:.2f} |")
    return "\n".join(lines)


def stage_means(metrics_text: str) -> dict[str, float]:
    """Mean seconds per stage from the server's ``/metrics`` text."""
    sums, counts = {}, {}
    for line in metrics_text.splitlines():
        if line.startswith("minmo_stage_seconds_sum"):
            stage = line.split('stage="')[1].split('"')[0]
            sums[stage] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("minmo_stage_seconds_count"):
            stage = line.split('stage="')[1].split('"')[0]
            counts[stage] = int(float(line.rsplit(" ", 1)[1]))
    return {k: sums[k] / counts[k] for k in sums if counts.get(k)}


def counters(metrics_text: str) -> dict[str, int]:
    """The server's counters (``minmo_<name>_total``) from its ``/metrics`` text."""
    out = {}
    for line in metrics_text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("minmo_") and name.endswith("_total") and value:
            out[name[len("minmo_"):-len("_total")]] = int(float(value))
    return out


def summary(results: list[LevelResult]) -> str:
    held = [r.sessions for r in results if r.real_time]
    best = max(held) if held else 0
    first = results[0] if results else None
    median = statistics.median(first.latencies) if first and first.latencies else float("nan")
    text = (f"single session: end of speech -> first audio p50 {median * 1000:.0f} ms; "
            f"real time held up to {best} concurrent sessions (of those tried)")
    if first is not None and first.cpu_cores == first.cpu_cores and first.cpu_cores > 0:
        per = first.cpu_cores / first.sessions
        text += (f"; one session kept the server {per:.2f} cores busy on average over its "
                 f"turns, i.e. about {1 / per:.0f} such sessions per free core (CPU-time "
                 "estimate, independent of other load)")
    return text


ModuleRow = tuple[str, str, float, float, str]
"""One row of the modules benchmark: (module, work, wall ms, CPU ms, note)."""


def _timed(fn, repeats: int, sync=None) -> tuple[float, float]:
    """Mean wall and CPU seconds per call of ``fn`` after one warm-up call (``sync``: waits
    for queued device work, e.g. ``torch.cuda.synchronize``, before each clock read). CPU
    time is this thread's: it does not grow when other processes share the cores."""
    sync = sync or (lambda: None)
    fn()  # warm-up
    sync()
    start, cpu = time.perf_counter(), time.thread_time()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats, (time.thread_time() - cpu) / repeats


class _ModuleTimer:
    """Collects the rows of :func:`run_modules_benchmark`."""

    def __init__(self, repeats: int, sync=None) -> None:
        self.repeats, self.sync = repeats, sync
        self.rows: list[ModuleRow] = []

    def time(self, module: str, work: str, fn, repeats: int | None = None,
             note: str | Callable[[float], str] = "") -> None:
        """Time ``fn``; ``note`` may be a function of the CPU milliseconds per call."""
        wall, cpu = _timed(fn, repeats or self.repeats, sync=self.sync)
        self.rows.append((module, work, 1000 * wall, 1000 * cpu,
                          note(1000 * cpu) if callable(note) else note))


def run_modules_benchmark(model: str | None = "tiny", vocoder: str = "auto", threads: int = 1,
                          repeats: int = 20, device: str = "cpu", quantize: str = "none"
                          ) -> tuple[list[ModuleRow], dict]:
    """Per-module latency of the serving path (one session unless noted), on ``device``
    (silero VAD always runs on the CPU, as in the server).

    Returns:
        rows ``(module, work, wall ms, cpu ms, note)`` and facts.
    """
    import torch

    from minmo.inference.loading import load_runtime

    torch.set_num_threads(threads)
    rt = load_runtime(model, vocoder=vocoder, device=device, quantize=quantize)
    timer = _ModuleTimer(repeats, sync=torch.cuda.synchronize if rt.device.type == "cuda" else None)
    wave = (np.random.default_rng(0).standard_normal(48000) * 0.1).astype(np.float32)  # 3 s
    with torch.inference_mode():
        _time_listening(timer, rt, wave)
        _time_llm(timer, rt)
        _time_speech_output(timer, rt)
        _time_vad(timer)
        timer.rows += _reply_rows(rt, wave)
    facts = {"model": rt.info.to_dict(), "threads": threads, "device": str(rt.device)}
    return timer.rows, facts


def _time_listening(timer: _ModuleTimer, rt, wave: np.ndarray) -> None:
    """A committed turn's encoding, and the listening stream's 120 ms steps (1 and 8
    sessions) that end in a duplex decision."""
    from minmo.inference.listen import ListenConfig, listen_step, new_listen_state

    frame = 1920  # 120 ms at 16 kHz
    timer.time("encoder + projector", "3 s turn, offline", lambda: rt.encode_speech(wave),
               note="per committed turn")
    cfg = ListenConfig()

    def step(states, chunk) -> None:
        n = len(states)
        listen_step(rt, states, [chunk] * n, [lambda t: False] * n, ["s"] * n, cfg)

    one = [new_listen_state(rt, cfg)]
    step(one, wave[:frame * 4])
    pos = {"k": 0}

    def next_frame() -> None:
        k = pos["k"] = (pos["k"] + 1) % 20
        step(one, wave[k * frame:(k + 1) * frame])

    timer.time("listening stream", "120 ms of audio -> duplex decision", next_frame,
               note=lambda cpu_ms: f"CPU real-time factor {cpu_ms / 120:.3f}")
    eight = [new_listen_state(rt, cfg) for _ in range(8)]
    step(eight, wave[:frame * 4])
    timer.time("listening stream", "8 sessions x 120 ms, batched",
               lambda: step(eight, wave[:frame]),
               note=lambda cpu_ms: f"{cpu_ms / 8:.2f} CPU ms per session")


def _time_llm(timer: _ModuleTimer, rt) -> None:
    """LLM prefill of 200 positions and a decode step after them (1 and 8 sessions)."""
    import torch

    from minmo.inference.kv import KVStream, batched_forward

    x = torch.randn(200, rt.model.llm.hidden_size, device=rt.device, dtype=rt.dtype)
    timer.time("LLM", "prefill 200 positions",
               lambda: batched_forward(rt.llm_body, [KVStream()], [x]))
    for b in (1, 8):
        kvs = [KVStream() for _ in range(b)]
        batched_forward(rt.llm_body, kvs, [x] * b)

        def decode(kvs=kvs, b=b) -> None:
            batched_forward(rt.llm_body, kvs, [x[:1]] * b)
            for kv in kvs:  # keep the cache length constant
                kv.cache.crop(-1)
                kv.length = 200

        timer.time("LLM", f"decode step, {b} session(s) batched", decode,
                   note="one text token each")


def _time_speech_output(timer: _ModuleTimer, rt) -> None:
    """Voice LM steps (1 and 8 sessions), the duplex predictor's step and the speech
    decoder's first chunk of 15 tokens."""
    import torch

    from minmo.inference.generate import VoiceStream, voice_step

    semantic = torch.randn(400, rt.model.voice_lm.hidden_size, device=rt.device)
    for b in (1, 8):
        streams = [VoiceStream(max_tokens=10 ** 6) for _ in range(b)]
        for stream in streams:
            stream.add_semantic(semantic)
        timer.time("voice LM", f"speech-token step, {b} session(s) batched",
                   lambda streams=streams: voice_step(rt, streams), repeats=timer.repeats * 3,
                   note="25 tokens = 1 s of speech")
    hidden = torch.randn(1, 1, rt.model.llm.hidden_size, device=rt.device, dtype=rt.dtype)
    state = rt.model.duplex.init_state(1, rt.device, rt.dtype)
    flag = torch.zeros(1, 1, dtype=torch.long, device=rt.device)
    timer.time("duplex predictor", "one LLM frame",
               lambda: rt.model.duplex.step(hidden, flag, state))
    tokens = torch.randint(0, 6561, (15,))
    holder = {"state": rt.vocoder.init_state()}

    def vocode() -> None:
        _, holder["state"] = rt.vocoder.step(tokens, holder["state"])

    timer.time(f"speech decoder ({rt.vocoder.name})", "15 tokens (0.6 s of audio)", vocode,
               repeats=max(3, timer.repeats // 4),
               note=lambda cpu_ms: f"CPU real-time factor {cpu_ms / 600:.3f}")


def _time_vad(timer: _ModuleTimer) -> None:
    """silero VAD on one 32 ms window (1 and 8 sessions), on the CPU as in the server."""
    import torch

    from minmo.serving.vad import SileroVAD, stack_states

    vad = SileroVAD.from_package()
    for b in (1, 8):
        state = stack_states([vad.init_state(1)] * b)
        window = torch.zeros(b, 512)
        timer.time("silero VAD", f"32 ms window, {b} session(s) batched",
                   lambda window=window, state=state: vad.step(window, state))


def _reply_rows(rt, wave: np.ndarray) -> list[ModuleRow]:
    """One whole reply to ``wave`` (20 text / 60 speech tokens at most): its milestones from
    the commit, measured once (no CPU figure)."""
    from minmo.inference import pipeline as P

    session = P.new_session(rt, P.SessionConfig(generation=P.GenerationConfig(
        max_text_tokens=20, max_speech_tokens=60)))
    timings = P.reply(rt, wave, session, with_transcript=False).timings
    return [("reply (one turn)", f"commit -> {k.replace('_', ' ')}", 1000 * timings[k],
             float("nan"), "20 text / 60 speech tokens")
            for k in ("first_token", "five_tokens", "first_speech_chunk", "first_audio", "total")
            if k in timings]


def modules_table(rows: list[ModuleRow]) -> str:
    lines = ["| module | work | wall ms | CPU ms | note |", "|---|---|---:|---:|---|"]
    lines += [f"| {m} | {w} | {ms:.2f} | {'' if cpu != cpu else f'{cpu:.2f}'} | {n} |"
              for m, w, ms, cpu, n in rows]
    return "\n".join(lines)
