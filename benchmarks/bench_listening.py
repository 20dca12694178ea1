"""The listening stream's cost per session: the cached block-causal encoder (the model's
``encoder.stream_chunk``) against re-encoding a window for every frame, in one run.

    .venv/bin/python benchmarks/bench_listening.py [--model minmo-small] [--seconds 20]
        [--threads 1] [--sessions 1]

Feeds the same audio (espeak-ng speech and silence, or noise without espeak-ng) through
``listen_step`` in 80 ms pieces, as the server does, once per encoder regime, and prints CPU
ms per second of audio (CPU real-time factor) for each and their ratio. Only models with a
Whisper encoder have the windowed regime; the ratio is what the cached stream saves.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def _audio(seconds: float) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        rng = np.random.default_rng(0)
        return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)
    from minmo.audio.io import load_audio

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        text = "The farmer buys fresh bread on Sunday and sells it again on Monday. " * 8
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True)
        speech = load_audio(path, 16000)
    gap = np.zeros(8000, np.float32)
    wave = np.concatenate([gap, speech, gap] * (1 + int(seconds * 16000 // len(speech))))
    return wave[: int(16000 * seconds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minmo-small")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=1)
    args = parser.parse_args()

    import torch

    from minmo.inference.listen import ListenConfig, listen_step, new_listen_state
    from minmo.inference.loading import load_runtime

    torch.set_num_threads(args.threads)
    rt = load_runtime(args.model, vocoder="placeholder")
    enc = rt.model.cfg.encoder
    if enc.kind != "whisper" or not enc.stream_chunk:
        raise SystemExit("bench_listening: needs a Whisper model with encoder.stream_chunk set")
    wave, piece, cfg = _audio(args.seconds), 1280, ListenConfig()
    results = {}
    for name, chunk in (("cached, block-causal", enc.stream_chunk), ("windowed", None)):
        rt.model.cfg.encoder = dataclasses.replace(enc, stream_chunk=chunk)
        states = [new_listen_state(rt, cfg) for _ in range(args.sessions)]
        frames, cpu = 0, time.process_time()
        for start in range(0, len(wave), piece):
            chunk_wave = wave[start:start + piece]
            out = listen_step(rt, states, [chunk_wave] * args.sessions,
                              [lambda s: False] * args.sessions, ["s"] * args.sessions, cfg)
            frames += sum(len(f) for f in out)
        cpu = time.process_time() - cpu
        results[name] = cpu / args.sessions / args.seconds
        print(f"{name:>22s}: {1000 * results[name]:7.1f} CPU ms per second of audio per session "
              f"(real-time factor {results[name]:.3f}; {frames} decisions)")
    rt.model.cfg.encoder = enc
    ratio = results["windowed"] / results["cached, block-causal"]
    print(f"windowed / cached: {ratio:.2f}x ({args.sessions} session(s), {args.seconds:.0f} s, "
          f"{args.threads} thread(s), {args.model})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
