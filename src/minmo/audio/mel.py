"""Log-mel spectrogram of 24 kHz speech for the flow-matching decoder and the HiFT vocoder.

Settings follow CosyVoice 2's feature extractor: n_fft 1920, hop 480 (50 frames/s), window
1920 (Hann), 80 mel bins between 0 and 8000 Hz (Slaney mel scale with Slaney area
normalisation, as librosa's default filterbank), no centring (the waveform is reflect-padded
by ``(n_fft - hop) / 2`` on both sides instead), magnitude spectrum, natural log with the
magnitude clamped at 1e-5. A waveform of ``N`` samples gives ``N // hop`` frames.

Everything here is differentiable torch, so the vocoder's mel-L1 loss uses the same code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from minmo.audio.pitch import yin


@dataclass(frozen=True)
class MelSettings:
    """Parameters of the log-mel transform. ``fmax=None`` means ``sample_rate / 2``."""

    sample_rate: int = 24000
    n_fft: int = 1920
    hop_length: int = 480
    win_length: int = 1920
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0
    log_floor: float = 1e-5


COSYVOICE_MEL = MelSettings()
"""The flow/vocoder feature: 24 kHz, 80 bins, 0-8 kHz, 50 frames per second."""


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3.0
    mels = freq / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    above = freq >= min_log_hz
    mels = np.where(above, min_log_mel + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep, mels)
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hz_to_mel`."""
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3.0
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    above = mels >= min_log_mel
    return np.where(above, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


@functools.lru_cache(maxsize=16)
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> np.ndarray:
    """Triangular Slaney-normalised mel filters (same definition as librosa's default).

    Returns:
        float64 array ``(n_mels, n_fft // 2 + 1)``.
    """
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f"mel range must satisfy 0 <= fmin < fmax <= sr/2, got {fmin}, {fmax}")
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2:] - mel_points[:-2]))[:, None]
    return weights


def _basis(settings: MelSettings, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    fb = mel_filterbank(settings.sample_rate, settings.n_fft, settings.n_mels, settings.fmin, settings.fmax)
    basis = torch.as_tensor(fb, dtype=dtype, device=device)
    window = torch.hann_window(settings.win_length, device=device, dtype=dtype)
    return basis, window


def num_mel_frames(num_samples: int, settings: MelSettings = COSYVOICE_MEL) -> int:
    """Frames :func:`mel_spectrogram` gives for ``num_samples`` samples."""
    return max(num_samples, 0) // settings.hop_length


def mel_spectrogram(wave: torch.Tensor, settings: MelSettings = COSYVOICE_MEL) -> torch.Tensor:
    """Log-mel spectrogram.

    Args:
        wave: ``(N,)`` or ``(B, N)`` float waveform at ``settings.sample_rate``, in [-1, 1].
        settings: transform parameters (default: CosyVoice 2's 24 kHz / 80-bin feature).

    Returns:
        ``(n_mels, T)`` or ``(B, n_mels, T)`` log-mel, ``T = N // hop_length``.
    """
    squeeze = wave.dim() == 1
    if squeeze:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2:
        raise ValueError(f"mel_spectrogram expects (N,) or (B, N) audio, got shape {tuple(wave.shape)}")
    hop = settings.hop_length
    if wave.shape[-1] < hop:
        out = wave.new_zeros(wave.shape[0], settings.n_mels, 0)
        return out[0] if squeeze else out
    dtype = wave.dtype if wave.dtype in (torch.float32, torch.float64) else torch.float32
    wave = wave.to(dtype)
    basis, window = _basis(settings, wave.device, dtype)
    pad = (settings.n_fft - hop) // 2
    frames = wave.shape[-1] // hop
    # reflect needs pad < length; very short inputs fall back to zero padding
    mode = "reflect" if wave.shape[-1] > pad else "constant"
    padded = F.pad(wave.unsqueeze(1), (pad, pad), mode=mode).squeeze(1)
    spec = torch.stft(
        padded, settings.n_fft, hop_length=hop, win_length=settings.win_length, window=window,
        center=False, normalized=False, onesided=True, return_complex=True,
    )
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    mel = torch.matmul(basis, magnitude)[..., :frames]
    mel = torch.log(torch.clamp(mel, min=settings.log_floor))
    return mel[0] if squeeze else mel


def estimate_f0(
    wave: torch.Tensor,
    settings: MelSettings = COSYVOICE_MEL,
    fmin: float = 60.0,
    fmax: float = 500.0,
    threshold: float = 0.15,
    silence_rms: float = 1e-3,
) -> torch.Tensor:
    """Reference F0 per mel frame (YIN: cumulative-mean-normalised difference), for the
    vocoder's F0 loss. Frames line up with :func:`mel_spectrogram`'s.

    Args:
        wave: ``(N,)`` or ``(B, N)`` waveform at ``settings.sample_rate``.
        fmin / fmax: search range in Hz.
        threshold: YIN absolute threshold; frames with no dip below it are unvoiced.
        silence_rms: frames quieter than this are unvoiced.

    Returns:
        ``(T,)`` or ``(B, T)`` F0 in Hz, 0 where unvoiced; ``T = N // hop``.
    """
    squeeze = wave.dim() == 1
    if squeeze:
        wave = wave.unsqueeze(0)
    wave = wave.float()
    sr, hop, win = settings.sample_rate, settings.hop_length, settings.win_length
    frames = wave.shape[-1] // hop
    if frames == 0:
        out = wave.new_zeros(wave.shape[0], 0)
        return out[0] if squeeze else out
    pad = (win - hop) // 2
    mode = "reflect" if wave.shape[-1] > pad else "constant"
    x = F.pad(wave.unsqueeze(1), (pad, pad), mode=mode).squeeze(1)
    x = x.unfold(-1, win, hop)[:, :frames]  # (B, T, win)
    x = x - x.mean(dim=-1, keepdim=True)
    tau_min, tau_max = max(2, int(sr / fmax)), min(win // 2, int(sr / fmin))
    found = yin(x, win - tau_max, tau_min, tau_max, threshold)  # integration window: the rest
    voiced = found.dipped & (x.pow(2).mean(dim=-1).sqrt() > silence_rms)
    f0 = torch.where(voiced, sr / found.period, torch.zeros_like(found.period))
    return f0[0] if squeeze else f0
