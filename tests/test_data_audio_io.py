"""audio/io: reading windows and channels, mono mixdown, soxr resampling to 16 kHz."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from minmo.audio.io import (AudioError, audio_info, load_audio, load_audio_channels, resample,
                            save_audio)


def _sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_freq(wave: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.argmax(spec) * rate / wave.size)


@pytest.mark.parametrize("orig_rate", [44100, 8000])
def test_resample_to_16k_keeps_pitch_and_length(tmp_path, orig_rate):
    wave = _sine(440.0, orig_rate, 1.5)
    path = save_audio(tmp_path / f"s{orig_rate}.wav", wave, orig_rate, subtype="FLOAT")
    out = load_audio(path, 16000)
    assert out.dtype == np.float32
    assert abs(out.size - 24000) <= 2
    assert abs(_peak_freq(out, 16000) - 440.0) < 2.0
    # amplitude preserved away from the edges
    mid = out[2000:-2000]
    assert np.max(np.abs(mid)) == pytest.approx(0.5, abs=0.02)
    # same as resampling the array directly
    np.testing.assert_allclose(out, resample(wave, orig_rate, 16000), atol=1e-6)


def test_resample_removes_content_above_new_nyquist():
    rate = 44100
    wave = _sine(440.0, rate, 1.0) + _sine(12000.0, rate, 1.0)
    out = resample(wave, rate, 16000)
    spec = np.abs(np.fft.rfft(out))
    freqs = np.fft.rfftfreq(out.size, 1 / 16000)
    # 12 kHz is above 8 kHz Nyquist: must not fold back (would land at 4 kHz)
    alias = spec[(freqs > 3900) & (freqs < 4100)].max()
    assert alias < 0.01 * spec.max()


def test_window_channel_and_mixdown(tmp_path):
    rate = 16000
    left = np.linspace(-0.5, 0.5, rate * 2, dtype=np.float32)
    right = np.full(rate * 2, 0.25, dtype=np.float32)
    path = save_audio(tmp_path / "st.wav", np.stack([left, right]), rate, subtype="FLOAT")
    info = audio_info(path)
    assert (info.channels, info.sample_rate, info.frames) == (2, rate, 2 * rate)
    ch1 = load_audio(path, channel=1)
    np.testing.assert_allclose(ch1, right)
    mono = load_audio(path)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-7)
    win = load_audio(path, offset=0.5, duration=0.25, channel=0)
    np.testing.assert_allclose(win, left[8000:12000])
    both = load_audio_channels(path)
    assert both.shape == (2, 2 * rate)


def test_save_is_clipped_16bit(tmp_path):
    path = save_audio(tmp_path / "c.wav", np.array([2.0, -3.0, 0.5], np.float32), 16000)
    data, rate = sf.read(path, dtype="float32")
    assert sf.info(path).subtype == "PCM_16"
    assert data.max() <= 1.0 and data.min() >= -1.0
    assert data[2] == pytest.approx(0.5, abs=1e-4)


def test_clear_errors(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="unreadable"):
        load_audio(bad)
    path = save_audio(tmp_path / "m.wav", np.zeros(1600, np.float32), 16000)
    with pytest.raises(AudioError, match="channel 3"):
        load_audio(path, channel=3)
    with pytest.raises(AudioError, match="outside"):
        load_audio(path, offset=5.0)
