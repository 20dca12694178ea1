"""A toy corpus for smoke runs and tests of the training loop: a handful of rows per task,
written in seconds with numpy (tones + noise, no espeak-ng), in the real manifest format.

Each example's audio is a tone mix unique to it, so a model can tell the rows apart; the
texts are short, speech tokens random but fixed per row. This is *not* training data for a
useful model (use ``minmo data synth`` for that); it exists so that every stage can run
end to end on any machine in a few seconds.

Files written under ``root``::

    wavs/*.wav                 16 kHz mono user speech, 16 kHz stereo duplex dialogues
    labels/*.labels.npz        duplex 10 ms labels (docs/data.md)
    asr.jsonl                  speech -> text          (s2t stages)
    lm.jsonl                   text "Repeat: <text>" -> text, no audio (a text warm-up)
    tts.jsonl                  text -> text + speech tokens (t2s stages)
    s2s.jsonl                  speech -> text + speech tokens (s2s stage)
    duplex.jsonl               two-channel dialogue + labels (duplex stage)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from minmo.audio.io import save_audio

TOY_TEXTS = ("hello world", "the cat sat down", "one two three", "good morning to you",
             "open the door", "it is raining", "see you later", "thank you very much")
SAMPLE_RATE = 16000
LISTEN, RESPOND, STOP, CONTINUE = 0, 1, 2, 3


def toy_wave(index: int, seconds: float, seed: int = 0) -> np.ndarray:
    """``(N,)`` float32: two tones specific to ``index`` plus a little seeded noise."""
    rng = np.random.default_rng([seed, index])
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f1, f2 = 180.0 + 90.0 * index, 1100.0 + 230.0 * (index % 5)
    wave = 0.2 * np.sin(2 * np.pi * f1 * t) + 0.1 * np.sin(2 * np.pi * f2 * t)
    return (wave + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def toy_duplex(index: int, seconds: float = 2.0, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A two-channel dialogue: the user speaks, pauses, the assistant answers.

    Returns:
        ``(2, N)`` audio (channel 0 user, 1 assistant), ``(T10,)`` int8 labels and
        ``(T10,)`` uint8 assistant-speaking flags on the 10 ms grid.
    """
    n = int(seconds * SAMPLE_RATE)
    frames = n // 160
    user_end = 0.35 + 0.1 * (index % 4)
    start = user_end + 0.25
    end = min(seconds - 0.2, start + 0.6)
    audio = np.zeros((2, n), np.float32)
    u = toy_wave(index, user_end, seed)
    audio[0, : u.size] = u
    a = toy_wave(index + 100, end - start, seed)
    s = int(start * SAMPLE_RATE)
    audio[1, s: s + a.size] = a
    labels = np.full(frames, LISTEN, np.int8)
    speaking = np.zeros(frames, np.uint8)
    f0, f1 = int(round(start * 100)), int(round(end * 100))
    speaking[f0:f1] = 1
    labels[f0:f1] = CONTINUE
    labels[f0] = RESPOND
    return audio, labels, speaking


def write_toy_corpus(root: str | Path, num_examples: int = 4, seconds: float = 0.75,
                     num_speech_tokens: int = 25, seed: int = 0) -> dict[str, Path]:
    """Write the toy corpus (see module docstring) and return ``{name: manifest path}``.

    Args:
        root: output directory (created).
        num_examples: rows per manifest (at most ``len(TOY_TEXTS)``).
        seconds: length of each user utterance.
        num_speech_tokens: speech tokens per row with speech output.
        seed: noise and speech-token seed.
    """
    if not 1 <= num_examples <= len(TOY_TEXTS):
        raise ValueError(f"num_examples must be in 1..{len(TOY_TEXTS)}")
    root = Path(root)
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    asr, lm, tts, s2s, duplex = [], [], [], [], []
    for i, text in enumerate(TOY_TEXTS[:num_examples]):
        wav = save_audio(root / "wavs" / f"u{i}.wav", toy_wave(i, seconds, seed), SAMPLE_RATE)
        rel = wav.relative_to(root).as_posix()
        tokens = rng.integers(0, 6561, num_speech_tokens).tolist()
        asr.append({"id": f"asr-{i}", "task": "asr", "audio": rel, "duration": seconds,
                    "text": text, "instruction": "Transcribe:", "language": "en"})
        lm.append({"id": f"lm-{i}", "task": "tts", "text": text,
                   "instruction": f"Repeat: {text}", "speech_tokens": tokens})
        tts.append({"id": f"tts-{i}", "task": "tts", "text": text,
                    "instruction": "Say:", "speech_tokens": tokens})
        s2s.append({"id": f"s2s-{i}", "task": "s2s_chat", "audio": rel, "duration": seconds,
                    "text": text, "target": text, "instruction": "Answer:",
                    "speech_tokens": tokens})
        audio, labels, speaking = toy_duplex(i, seed=seed)
        dwav = save_audio(root / "wavs" / f"d{i}.wav", audio, SAMPLE_RATE)
        npz = root / "labels" / f"d{i}.labels.npz"
        np.savez(npz, labels=labels, assistant_speaking=speaking, frame_shift=0.01)
        duplex.append({"id": f"duplex-{i}", "task": "duplex",
                       "audio": dwav.relative_to(root).as_posix(),
                       "duration": audio.shape[1] / SAMPLE_RATE,
                       "labels": npz.relative_to(root).as_posix()})
    return {name: _write_jsonl(root / f"{name}.jsonl", rows) for name, rows in
            (("asr", asr), ("lm", lm), ("tts", tts), ("s2s", s2s), ("duplex", duplex))}
