"""Barge-in versus back-channel, live: a real server, a real model, espeak-ng as the user.

    .venv/bin/python examples/duplex_demo.py [--model minmo-small] [--turn-policy auto|vad]
        [--talk-over TEXT ...]

Starts the server in-process (the same engine as ``minmo serve``); for each case the user
asks for a long story and, once the reply is speaking, talks over it: by default a real
interruption ("Wait, stop, I have another question.") and a back-channel ("uh huh"). It
prints whether the server stopped talking (it took the turn: ``speech_started`` while its
reply played; the reply is ``cancelled`` if it was still being generated) or talked on.
The server interrupts itself after 600 ms of the user's speech (``TurnPolicy.barge_in_ms``),
so it talks on through short back-channels and stops for a real interruption; a shorter
overlap it reads (``TurnPolicy.read_commands``), and a command ("stop", 256 ms of speech in
espeak-ng's voice; "wait", "hold on", ...) stops it too. Audio goes over the Realtime
WebSocket API at real-time pace (``RealtimeClient``). Figures: docs/serving.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from minmo.cli import add_quantize_argument


def espeak_24k(text: str, directory: Path, lead: float, tail: float) -> np.ndarray:
    """``text`` spoken by espeak-ng, 24 kHz (the wire rate), with silence around it."""
    from minmo.audio.io import load_audio

    path = directory / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True)
    wave = load_audio(path, 24000)
    return np.concatenate([np.zeros(int(24000 * lead), np.float32), wave,
                           np.zeros(int(24000 * tail), np.float32)])


async def talk_over(url: str, first: np.ndarray, second: np.ndarray) -> tuple[bool, dict]:
    """Send ``first``; once its reply is audible send ``second``. Returns whether the server
    took the turn (a ``speech_started`` while its reply played: it stopped talking) and the
    reply's ``response.done`` (``cancelled`` if it was still generating then)."""
    from minmo.serving.client import RealtimeClient

    async with RealtimeClient(url + "/v1/realtime") as client:
        await client.send_audio(first, realtime=True)
        rid = (await client.wait_for("response.created", 120))["response"]["id"]
        await client.wait_for("response.output_audio.delta", 120)
        # the server's playback clock runs on the user's audio, so the (long, faster than
        # real time) reply plays on through all of ``second``: a speech_started is a barge-in
        mark = len(client.events)
        await client.send_audio(second, realtime=True)
        try:
            await client.wait_for("input_audio_buffer.speech_started", 3, since=mark)
            stopped = True
        except asyncio.TimeoutError:
            stopped = False
        done = await client.wait_for(
            lambda e: e["type"] == "response.done" and e["response"]["id"] == rid, 180)
        return stopped, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minmo-small")
    parser.add_argument("--turn-policy", choices=("auto", "vad"), default="auto",
                        help="auto: trust the duplex predictor when trained (as minmo serve)")
    parser.add_argument("--threads", type=int, default=2)
    add_quantize_argument(parser, "auto")
    parser.add_argument("--talk-over", action="append", default=None, metavar="TEXT",
                        help="what the user says over the reply (repeatable; default: an "
                             "interruption and the back-channel 'uh huh')")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("duplex_demo: needs espeak-ng (scripts/install.sh installs it)")

    import torch

    from minmo.inference.loading import load_runtime
    from minmo.inference.pipeline import GenerationConfig
    from minmo.serving.engine import Engine, EngineConfig
    from minmo.serving.server import BackgroundServer, ServerConfig, create_app
    from minmo.serving.session import SessionLimits
    from minmo.serving.turns import TurnPolicy

    torch.set_num_threads(args.threads)
    rt = load_runtime(args.model, quantize=args.quantize)
    if rt.info.warning:
        print("WARNING:", rt.info.warning)
    trust = rt.info.trained_predictor and args.turn_policy == "auto"
    engine = Engine(rt, EngineConfig(), gen=GenerationConfig(max_text_tokens=60,
                                                             max_speech_tokens=600),
                    limits=SessionLimits(turns=TurnPolicy(trust_predictor=trust))).start()
    server = BackgroundServer(create_app(engine, ServerConfig()))
    print(f"turns: {'duplex predictor + VAD' if trust else 'VAD rule'}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ask = espeak_24k("Tell me a long story about the farmer and his bread.", Path(tmp),
                             0.3, 1.0)
            cases = ([("talk-over", t) for t in args.talk_over] if args.talk_over else
                     [("interruption", "Wait, stop, I have another question."),
                      ("back-channel", "uh huh")])
            for what, text in cases:
                stopped, done = asyncio.run(talk_over(server.ws_url, ask,
                                                      espeak_24k(text, Path(tmp), 0.0, 2.0)))
                print(f"{what:>13s} ({text!r}): the server "
                      f"{'stopped talking' if stopped else 'talked on'} "
                      f"(reply {done['response']['status']})")
    finally:
        server.stop()
        engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
