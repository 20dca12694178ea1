"""Waveform input/output: read any soundfile-readable file as float32 at a target rate.

Reading picks a time window (``offset``/``duration`` in seconds) without decoding the whole
file, mixes down to mono (or selects one channel), and resamples with soxr. Writing clips to
[-1, 1] and stores 16-bit PCM WAV (or float, on request).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioError(ValueError):
    """An audio file cannot be read as asked. The message names the file and the reason."""


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file."""

    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / float(self.sample_rate)


def audio_info(path: str | Path) -> AudioInfo:
    """Read the header of ``path`` (no samples decoded).

    Raises:
        AudioError: the file is missing or not a readable audio file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises RuntimeError/LibsndfileError
        raise AudioError(f"{path}: unreadable audio ({exc})") from None
    return AudioInfo(sample_rate=int(info.samplerate), channels=int(info.channels),
                     frames=int(info.frames))


def resample(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample with soxr (high quality).

    Args:
        wave: ``(N,)`` or ``(N, C)`` float array.
        orig_rate: rate of ``wave`` in Hz.
        target_rate: wanted rate in Hz.

    Returns:
        float32 array ``(M,)`` or ``(M, C)`` with ``M ~= N * target_rate / orig_rate``.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if orig_rate == target_rate or wave.shape[0] == 0:
        return wave
    return soxr.resample(wave, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(
    path: str | Path,
    sample_rate: int | None = 16000,
    offset: float = 0.0,
    duration: float | None = None,
    channel: int | None = None,
) -> np.ndarray:
    """Load (a window of) an audio file as mono float32.

    Args:
        path: any file soundfile reads (WAV, FLAC, OGG, MP3, ...).
        sample_rate: output rate; ``None`` keeps the file's rate.
        offset: start of the window in seconds.
        duration: window length in seconds; ``None`` reads to the end.
        channel: pick this channel (0-based); ``None`` averages all channels.

    Returns:
        ``(N,)`` float32 waveform in [-1, 1] at ``sample_rate``.

    Raises:
        AudioError: missing/unreadable file, channel out of range, or a window outside
            the file.
    """
    info = audio_info(path)
    start = int(round(offset * info.sample_rate))
    if offset < 0 or (start > info.frames):
        raise AudioError(f"{path}: offset {offset:.3f}s lies outside the file "
                         f"({info.duration:.3f}s long)")
    frames = -1 if duration is None else int(round(duration * info.sample_rate))
    if duration is not None and duration < 0:
        raise AudioError(f"{path}: negative duration {duration}")
    if channel is not None and not 0 <= channel < info.channels:
        raise AudioError(f"{path}: channel {channel} asked, file has {info.channels} channel(s)")
    try:
        data, _ = sf.read(str(path), start=start, frames=frames, dtype="float32",
                          always_2d=True)
    except Exception as exc:
        raise AudioError(f"{path}: unreadable audio ({exc})") from None
    wave = data[:, channel] if channel is not None else data.mean(axis=1)
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if sample_rate is not None:
        wave = resample(wave, info.sample_rate, sample_rate)
    return wave


def load_audio_channels(path: str | Path, sample_rate: int | None = 16000) -> np.ndarray:
    """Load every channel of a file.

    Returns:
        ``(C, N)`` float32 array at ``sample_rate``.
    """
    info = audio_info(path)
    try:
        data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"{path}: unreadable audio ({exc})") from None
    if sample_rate is not None:
        data = resample(data, info.sample_rate, sample_rate)
        if data.ndim == 1:
            data = data[:, None]
    return np.ascontiguousarray(data.T, dtype=np.float32)


def save_audio(
    path: str | Path, wave: np.ndarray, sample_rate: int = 16000, subtype: str = "PCM_16"
) -> Path:
    """Write a waveform; parents are created, samples are clipped to [-1, 1].

    Args:
        path: output file; the extension picks the format (``.wav``, ``.flac``, ...).
        wave: ``(N,)`` mono or ``(C, N)`` multi-channel float array (C <= 8).
        sample_rate: rate in Hz.
        subtype: soundfile subtype, ``PCM_16`` (default) or ``FLOAT``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(wave, dtype=np.float32)
    if data.ndim == 2:
        if data.shape[0] > 8:
            raise AudioError(f"{path}: save_audio expects (C, N) with C <= 8, got {data.shape}")
        data = data.T
    elif data.ndim != 1:
        raise AudioError(f"{path}: save_audio expects (N,) or (C, N), got {data.shape}")
    sf.write(str(path), np.clip(data, -1.0, 1.0), sample_rate, subtype=subtype)
    return path
