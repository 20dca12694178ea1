"""A small asyncio Realtime client (``websockets``) for benchmarks, tests and scripts.

    async with RealtimeClient(url) as c:
        await c.send_audio(wave24k)                      # input_audio_buffer.append frames
        done = await c.wait_for("response.done", timeout=30)

Every received event is kept in ``events`` (with its arrival time in ``times``);
:meth:`wait_for` waits on the socket (no sleeping) until a matching event arrives.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any, Callable

import numpy as np

from minmo.serving.protocol import WIRE_RATE


def wave_to_pcm16(wave: np.ndarray) -> bytes:
    """``(N,)`` float32 in [-1, 1] -> little-endian pcm16 bytes."""
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def pcm16_to_wave(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


class RealtimeClient:
    """One Realtime connection.

    Args:
        url: ``ws://host:port/v1/realtime`` (``?model=`` optional).
        api_key: sent as ``Authorization: Bearer``.
        beta: send ``OpenAI-Beta: realtime=v1`` (beta event names back).
    """

    def __init__(self, url: str, api_key: str | None = None, beta: bool = False):
        self.url, self.api_key, self.beta = url, api_key, beta
        self.ws: Any = None
        self.events: list[dict] = []
        self.times: list[float] = []
        self._returned: set[int] = set()

    async def __aenter__(self) -> "RealtimeClient":
        import websockets

        headers = {}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if self.beta:
            headers["OpenAI-Beta"] = "realtime=v1"
        self.ws = await websockets.connect(self.url, additional_headers=headers,
                                           max_size=2 ** 24)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.ws.close()

    async def send(self, event: dict | str | bytes) -> None:
        await self.ws.send(event if isinstance(event, (str, bytes)) else json.dumps(event))

    async def send_audio(self, wave: np.ndarray, chunk_ms: int = 40, realtime: bool = False,
                         on_chunk: Callable[[int], None] | None = None) -> None:
        """Stream ``wave`` (float32 at 24 kHz) as append events of ``chunk_ms``; with
        ``realtime`` paced by the wall clock (for latency benchmarks)."""
        step = WIRE_RATE * chunk_ms // 1000
        start = time.perf_counter()
        for k in range(0, len(wave), step):
            if realtime:
                due = start + k / WIRE_RATE
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            audio = base64.b64encode(wave_to_pcm16(wave[k:k + step])).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": audio})
            if on_chunk is not None:
                on_chunk(min(k + step, len(wave)))

    async def recv(self, timeout: float) -> dict:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        ev = json.loads(raw)
        self.events.append(ev)
        self.times.append(time.perf_counter())
        return ev

    async def wait_for(self, match: str | Callable[[dict], bool], timeout: float = 30.0,
                       since: int = 0) -> dict:
        """The first event from index ``since`` on matching ``match`` (an event type or a
        predicate) that no earlier ``wait_for`` returned; reads the socket (up to
        ``timeout`` seconds) until one arrives."""
        pred = (lambda e: e["type"] == match) if isinstance(match, str) else match
        deadline = time.perf_counter() + timeout
        scanned = since
        while True:
            for i in range(scanned, len(self.events)):
                if i not in self._returned and pred(self.events[i]):
                    self._returned.add(i)
                    return self.events[i]
            scanned = len(self.events)
            left = deadline - time.perf_counter()
            if left <= 0:
                raise asyncio.TimeoutError(f"no event matching {match!r} within {timeout} s; "
                                           f"last: {[e['type'] for e in self.events[-5:]]}")
            await self.recv(left)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def audio(self, response_id: str | None = None) -> np.ndarray:
        """All received reply audio (float32, 24 kHz), optionally of one response."""
        parts = [pcm16_to_wave(base64.b64decode(e["delta"])) for e in self.events
                 if e["type"] in ("response.output_audio.delta", "response.audio.delta")
                 and (response_id is None or e["response_id"] == response_id)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
