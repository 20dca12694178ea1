"""Synthetic background sounds (audio events) and mixing at a known signal-to-noise ratio.

Each generator returns a ``(N,)`` float32 waveform at the given rate, RMS-normalised to 0.1,
drawn from a seeded ``numpy.random.Generator`` (deterministic). The events are simple
signal-processing stand-ins (music = random chords, siren = swept tone, ...), enough for a
tiny model to learn to name them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Generator = np.random.Generator


def _rms_norm(x: np.ndarray, rms: float = 0.1) -> np.ndarray:
    cur = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) + 1e-12
    return (x * (rms / cur)).astype(np.float32)


def _fade(x: np.ndarray, n: int) -> np.ndarray:
    n = min(n, x.size // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def white_noise(rng: Generator, n: int, sr: int) -> np.ndarray:
    """Flat-spectrum noise."""
    return _rms_norm(rng.standard_normal(n).astype(np.float32))


def _shaped_noise(rng: Generator, n: int, divide: Callable[[np.ndarray], np.ndarray]
                  ) -> np.ndarray:
    """White noise whose spectrum is divided by ``divide(bin index)`` (bin 0 counted as 1)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spec.size, dtype=np.float64)
    freqs[0] = 1.0
    return _rms_norm(np.fft.irfft(spec / divide(freqs), n).astype(np.float32))


def pink_noise(rng: Generator, n: int, sr: int) -> np.ndarray:
    """1/f noise (spectral shaping of white noise)."""
    return _shaped_noise(rng, n, np.sqrt)


def brown_noise(rng: Generator, n: int, sr: int) -> np.ndarray:
    """1/f^2 noise (rumble: traffic, ventilation)."""
    return _shaped_noise(rng, n, lambda f: f)


def music(rng: Generator, n: int, sr: int) -> np.ndarray:
    """A sequence of random major/minor chords with harmonics and note envelopes."""
    t_note = rng.uniform(0.3, 0.6)
    note_len = max(1, int(t_note * sr))
    out = np.zeros(n, dtype=np.float32)
    t = np.arange(note_len) / sr
    env = np.exp(-3.0 * t / t_note).astype(np.float32)
    for start in range(0, n, note_len):
        root = 220.0 * 2 ** (rng.integers(0, 12) / 12)
        third = 4 if rng.random() < 0.5 else 3
        seg = np.zeros(note_len, dtype=np.float32)
        for semis in (0, third, 7):
            f = root * 2 ** (semis / 12)
            for h, amp in ((1, 1.0), (2, 0.4), (3, 0.2)):
                seg += amp * np.sin(2 * np.pi * f * h * t).astype(np.float32)
        seg *= env
        end = min(n, start + note_len)
        out[start:end] += seg[: end - start]
    return _rms_norm(out)


def beeping(rng: Generator, n: int, sr: int) -> np.ndarray:
    """Regular short sine beeps (an alarm or a reversing truck)."""
    f = rng.uniform(700, 2000)
    period = int(rng.uniform(0.4, 1.0) * sr)
    on = int(period * rng.uniform(0.3, 0.6))
    t = np.arange(n) / sr
    gate = ((np.arange(n) % period) < on).astype(np.float32)
    return _rms_norm(np.sin(2 * np.pi * f * t).astype(np.float32) * gate)


def siren(rng: Generator, n: int, sr: int) -> np.ndarray:
    """A tone sweeping up and down."""
    f0, f1 = rng.uniform(500, 800), rng.uniform(1000, 1600)
    rate = rng.uniform(0.3, 1.0)
    t = np.arange(n) / sr
    freq = f0 + (f1 - f0) * 0.5 * (1 - np.cos(2 * np.pi * rate * t))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return _rms_norm(np.sin(phase).astype(np.float32))


def knocking(rng: Generator, n: int, sr: int) -> np.ndarray:
    """Groups of damped low thumps."""
    out = np.zeros(n, dtype=np.float32)
    thump_len = int(0.08 * sr)
    t = np.arange(thump_len) / sr
    thump = (np.sin(2 * np.pi * rng.uniform(80, 200) * t) * np.exp(-t / 0.015)).astype(np.float32)
    pos = int(rng.uniform(0.0, 0.3) * sr)
    while pos + thump_len < n:
        for _ in range(int(rng.integers(2, 5))):
            if pos + thump_len >= n:
                break
            out[pos:pos + thump_len] += thump
            pos += int(rng.uniform(0.15, 0.25) * sr)
        pos += int(rng.uniform(0.8, 1.6) * sr)
    return _rms_norm(out)


def hum(rng: Generator, n: int, sr: int) -> np.ndarray:
    """Mains hum: 50 or 60 Hz with odd harmonics."""
    f = 50.0 if rng.random() < 0.5 else 60.0
    t = np.arange(n) / sr
    x = sum((1.0 / k) * np.sin(2 * np.pi * f * k * t + rng.uniform(0, 6.28))
            for k in (1, 3, 5, 7))
    return _rms_norm(np.asarray(x, dtype=np.float32))


def applause(rng: Generator, n: int, sr: int) -> np.ndarray:
    """Many overlapping short noise bursts (claps)."""
    out = np.zeros(n, dtype=np.float32)
    clap_len = int(0.02 * sr)
    decay = np.exp(-np.arange(clap_len) / (0.004 * sr)).astype(np.float32)
    count = int(n / sr * rng.uniform(30, 60))
    for start in rng.integers(0, max(1, n - clap_len), size=count):
        out[start:start + clap_len] += rng.standard_normal(clap_len).astype(np.float32) * decay
    return _rms_norm(out)


EVENTS: dict[str, Callable[[Generator, int, int], np.ndarray]] = {
    "music": music,
    "beeping": beeping,
    "siren": siren,
    "knocking": knocking,
    "humming": hum,
    "applause": applause,
    "white noise": white_noise,
    "pink noise": pink_noise,
}
"""Event name -> generator ``(rng, num_samples, sample_rate) -> (N,)``."""


def make_event(name: str, rng: Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """Generate event ``name`` of ``num_samples`` samples, with 20 ms fades."""
    if name not in EVENTS:
        raise KeyError(f"unknown audio event '{name}' (known: {', '.join(EVENTS)})")
    x = EVENTS[name](rng, num_samples, sample_rate)
    return _fade(x.copy(), int(0.02 * sample_rate))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * noise`` with ``g`` chosen so that the speech-to-noise power ratio is
    ``snr_db`` (powers over the whole clip). Shapes ``(N,)``; ``noise`` is tiled/cut to N."""
    if noise.size < speech.size:
        noise = np.tile(noise, int(np.ceil(speech.size / max(1, noise.size))))
    noise = noise[: speech.size]
    p_s = float(np.mean(speech.astype(np.float64) ** 2))
    p_n = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-12
    gain = np.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))
    return (speech + gain * noise).astype(np.float32)
