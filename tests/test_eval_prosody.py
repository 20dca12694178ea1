"""TTS measurement helpers: syllables, speaking rate, YIN F0, instruction judgements."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minmo.eval import prosody

SR = 16000


def harmonic_tone(f0: float, seconds: float, sr: int = SR, harmonics: int = 6) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, harmonics + 1)) * 0.3


# Dictionary syllable counts of unambiguous words.
WORDS = {
    "cat": 1, "make": 1, "table": 2, "wanted": 2, "jumped": 1, "boxes": 2, "makes": 1,
    "piano": 3, "video": 3, "nation": 2, "beautiful": 3, "yesterday": 3, "computer": 3,
    "university": 5, "little": 2, "simple": 2, "apple": 2, "hello": 2, "water": 2,
    "family": 3, "different": 3, "communication": 5, "banana": 3, "tomato": 3, "time": 1,
    "elephant": 3, "garden": 2, "important": 3, "question": 2, "people": 2, "horses": 2,
}


def test_english_syllable_counter_accuracy() -> None:
    right = sum(prosody.count_syllables_english_word(w) == n for w, n in WORDS.items())
    assert right / len(WORDS) >= 0.9, {
        w: prosody.count_syllables_english_word(w) for w in WORDS
    }


def test_count_syllables_text() -> None:
    # "21" is normalised to "twenty one" (3 syllables)
    assert prosody.count_syllables("The cat has 21 apples.", "en") == 1 + 1 + 1 + 3 + 2
    assert prosody.count_syllables("今天天气很好", "zh") == 6
    assert prosody.count_syllables("你好 hello", "zh") == 4


def test_speech_span_trims_silence() -> None:
    wave = np.concatenate([np.zeros(SR // 2), harmonic_tone(150, 1.0), np.zeros(SR)])
    assert prosody.speech_span_seconds(wave, SR) == pytest.approx(1.0, abs=0.02)
    assert prosody.speech_span_seconds(np.zeros(SR), SR) == 0.0
    # 10 syllables over 1 s of speech
    rate = prosody.speaking_rate("elephant banana tomato one", wave, SR, "en")
    assert rate == pytest.approx(10.0, rel=0.03)


@pytest.mark.parametrize("f0", [70.0, 110.0, 180.0, 260.0, 420.0])
def test_yin_recovers_f0_of_harmonic_tone(f0: float) -> None:
    wave = np.concatenate([np.zeros(SR // 4), harmonic_tone(f0, 1.0)])
    track = prosody.estimate_f0(wave, SR)
    assert abs(track.median() - f0) / f0 < 0.005
    # silence frames are unvoiced; about 1 s of 1.25 s is voiced
    assert 0.7 < track.voiced.mean() < 0.85
    assert not track.voiced[:10].any()


def test_yin_on_24khz_and_noise() -> None:
    sr = 24000
    assert prosody.estimate_f0(harmonic_tone(200.0, 0.5, sr), sr).median() == pytest.approx(200.0, rel=0.005)
    noise = np.random.default_rng(0).standard_normal(SR)
    assert prosody.estimate_f0(noise, SR).voiced.mean() < 0.05
    assert math.isnan(prosody.estimate_f0(np.zeros(SR), SR).median())


def test_yin_follows_a_pitch_change() -> None:
    wave = np.concatenate([harmonic_tone(120.0, 0.5), harmonic_tone(240.0, 0.5)])
    track = prosody.estimate_f0(wave, SR)
    first = np.nanmedian(track.f0[track.times < 0.4])
    second = np.nanmedian(track.f0[track.times > 0.55])
    assert first == pytest.approx(120.0, rel=0.01)
    assert second == pytest.approx(240.0, rel=0.01)


def test_instruction_judgements() -> None:
    assert prosody.judge_speed(5.5, 5.0, "fast")  # exactly +10 %
    assert not prosody.judge_speed(5.4, 5.0, "fast")
    assert prosody.judge_speed(4.5, 5.0, "slow")
    assert prosody.judge_speed(5.2, 5.0, "normal")
    assert not prosody.judge_speed(float("nan"), 5.0, "fast")
    up_one_semitone = 200.0 * 2 ** (1 / 12)
    assert prosody.judge_pitch(up_one_semitone + 1e-6, 200.0, "high")
    assert not prosody.judge_pitch(205.0, 200.0, "high")
    assert prosody.judge_pitch(180.0, 200.0, "low")
    assert prosody.judge_pitch(201.0, 200.0, "normal")
    with pytest.raises(ValueError, match="unknown request"):
        prosody.judge_pitch(200.0, 200.0, "loud")
    assert prosody.semitone_difference(400.0, 200.0) == pytest.approx(12.0)


def test_judging_synthetic_renderings() -> None:
    neutral = harmonic_tone(150.0, 1.0)
    high = harmonic_tone(180.0, 1.0)
    f_neutral = prosody.estimate_f0(neutral, SR).median()
    f_high = prosody.estimate_f0(high, SR).median()
    assert prosody.judge_pitch(f_high, f_neutral, "high")
    assert not prosody.judge_pitch(f_high, f_neutral, "low")
    text = "elephant banana tomato one"
    fast = harmonic_tone(150.0, 0.8)
    assert prosody.judge_speed(
        prosody.speaking_rate(text, fast, SR), prosody.speaking_rate(text, neutral, SR), "fast"
    )


def test_parse_instruction() -> None:
    assert prosody.parse_instruction("Speak quickly in a deep voice") == {"speed": "fast", "pitch": "low"}
    assert prosody.parse_instruction("Please talk slowly.") == {"speed": "slow"}
    assert prosody.parse_instruction("用高音说") == {"pitch": "high"}
    assert prosody.parse_instruction("Say it happily") == {}
