"""Measurements on generated speech for the TTS round trip and instruction-following TTS.

* Speaking rate: syllables per second, syllables counted from the transcript (the text the
  speech was asked to say), seconds from the audio with leading and trailing silence trimmed.
* F0: YIN (de Cheveigné & Kawahara 2002, :func:`minmo.audio.pitch.yin`) on 10 ms frames.
  Only voiced frames count.
* Instruction following: a generated utterance obeys "fast"/"slow" when its speaking rate is at
  least ``margin`` (default 10 %) above/below the same speaker's neutral rendering of the text,
  and "high"/"low" pitch when its median F0 is at least ``semitones`` (default 1) above/below
  the neutral median F0.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import torch

from minmo.audio.pitch import yin
from minmo.eval.normalize import canonical_language, normalize_english

_VOWEL_GROUP = re.compile(r"[aeiouy]+")
_HIATUS = re.compile(r"(?<![tsc])i[aou]|eo$|ua|uo")  # two vowels that are two syllables


def count_syllables_english_word(word: str) -> int:
    """Estimate the syllables of one English word from its spelling.

    Rules: count groups of vowel letters (a e i o u y); a final silent "e" does not count
    ("make") unless it is the "-le" of "table"; a final "-ed" counts only after t/d
    ("wanted" but not "jumped"); a final "-es" counts only after s, x, z, ch, sh, ce, ge
    ("boxes", "tables" but not "makes"); "ia", "io", "iu" (not after t/s/c: "nation"), "ua", "uo" and a
    final "eo" are two syllables ("piano", "video"). The count is an estimate (the speed
    judgement compares two renderings of the same text, so its errors cancel there). Every word with a letter has at least one.
    """
    w = "".join(ch for ch in word.lower() if "a" <= ch <= "z")
    if not w:
        return 0
    count = len(_VOWEL_GROUP.findall(w))
    if len(w) > 2 and w.endswith("e") and w[-2] not in "aeiouy":
        if not (w.endswith("le") and len(w) > 3 and w[-3] not in "aeiouy"):
            count -= 1
    elif len(w) > 3 and w.endswith("ed") and w[-3] not in "td" and w[-3] not in "aeiouy":
        count -= 1
    elif len(w) > 3 and w.endswith("es") and w[-3] not in "aeiouy":
        syllabic_le = w.endswith("les") and len(w) > 4 and w[-4] not in "aeiouy"
        if not (w[-3] in "sxz" or syllabic_le or w.endswith(("ches", "shes", "ces", "ges"))):
            count -= 1
    count += len(_HIATUS.findall(w))
    return max(count, 1)


def _is_han(ch: str) -> bool:
    return "CJK UNIFIED IDEOGRAPH" in unicodedata.name(ch, "")


def count_syllables(text: str, language: str | None = "en") -> int:
    """Syllables in ``text``.

    English: the text is normalised (digits spelled out) and every word counted with
    :func:`count_syllables_english_word`. Chinese: one syllable per Han character (Latin words
    inside are counted as English). Other languages: vowel-letter groups per word.
    """
    lang = canonical_language(language)
    if lang in ("zh", "yue"):
        han = sum(1 for ch in text if _is_han(ch))
        latin = " ".join(re.findall(r"[A-Za-z']+", text))
        return han + sum(count_syllables_english_word(w) for w in latin.split())
    if lang in ("en", ""):
        return sum(count_syllables_english_word(w) for w in normalize_english(text).split())
    words = re.findall(r"\w+", unicodedata.normalize("NFKD", text.lower()))
    return sum(max(1, len(re.findall(r"[aeiouy]+", w))) for w in words if w)


def speech_span_seconds(
    wave: np.ndarray, sample_rate: int, silence_db: float = -40.0, frame_s: float = 0.02
) -> float:
    """Duration of ``wave`` (shape ``(T,)``) between the first and last non-silent frame.

    A frame is silent when its RMS is more than ``silence_db`` below the loudest frame's.
    Returns 0.0 for an all-silent or empty waveform.
    """
    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    hop = max(1, int(round(frame_s * sample_rate)))
    n = len(x) // hop
    if n == 0:
        return 0.0
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))
    peak = float(rms.max())
    if peak <= 1e-8:
        return 0.0
    loud = np.nonzero(rms > peak * 10.0 ** (silence_db / 20.0))[0]
    return float((loud[-1] - loud[0] + 1) * hop / sample_rate)


def speaking_rate(text: str, wave: np.ndarray, sample_rate: int, language: str = "en") -> float:
    """Syllables per second: syllables of ``text`` over the trimmed speech span of ``wave``."""
    span = speech_span_seconds(wave, sample_rate)
    if span <= 0.0:
        return float("nan")
    return count_syllables(text, language) / span


@dataclass
class F0Track:
    """Frame-wise F0.

    Attributes:
        times: frame start times in seconds, shape ``(F,)``.
        f0: F0 in Hz, shape ``(F,)``; NaN where the frame is unvoiced.
        aperiodicity: minimum of the normalised difference function, shape ``(F,)``
            (0 = perfectly periodic).
    """

    times: np.ndarray
    f0: np.ndarray
    aperiodicity: np.ndarray

    @property
    def voiced(self) -> np.ndarray:
        """Boolean mask of voiced frames, shape ``(F,)``."""
        return np.isfinite(self.f0)

    def median(self) -> float:
        """Median F0 of voiced frames; NaN when no frame is voiced."""
        v = self.f0[self.voiced]
        return float(np.median(v)) if v.size else float("nan")


def estimate_f0(
    wave: np.ndarray,
    sample_rate: int,
    fmin: float = 60.0,
    fmax: float = 500.0,
    hop_s: float = 0.01,
    threshold: float = 0.15,
    silence_db: float = -40.0,
) -> F0Track:
    """YIN F0 estimate.

    Frames start every ``hop_s`` seconds and span ``2 * ceil(sr / fmin)`` samples (the
    integration window equals the longest period searched). A frame is voiced when its
    normalised difference dips below ``threshold`` at some lag in ``[sr/fmax, sr/fmin]`` and
    its RMS is within ``silence_db`` of the loudest frame's.

    Args:
        wave: mono waveform, shape ``(T,)``.
        sample_rate: Hz.
        fmin, fmax: search range in Hz.
        hop_s: frame hop in seconds.
        threshold: YIN absolute threshold.
        silence_db: frames quieter than this relative to the loudest are unvoiced.

    Returns:
        :class:`F0Track` with ``F`` frames.
    """
    x = torch.from_numpy(np.asarray(wave, dtype=np.float64).reshape(-1))
    tau_min = max(2, int(math.floor(sample_rate / fmax)))
    tau_max = int(math.ceil(sample_rate / fmin))
    window = tau_max
    frame_len = window + tau_max + 1
    hop = max(1, int(round(hop_s * sample_rate)))
    if len(x) < frame_len:
        x = torch.nn.functional.pad(x, (0, frame_len - len(x)))
    frames = x.unfold(0, frame_len, hop)  # (F, frame_len)
    found = yin(frames, window, tau_min, tau_max, threshold)
    rms = frames[:, :window].pow(2).mean(dim=1).sqrt().numpy()
    loud = rms > max(float(rms.max()) * 10.0 ** (silence_db / 20.0), 1e-6)
    voiced = found.dipped.numpy() & loud
    f0 = np.where(voiced, sample_rate / found.period.numpy(), np.nan)
    times = np.arange(frames.shape[0]) * hop / sample_rate
    return F0Track(times=times, f0=f0, aperiodicity=found.aperiodicity.numpy())


def semitone_difference(f0: float, reference_f0: float) -> float:
    """``12 * log2(f0 / reference_f0)``: positive when ``f0`` is higher."""
    return 12.0 * math.log2(f0 / reference_f0)


# ------------------------------------------------------------------------------------------
# Instruction-following judgements
# ------------------------------------------------------------------------------------------

_SPEED_WORDS = {
    "fast": ("fast", "faster", "quick", "quickly", "rapid", "rapidly", "hurried", "快"),
    "slow": ("slow", "slowly", "slower", "leisurely", "慢"),
}
_PITCH_WORDS = {
    "high": ("high", "higher", "high-pitched", "高"),
    "low": ("low", "lower", "deep", "deeper", "low-pitched", "低"),
}


def parse_instruction(instruction: str) -> dict[str, str]:
    """Find speed/pitch requests in a free-text instruction.

    Returns a dict with ``"speed"`` in {"fast", "slow"} and/or ``"pitch"`` in {"high", "low"}
    for every request found, e.g. ``"Speak quickly in a deep voice"`` ->
    ``{"speed": "fast", "pitch": "low"}``.
    """
    text = instruction.lower()
    tokens = set(re.findall(r"[a-z][a-z-]*", text))
    found: dict[str, str] = {}
    for attribute, table in (("speed", _SPEED_WORDS), ("pitch", _PITCH_WORDS)):
        for value, words in table.items():
            if any((w in tokens) if w.isascii() else (w in text) for w in words):
                found[attribute] = value
    return found


def judge_speed(rate: float, neutral_rate: float, requested: str, margin: float = 0.10) -> bool:
    """Did the speaking rate follow a "fast"/"slow"/"normal" request?

    fast: ``rate >= neutral * (1 + margin)``; slow: ``rate <= neutral * (1 - margin)``;
    normal: in between (exclusive). Any NaN input is a failure.
    """
    if not (np.isfinite(rate) and np.isfinite(neutral_rate)) or neutral_rate <= 0:
        return False
    if requested == "fast":
        return rate >= neutral_rate * (1.0 + margin)
    if requested == "slow":
        return rate <= neutral_rate * (1.0 - margin)
    if requested in ("normal", "neutral"):
        return neutral_rate * (1.0 - margin) < rate < neutral_rate * (1.0 + margin)
    raise ValueError(f"judge_speed: unknown request {requested!r} (fast, slow, normal)")


def judge_pitch(f0: float, neutral_f0: float, requested: str, semitones: float = 1.0) -> bool:
    """Did the median F0 follow a "high"/"low"/"normal" pitch request?

    high: at least ``semitones`` above the neutral median F0; low: at least that far below;
    normal: closer than that. Any NaN input (e.g. no voiced frame) is a failure.
    """
    if not (np.isfinite(f0) and np.isfinite(neutral_f0)) or f0 <= 0 or neutral_f0 <= 0:
        return False
    diff = semitone_difference(f0, neutral_f0)
    if requested == "high":
        return diff >= semitones
    if requested == "low":
        return diff <= -semitones
    if requested in ("normal", "neutral"):
        return abs(diff) < semitones
    raise ValueError(f"judge_pitch: unknown request {requested!r} (high, low, normal)")
