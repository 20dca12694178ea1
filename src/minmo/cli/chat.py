"""``minmo chat IN.wav [--out OUT.wav]``: one spoken turn offline through the same engine code:
the user's transcript, the reply text, and the reply speech."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from minmo.cli import add_quantize_argument

if TYPE_CHECKING:
    import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "chat",
        help="one spoken turn offline: transcript, reply text, reply speech",
        description="Run one spoken turn through MinMo: prints what the model heard "
        "(its own transcription pass) and its reply, and writes the reply speech (24 kHz).",
    )
    p.add_argument("input", help="input audio (wav/flac/ogg/mp3; any rate, mixed to mono)")
    p.add_argument("--out", default=None, help="write the reply speech here (.wav)")
    p.add_argument("--model", default=None, help="model directory or preset (see minmo serve)")
    p.add_argument("--text-only", action="store_true", help="reply in text only (no speech)")
    p.add_argument("--no-transcript", action="store_true", help="skip the transcription pass")
    p.add_argument("--beam-size", type=int, default=1,
                   help="beam search of the transcript and of the reply text (hypotheses kept "
                   "per step; 1, the default: greedy, as the server decodes); the reply's "
                   "speech then reads the chosen text, so its first audio waits for the search")
    p.add_argument("--max-text-tokens", type=int, default=200,
                   help="reply length limit in text tokens (default 200)")
    p.add_argument("--max-speech-tokens", type=int, default=1500,
                   help="reply speech limit in speech tokens, 25 per second (default 1500)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="text sampling temperature (0: greedy, the default)")
    p.add_argument("--seed", type=int, default=0,
                   help="sampler seed (speech tokens are sampled; same seed, same reply)")
    p.add_argument("--vocoder", choices=("auto", "token2wav", "placeholder"), default="auto",
                   help="speech decoder: the model's token2wav (auto), or placeholder tones "
                   "(fast; only for checking the plumbing)")
    p.add_argument("--no-vad", action="store_true",
                   help="answer even when the voice activity detector hears no speech in the "
                   "input (by default such an input is refused, as the server would never "
                   "take it as a turn)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    add_quantize_argument(p, "auto")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: half the cores, at least 1)")
    p.set_defaults(func=run)
    return p


def heard_speech(wave: np.ndarray) -> bool:
    """Whether silero-vad (the server's detector) hears speech anywhere in a 16 kHz
    ``wave``: some 32 ms window reaches the threshold at which the server starts a turn (its
    default ``server_vad`` turn detection)."""
    from minmo.serving.protocol import TurnDetection
    from minmo.serving.vad import SileroVAD, stream_probs

    probs = stream_probs(SileroVAD.from_package(), wave)
    return bool(probs.size) and float(probs.max()) >= TurnDetection.threshold


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from minmo.audio.io import load_audio, save_audio
    from minmo.inference import pipeline as P
    from minmo.inference.loading import load_runtime

    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) // 2))
    if args.beam_size < 1:
        raise ValueError(f"--beam-size must be >= 1 (1: greedy), got {args.beam_size}")
    if args.beam_size > 1 and args.temperature > 0:
        raise ValueError("--temperature samples and --beam-size searches: use one")
    wave = load_audio(args.input, 16000)
    if not args.no_vad and not heard_speech(wave):
        print(f"minmo chat: error: no speech heard in {args.input} (silero-vad: no 32 ms window "
              "reaches the server's turn threshold); the server would not take it as a turn. "
              "Pass --no-vad to answer it anyway", file=sys.stderr)
        return 1
    rt = load_runtime(args.model, seed=args.seed, device=args.device, vocoder=args.vocoder,
                      quantize=args.quantize)
    if rt.info.warning:
        print(f"minmo chat: WARNING: {rt.info.warning}", file=sys.stderr)
    gen = P.GenerationConfig(max_text_tokens=args.max_text_tokens,
                             max_speech_tokens=args.max_speech_tokens,
                             temperature=args.temperature, seed=args.seed,
                             beam_size=args.beam_size)
    session = P.new_session(rt, P.SessionConfig(generation=gen))
    result = P.reply(rt, wave, session, with_transcript=not args.no_transcript,
                     audio=not args.text_only)
    if args.out and not args.text_only:
        save_audio(args.out, result.wave, result.sample_rate)
    if args.json:
        print(json.dumps({"transcript": result.transcript, "reply": result.text,
                          "status": result.status, "out": args.out,
                          "audio_seconds": round(result.wave.size / result.sample_rate, 3),
                          "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
                          "model": rt.info.to_dict()}, ensure_ascii=False))
        return 0
    if result.transcript is not None:
        print(f"you said : {result.transcript}")
    print(f"reply    : {result.text}")
    if not args.text_only:
        where = f" -> {args.out}" if args.out else " (not written: give --out)"
        print(f"speech   : {result.wave.size / result.sample_rate:.2f} s{where}")
    t = result.timings
    if "first_audio" in t:
        print(f"latency  : first token {t['first_token'] * 1000:.0f} ms, first audio "
              f"{t['first_audio'] * 1000:.0f} ms, total {t['total'] * 1000:.0f} ms")
    if rt.info.quantization:
        print(f"weights  : {rt.info.quantization} (--quantize none: float)")
    return 0
