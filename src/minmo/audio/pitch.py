"""YIN pitch (de Cheveigné & Kawahara 2002) on frames of a waveform, in torch.

One implementation for both users: the vocoder's F0 target (:func:`minmo.audio.mel.estimate_f0`,
frames aligned with the mel frames) and the prosody judge of the evaluation
(:func:`minmo.eval.prosody.estimate_f0`, frames every 10 ms). Each frames the wave its own
way; this module finds the period in every frame.

For a frame ``x`` and lag ``tau`` the difference function over an integration window of
``window`` samples is ``d(tau) = sum_j (x_j - x_{j+tau})^2``, computed from cumulative
energies and one FFT cross-correlation. Its cumulative-mean-normalised form
``d'(tau) = d(tau) * tau / sum_{1..tau} d`` (``d'(0) = 1``) is searched in
``[tau_min, tau_max)`` for the first local minimum below ``threshold`` (YIN's absolute
threshold); a frame without one is unvoiced and reports its global minimum. The lag is refined
by a parabola through the minimum and its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class YinFrames:
    """Per-frame YIN results, each of the frames' leading shape ``(...)``.

    Attributes:
        period: refined period in samples (of the global minimum where not ``dipped``).
        dipped: the normalised difference dips below the threshold (YIN's voicing test).
        aperiodicity: the normalised difference at the chosen lag (0 = perfectly periodic).
    """

    period: torch.Tensor
    dipped: torch.Tensor
    aperiodicity: torch.Tensor


def yin(frames: torch.Tensor, window: int, tau_min: int, tau_max: int,
        threshold: float = 0.15) -> YinFrames:
    """YIN on ``frames`` ``(..., L)`` with ``L >= window + tau_max``.

    Args:
        frames: waveform frames; sums run in their dtype (float64 for exact figures).
        window: integration window in samples.
        tau_min, tau_max: lags searched, ``[tau_min, tau_max)`` (``2 <= tau_min < tau_max``).
        threshold: absolute threshold of the normalised difference.
    """
    if frames.shape[-1] < window + tau_max or not 2 <= tau_min < tau_max:
        raise ValueError(f"yin: frames of {frames.shape[-1]} samples, window {window}, "
                         f"lags [{tau_min}, {tau_max}): need 2 <= tau_min < tau_max and "
                         "frames of at least window + tau_max samples")
    n_fft = 1 << (frames.shape[-1] + window - 1).bit_length()
    head = torch.fft.rfft(frames[..., :window], n_fft)
    corr = torch.fft.irfft(torch.fft.rfft(frames, n_fft) * head.conj(), n_fft)[..., :tau_max + 1]
    energy = torch.cumsum(F.pad(frames.pow(2), (1, 0)), dim=-1)  # energy[i] = sum_{j<i} x_j^2
    taus = torch.arange(tau_max + 1, device=frames.device)
    shifted = energy[..., taus + window] - energy[..., taus]  # sum_j x_{j+tau}^2, j < window
    diff = (energy[..., window:window + 1] + shifted - 2.0 * corr).clamp(min=0.0)
    cumulative = torch.cumsum(diff[..., 1:], dim=-1)
    ones = torch.ones_like(diff[..., :1])
    normalised = torch.where(cumulative > 0, diff[..., 1:] * taus[1:] / cumulative.clamp(min=1e-30),
                             torch.ones_like(cumulative))
    cmnd = torch.cat([ones, normalised], dim=-1)  # (..., tau_max + 1)

    search = cmnd[..., tau_min:tau_max]
    bottom = (search < threshold) & (cmnd[..., tau_min + 1:tau_max + 1] >= search)
    dipped = bottom.any(dim=-1)
    best = torch.where(dipped, bottom.int().argmax(dim=-1), search.argmin(dim=-1)) + tau_min

    def at(lag: torch.Tensor) -> torch.Tensor:
        return torch.gather(cmnd, -1, lag.unsqueeze(-1)).squeeze(-1)

    left, mid, right = at((best - 1).clamp(min=1)), at(best), at((best + 1).clamp(max=tau_max))
    curvature = left - 2.0 * mid + right
    flat = curvature.abs() <= 1e-12
    shift = torch.where(flat, torch.zeros_like(mid),
                        0.5 * (left - right) / torch.where(flat, torch.ones_like(mid), curvature))
    return YinFrames(period=best + shift.clamp(-1.0, 1.0), dipped=dipped, aperiodicity=mid)
