"""Acoustic augmentation (``data.augment``, ``minmo data augment``): each step does what it
says (measured on the output), the draws are seeded per clip and epoch, training applies it
and validation does not."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from minmo.audio.io import load_audio, save_audio
from minmo.config import AugmentConfig, ConfigError, DataConfig, TrainConfig
from minmo.data.augment import (NOISES, augment_wave, augments_task, band_response,
                                check_augment_config, clip_rng, room_impulse_response)
from minmo.data.dataset import ManifestDataset
from minmo.data.loader import build_loader

RATE = 16000
OFF = AugmentConfig(prob=1.0, reverb_prob=0.0, noise_prob=0.0, band_prob=0.0, gain_prob=0.0)


def _voice_like(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Harmonics of a wandering 120-220 Hz pitch with a syllable-rate envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 170 + 50 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.1 * x * envelope).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _t20(x: np.ndarray) -> float:
    """RT60 from the -5 to -25 dB slope of Schroeder's backward-integrated energy (T20)."""
    edc = np.cumsum(x[::-1] ** 2)[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    return 3 * (np.argmax(edc_db < -25) - np.argmax(edc_db < -5)) / RATE


def _band(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """``x`` band-passed (brick wall, zero-padded so that the filter's pre-ringing falls in
    the cut-off padding instead of wrapping onto the tail's end)."""
    n = 4 * x.size
    spectrum = np.fft.rfft(x, n)
    f = np.fft.rfftfreq(n, 1 / RATE)
    return np.fft.irfft(np.where((f >= low) & (f < high), spectrum, 0), n)[: x.size]


def test_room_impulse_response_has_the_asked_decay_and_direct_ratio():
    for rt60, drr in ((0.3, 0.0), (0.7, 9.0)):
        rir = room_impulse_response(np.random.default_rng(1), RATE, rt60, drr)
        assert rir[0] == 1.0
        tail = rir[1:]
        assert 10 * np.log10(1.0 / np.sum(tail ** 2)) == pytest.approx(drr, abs=1e-6)
        # Measured per band, as rooms are: the full RT60 below 500 Hz, about half at 8 kHz.
        low, high = _t20(_band(tail, 50, 400)), _t20(_band(tail, 7000, 8000))
        assert low == pytest.approx(rt60, rel=0.25), (rt60, low)
        assert high == pytest.approx(0.55 * rt60, rel=0.25), (rt60, high)


def test_noise_step_mixes_at_the_drawn_snr_and_keeps_the_level():
    clean = _voice_like(3.0)
    cfg = replace(OFF, noise_prob=1.0, noises=["white"], snr_db=[10.0, 10.0])
    out, acoustics = augment_wave(clean, RATE, cfg, np.random.default_rng(3))
    assert acoustics.noise == "white" and acoustics.snr_db == 10.0
    assert acoustics.rt60 is None and acoustics.band_hz is None and acoustics.gain_db is None
    assert _rms(out) == pytest.approx(_rms(clean), rel=1e-3)
    a = float(np.dot(out, clean) / np.dot(clean, clean))  # out = a * (clean + noise)
    residual = out - a * clean
    snr = 10 * np.log10(np.sum((a * clean) ** 2) / np.sum(residual ** 2))
    assert snr == pytest.approx(10.0, abs=0.3)


@pytest.mark.parametrize("name", sorted(NOISES))
def test_every_noise_kind_works(name):
    cfg = replace(OFF, noise_prob=1.0, noises=[name], snr_db=[0.0, 0.0])
    out, acoustics = augment_wave(_voice_like(1.0), RATE, cfg, np.random.default_rng(0))
    assert acoustics.noise == name and np.isfinite(out).all()
    assert not np.allclose(out, _voice_like(1.0), atol=1e-3)


def test_band_step_cuts_outside_its_corners():
    white = np.random.default_rng(0).standard_normal(RATE * 2).astype(np.float32) * 0.1
    cfg = replace(OFF, band_prob=1.0)
    out, acoustics = augment_wave(white, RATE, cfg, np.random.default_rng(5))
    low, high = acoustics.band_hz
    assert 50 <= low <= 300 and 3400 <= high <= 0.95 * RATE / 2
    spectrum = np.abs(np.fft.rfft(out)) ** 2
    freqs = np.fft.rfftfreq(out.size, 1 / RATE)
    mid = spectrum[(freqs > 1000) & (freqs < 2000)].mean()
    bass = spectrum[(freqs > 10) & (freqs < 25)].mean()
    assert 10 * np.log10(mid / bass) > 10  # at least one order of roll-off from >= 50 Hz
    f = np.array([low, high])
    np.testing.assert_allclose(band_response(f, low, high, order=4),
                               [1 / np.sqrt(2), 1 / np.sqrt(2)], rtol=0.02)


def test_speed_moves_tempo_and_pitch_together():
    t = np.arange(RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    out, acoustics = augment_wave(tone, RATE, replace(OFF, speed=[1.1]),
                                  np.random.default_rng(0))
    assert acoustics.speed == 1.1
    assert out.size == pytest.approx(RATE / 1.1, abs=2)
    peak = np.fft.rfftfreq(out.size, 1 / RATE)[np.argmax(np.abs(np.fft.rfft(out)))]
    assert peak == pytest.approx(220.0, abs=2.0)


def test_gain_and_clipping():
    clean = _voice_like(1.0)
    cfg = replace(OFF, gain_prob=1.0, gain_db=[-6.0, -6.0])
    out, acoustics = augment_wave(clean, RATE, cfg, np.random.default_rng(0))
    assert acoustics.gain_db == -6.0
    assert _rms(out) == pytest.approx(_rms(clean) * 10 ** (-6 / 20), rel=1e-3)
    loud, _ = augment_wave(clean, RATE, replace(cfg, gain_db=[40.0, 40.0]),
                           np.random.default_rng(0))
    assert np.abs(loud).max() <= 1.0


def test_draws_are_fixed_by_seed_row_and_epoch():
    clean = _voice_like(1.5)
    cfg = AugmentConfig(prob=1.0, speed=[0.9, 1.0, 1.1], reverb_prob=0.5, noise_prob=0.5,
                        band_prob=0.5, gain_prob=0.5)

    def run(seed, row, epoch):
        return augment_wave(clean, RATE, cfg, clip_rng(seed, row, epoch))

    a, acoustics = run(7, "utt-1", 0)
    b, _ = run(7, "utt-1", 0)
    np.testing.assert_array_equal(a, b)
    others = [run(*key) for key in ((7, "utt-1", 1), (7, "utt-2", 0), (8, "utt-1", 0))]
    for wave, other in others:
        assert wave.shape != a.shape or not np.array_equal(wave, a)
    # Over many clips every step happens about as often as its probability says.
    draws = [augment_wave(clean, RATE, cfg, clip_rng(0, f"u{i}", 0))[1] for i in range(200)]
    assert 0.35 < np.mean([d.rt60 is not None for d in draws]) < 0.65
    assert 0.35 < np.mean([d.noise is not None for d in draws]) < 0.65
    assert {d.speed for d in draws} == {None, 0.9, 1.1}
    assert acoustics.describe() != "clean"


def test_prob_zero_and_skipped_tasks_leave_audio_alone():
    clean = _voice_like(1.0)
    out, acoustics = augment_wave(clean, RATE, AugmentConfig(prob=0.0), np.random.default_rng(0))
    np.testing.assert_array_equal(out, clean)
    assert acoustics.describe() == "clean"
    on = AugmentConfig(prob=0.5)
    assert augments_task(on, "asr") and augments_task(on, "s2t_chat")
    assert not augments_task(on, "aed") and not augments_task(on, "duplex")
    assert not augments_task(AugmentConfig(), "asr")
    assert augments_task(replace(on, tasks=["ser"]), "ser")
    assert not augments_task(replace(on, tasks=["ser"]), "asr")


@pytest.mark.parametrize("field,value,match", [
    ("prob", 1.5, "a probability"),
    ("rt60", [0.8, 0.2], r"\[low, high\]"),
    ("rt60", [0.0, 0.5], "above 0"),
    ("speed", [], "factors above 0"),
    ("noises", ["rain"], "unknown"),
    ("tasks", ["asr", "ars"], r"unknown \['ars'\]"),
    ("tasks", ["duplex"], "cannot be augmented"),
])
def test_bad_settings_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        check_augment_config(replace(AugmentConfig(prob=1.0), **{field: value}))


@pytest.fixture()
def manifest(tmp_path) -> Path:
    rows = []
    for i in range(4):
        save_audio(tmp_path / "wav" / f"u{i}.wav", _voice_like(1.0, seed=i), RATE)
        rows.append({"id": f"u{i}", "task": "asr", "audio": f"wav/u{i}.wav", "text": f"row {i}"})
    save_audio(tmp_path / "wav" / "e.wav", _voice_like(1.0, seed=9), RATE)
    rows.append({"id": "e0", "task": "aed", "audio": "wav/e.wav",
                 "target": "Speech with a siren.", "events": ["siren"]})
    rows.append({"id": "t0", "task": "tts", "text": "read me", "speech_tokens": [1, 2, 3]})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dataset_augments_training_rows_per_epoch(manifest):
    on = AugmentConfig(prob=1.0, reverb_prob=1.0, noise_prob=1.0)
    clean = ManifestDataset([manifest])
    aug = ManifestDataset([manifest], augment=on, augment_seed=3)
    again = ManifestDataset([manifest], augment=on, augment_seed=3)
    index = {r.id: i for i, r in enumerate(clean.rows)}
    u0 = index["u0"]
    assert not np.allclose(aug[(u0, 0)].wave, clean[(u0, 0)].wave, atol=1e-3)
    np.testing.assert_array_equal(aug[(u0, 0)].wave, again[(u0, 0)].wave)
    assert not np.array_equal(aug[(u0, 0)].wave, aug[(u0, 1)].wave)
    np.testing.assert_array_equal(aug[(index["e0"], 0)].wave, clean[(index["e0"], 0)].wave)
    assert aug[(index["t0"], 0)].wave is None


def test_loader_augments_training_but_never_validation(manifest):
    cfg = DataConfig(train=[str(manifest)], batch_size=8, shuffle=False,
                     augment=AugmentConfig(prob=1.0))
    assert build_loader(cfg, cfg.train, None, None, train=True).dataset.augment is cfg.augment
    assert build_loader(cfg, cfg.train, None, None, train=False).dataset.augment is None
    bad = replace(cfg, augment=AugmentConfig(prob=2.0))
    with pytest.raises(ValueError, match="data.augment.prob"):
        build_loader(bad, bad.train, None, None, train=True)


def test_speech_stages_refuse_augmentation(manifest):
    from minmo.training.speech_stages import _train_data

    build = _train_data(lambda *a: pytest.fail("the data should not be read"))
    cfg = TrainConfig(stage="flow", data=DataConfig(train=[str(manifest)],
                                                    augment=AugmentConfig(prob=0.5)))
    with pytest.raises(ConfigError, match="clean audio"):
        build(cfg, SimpleNamespace(), 0, 1)


def test_cli_writes_augmented_copies(manifest, tmp_path):
    def run(out):
        cmd = [sys.executable, "-m", "minmo.cli.main", "data", "augment", str(manifest),
               "--out", str(out), "--seed", "4", "--speed", "0.9,1.1", "--no-progress"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "wrote 6 rows" in done.stdout
        return [json.loads(line) for line in (out / "m.jsonl").read_text().splitlines()]

    rows = run(tmp_path / "a")
    by_id = {r["id"]: r for r in rows}
    assert by_id["u0"]["acoustics"].startswith("speed ")
    assert "acoustics" not in by_id["e0"] and "acoustics" not in by_id["t0"]
    wave = load_audio(tmp_path / "a" / by_id["u0"]["audio"], RATE)
    assert wave.size / RATE == pytest.approx(by_id["u0"]["duration"], abs=1e-3)
    assert by_id["u0"]["duration"] in (pytest.approx(1 / 0.9, abs=2e-3),
                                       pytest.approx(1 / 1.1, abs=2e-3))
    again = run(tmp_path / "b")
    assert rows[0]["acoustics"] == again[0]["acoustics"]
    np.testing.assert_array_equal(wave, load_audio(tmp_path / "b" / again[0]["audio"], RATE))
