"""24 kHz log-mel (CosyVoice 2 settings) and the YIN F0 reference used by the vocoder."""

import math

import numpy as np
import pytest
import torch

from minmo.audio.mel import COSYVOICE_MEL, MelSettings, estimate_f0, mel_filterbank, mel_spectrogram, num_mel_frames


def _tone(freq: float, seconds: float = 1.0, sr: int = 24000) -> torch.Tensor:
    t = torch.arange(int(sr * seconds)) / sr
    return 0.5 * torch.sin(2 * math.pi * freq * t)


def test_frames_and_shapes():
    assert COSYVOICE_MEL.hop_length == 480 and COSYVOICE_MEL.n_fft == 1920 and COSYVOICE_MEL.fmax == 8000
    wave = torch.randn(2, 24000 + 100) * 0.1
    mel = mel_spectrogram(wave)
    assert mel.shape == (2, 80, 50) == (2, 80, num_mel_frames(24100))
    assert mel_spectrogram(wave[0]).shape == (80, 50)
    assert mel_spectrogram(torch.zeros(100)).shape == (80, 0)
    # silence hits the log floor exactly
    assert torch.allclose(mel_spectrogram(torch.zeros(4800)), torch.full((80, 10), math.log(1e-5)))


def test_filterbank_is_slaney_shaped():
    fb = mel_filterbank(24000, 1920, 80, 0.0, 8000.0)
    assert fb.shape == (80, 961) and (fb >= 0).all()
    freqs = np.linspace(0, 12000, 961)
    peaks = freqs[fb.argmax(axis=1)]
    assert np.all(np.diff(peaks) > 0) and peaks[-1] < 8000
    assert fb[:, freqs > 8000].sum() == 0
    # linear below 1 kHz (equal peak gaps up to the 12.5 Hz bin size), log above (growing gaps)
    low = np.diff(peaks[peaks < 900])
    assert low.max() - low.min() <= 12.5 + 1e-9
    assert np.diff(peaks)[-1] > 4 * low.mean()
    # Slaney normalisation: filter area (in Hz) is ~1 for every band
    area = fb.sum(axis=1) * (freqs[1] - freqs[0])
    assert np.allclose(area[5:], 1.0, atol=0.1)


def test_tone_lands_in_its_band():
    fb = mel_filterbank(24000, 1920, 80, 0.0, 8000.0)
    for freq in (300.0, 1000.0, 4000.0):
        mel = mel_spectrogram(_tone(freq))
        band = int(mel[:, 10:-10].mean(dim=1).argmax())
        assert abs(np.linspace(0, 12000, 961)[fb[band].argmax()] - freq) < 0.1 * freq + 30


def test_fmax_none_uses_full_band():
    s = MelSettings(fmax=None)
    hi = mel_spectrogram(_tone(10000.0), s)
    lo = mel_spectrogram(_tone(10000.0))
    assert hi.max() > lo.max() + 3  # a 10 kHz tone is visible only with the full band


@pytest.mark.parametrize("freq", [90.0, 180.0, 400.0])
def test_f0_of_harmonic_tone(freq):
    t = torch.arange(24000) / 24000
    wave = sum(a * torch.sin(2 * math.pi * k * freq * t + k) for k, a in ((1, 0.5), (2, 0.3), (3, 0.2)))
    f0 = estimate_f0(wave)
    assert f0.shape == (50,)
    assert torch.all((f0[2:-2] - freq).abs() < 0.01 * freq)


def test_f0_unvoiced_for_noise_and_silence():
    torch.manual_seed(0)
    assert (estimate_f0(torch.randn(24000) * 0.1) == 0).float().mean() > 0.9
    assert (estimate_f0(torch.zeros(2, 24000)) == 0).all()


def test_yin_finds_the_period_and_refuses_frames_too_short():
    """The one YIN both F0 estimates use: a 100-sample period is found to a fraction of a
    sample; frames shorter than window + tau_max are refused, not read past their end."""
    from minmo.audio.pitch import yin

    n = torch.arange(800, dtype=torch.float64)
    frames = torch.stack([torch.sin(2 * torch.pi * n / 100.0), torch.zeros(800, dtype=torch.float64)])
    found = yin(frames, window=400, tau_min=20, tau_max=400)
    assert found.dipped.tolist() == [True, False]
    assert abs(found.period[0].item() - 100.0) < 0.05
    with pytest.raises(ValueError, match="window \\+ tau_max"):
        yin(frames[:, :700], window=400, tau_min=20, tau_max=400)
