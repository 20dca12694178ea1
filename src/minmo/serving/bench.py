"""End-to-end serving benchmark: real clients stream spoken turns in real time to a server in
this process and time end of speech -> first reply audio byte, and whether playback would
keep up (no underrun), at growing numbers of concurrent sessions.

Used by ``minmo bench serve`` and ``benchmarks/bench_serve.py``.

Definitions:

* *end of speech*: the wall time the client sent the last sample of speech (the turn's
  trailing silence is streamed after it, in real time, as a microphone would);
* *first audio*: the wall time the first ``response.output_audio.delta`` arrived; the
  latency therefore includes the VAD's ``silence_duration_ms``;
* *real time*: every session got its reply, and each audio chunk arrived before a player
  started at the first chunk would need it (underrun at most ``slack_s``).
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
from dataclasses import dataclass, field

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

    @property
    def latencies(self) -> list[float]:
        return [t.latency_s for t in self.turns if t.latency_s is not None]

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies)
        if not lat:
            return float("nan")
        return float(np.percentile(lat, q))

    @property
    def real_time(self) -> bool:
        return bool(self.turns) and all(t.ok and t.underrun_s <= self.slack_s
                                        for t in self.turns)


def speech_turn(text: str = "Hello, could you tell me what the weather will be like tomorrow?",
                silence_s: float = 1.0) -> tuple[np.ndarray, int]:
    """An espeak-ng turn at 24 kHz: (wave with 0.3 s lead and ``silence_s`` tail, index of
    the last speech sample)."""
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
    lead = np.zeros(int(0.3 * 24000), np.float32)
    return np.concatenate([lead, wave, np.zeros(int(silence_s * 24000), np.float32)]), \
        lead.size + wave.size


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


async def _level(url: str, n: int, wave: np.ndarray, speech_end: int, rounds: int,
                 timeout: float) -> LevelResult:
    level = LevelResult(n)
    for r in range(rounds):
        offsets = [k * 0.037 for k in range(n)]  # staggered starts, as real users

        async def delayed(k: int) -> TurnResult:
            await asyncio.sleep(offsets[k])
            return await _one_turn(url, wave, speech_end, timeout)

        level.turns += await asyncio.gather(*(delayed(k) for k in range(n)))
    return level


def run_serve_benchmark(model: str | None = "tiny", levels: tuple[int, ...] = (1, 2, 4, 8),
                        rounds: int = 2, max_text_tokens: int = 24, max_speech_tokens: int = 150,
                        threads: int | None = 1, timeout: float = 60.0,
                        progress: bool = True) -> tuple[list[LevelResult], dict]:
    """Serve ``model`` in-process and measure each concurrency level.

    Returns:
        per-level results and a dict of facts (model info, settings).
    """
    import torch

    from minmo.inference.loading import load_runtime
    from minmo.inference.pipeline import GenerationConfig
    from minmo.serving.engine import Engine, EngineConfig
    from minmo.serving.server import BackgroundServer, create_app

    if threads:
        torch.set_num_threads(threads)
    rt = load_runtime(model)
    gen = GenerationConfig(max_text_tokens=max_text_tokens, max_speech_tokens=max_speech_tokens,
                           transcribe_max_tokens=16)
    engine = Engine(rt, EngineConfig(max_sessions=max(levels) + 1, threads=threads),
                    gen=gen).start()
    server = BackgroundServer(create_app(engine))
    wave, speech_end = speech_turn()
    url = server.ws_url + "/v1/realtime"
    results = []
    try:
        for n in levels:
            res = asyncio.run(_level(url, n, wave, speech_end, rounds, timeout))
            results.append(res)
            if progress:
                print(f"  {n:3d} sessions: p50 {res.pct(50) * 1000:6.0f} ms  p95 "
                      f"{res.pct(95) * 1000:6.0f} ms  worst underrun "
                      f"{max(t.underrun_s for t in res.turns) * 1000:6.0f} ms  real time: "
                      f"{'yes' if res.real_time else 'no'}", flush=True)
    finally:
        server.stop()
        engine.stop()
    facts = {"model": rt.info.to_dict(), "threads": threads or torch.get_num_threads(),
             "turn_seconds": round(len(wave) / 24000, 2), "max_text_tokens": max_text_tokens,
             "max_speech_tokens": max_speech_tokens, "rounds": rounds,
             "silence_duration_ms": 500, "tick_p50_ms": None}
    return results, facts


def markdown_table(results: list[LevelResult]) -> str:
    """Results as a markdown table."""
    lines = ["| concurrent sessions | turns | end of speech → first audio p50 | p95 | "
             "worst playback underrun | real time |",
             "|---:|---:|---:|---:|---:|:---:|"]
    for r in results:
        worst = max((t.underrun_s for t in r.turns), default=float("nan"))
        lines.append(f"| {r.sessions} | {len(r.turns)} | {r.pct(50) * 1000:.0f} ms | "
                     f"{r.pct(95) * 1000:.0f} ms | {worst * 1000:.0f} ms | "
                     f"{'yes' if r.real_time else 'no'} |")
    return "\n".join(lines)


def summary(results: list[LevelResult]) -> str:
    held = [r.sessions for r in results if r.real_time]
    best = max(held) if held else 0
    first = results[0] if results else None
    median = statistics.median(first.latencies) if first and first.latencies else float("nan")
    return (f"single session: end of speech -> first audio p50 {median * 1000:.0f} ms; "
            f"real time held up to {best} concurrent sessions (of those tried)")
