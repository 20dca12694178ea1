"""Generators of synthetic corpus items: each makes audio files and returns manifest rows.

One *item* is one piece of generated audio (a sentence, a question with its spoken answer, a
noisy clip, a dialogue) and yields one or more manifest rows (tasks). Every generator takes a
:class:`ItemContext` (shard RNGs, output folder, split) and returns ``(rows, seconds)``, where
``seconds`` is the audio generated. Paths in rows are relative to the corpus root.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minmo.audio.io import resample, save_audio
from minmo.data.duplex import DuplexParams, Utterance, build_dialogue
from minmo.data.espeak import (ASSISTANT, Speaker, random_speaker, styled_speaker,
                               synthesize)
from minmo.data.events import EVENTS, make_event, mix_at_snr
from minmo.data.manifest import LANGUAGE_NAMES
from minmo.data.qa import BACKCHANNELS, COMMANDS, QAPair, qa_pairs_by_split
from minmo.data.text_corpus import (SENTENCE_LANGUAGES, held_out_split, hotwords_for,
                                    sentence, sentence_ids_by_split)

USER_RATE = 16000
TARGET_RATE = 24000
EMOTIONS = ("neutral", "happy", "sad", "angry")
ITTS_STYLES = ("fast", "slow", "high", "low", "whisper", "happy", "sad", "angry")
SNRS_DB = (0.0, 5.0, 10.0, 15.0, 20.0)


class AudioCheckError(RuntimeError):
    """Generated audio failed the quality check (clipping, silence, NaN)."""


@dataclass
class ItemContext:
    """What an item generator needs.

    Attributes:
        root: corpus root; audio goes under ``root / audio_dir``.
        audio_dir: folder of this shard, relative to the root (``audio/<shard>``).
        item_id: unique id of the item (``<shard>-<index>``).
        split: ``train``, ``valid`` or ``test``.
        rng: Python RNG of the item.
        nprng: numpy RNG of the item.
        languages: languages to draw sentences from.
        mbrola: draw half the user speakers from MBROLA voices.
        flite: draw a third of the user speakers from flite voices (English).
        piper: draw half the user speakers from Piper voices (English).
        kokoro: draw half the user speakers from Kokoro voices (English).
        texts: the lines of ``--text-file`` by split (:func:`texts_by_split`), for the
            ``text`` kind.
        text_language: language of those lines.
    """

    root: Path
    audio_dir: str
    item_id: str
    split: str
    rng: random.Random
    nprng: np.random.Generator
    languages: tuple[str, ...] = SENTENCE_LANGUAGES
    mbrola: bool = False
    flite: bool = False
    piper: bool = False
    kokoro: bool = False
    texts: dict[str, list[str]] | None = None
    text_language: str = "en"

    def path(self, suffix: str) -> tuple[Path, str]:
        """Absolute and root-relative path for a file of this item."""
        rel = f"{self.audio_dir}/{self.item_id}{suffix}"
        return self.root / rel, rel


def check_audio(wave: np.ndarray, what: str) -> None:
    """Refuse clipped, silent or non-finite audio.

    Raises:
        AudioCheckError: naming ``what`` and the failed check.
    """
    if not np.all(np.isfinite(wave)):
        raise AudioCheckError(f"{what}: non-finite samples")
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak >= 0.999:
        raise AudioCheckError(f"{what}: clipped (peak {peak:.3f})")
    rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) if wave.size else 0.0
    if rms < 10 ** (-60 / 20):
        raise AudioCheckError(f"{what}: silence only (rms {rms:.2e})")


def normalize(wave: np.ndarray, rms_db: float, peak_max: float = 0.95) -> np.ndarray:
    """Scale to ``rms_db`` dBFS RMS, then down so the peak is at most ``peak_max``."""
    rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) + 1e-12
    out = wave * (10 ** (rms_db / 20) / rms)
    peak = float(np.max(np.abs(out)))
    if peak > peak_max:
        out = out * (peak_max / peak)
    return out.astype(np.float32)


def speak(text: str, speaker: Speaker, rate: int, rms_db: float,
          emotion: str | None = None) -> np.ndarray:
    """espeak-ng -> resampled to ``rate`` -> loudness-normalised ``(N,)`` float32."""
    wave, sr = synthesize(text, speaker, emotion=None if emotion == "neutral" else emotion)
    return normalize(resample(wave, sr, rate), rms_db)


def _save(ctx: ItemContext, suffix: str, wave: np.ndarray, rate: int) -> tuple[str, float]:
    check_audio(wave, f"{ctx.item_id}{suffix}")
    path, rel = ctx.path(suffix)
    save_audio(path, wave, rate)
    return rel, round(wave.shape[-1] / rate, 3)


def _user_speaker(ctx: ItemContext, language: str) -> Speaker:
    return random_speaker(ctx.rng, language, ctx.split, mbrola=ctx.mbrola, flite=ctx.flite,
                          piper=ctx.piper, kokoro=ctx.kokoro)


def user_level(rng: random.Random) -> float:
    """Loudness of a user clip in dBFS RMS, drawn from ``rng``."""
    return rng.uniform(-28.0, -18.0)


def _user_level(ctx: ItemContext) -> float:
    return user_level(ctx.rng)


def _pick_language(ctx: ItemContext) -> str:
    # English carries 40 % of the sentences, the other languages share the rest.
    if "en" in ctx.languages and (len(ctx.languages) == 1 or ctx.rng.random() < 0.4):
        return "en"
    others = [lang for lang in ctx.languages if lang != "en"]
    return ctx.rng.choice(others)


def _base(ctx: ItemContext, task: str, **kw) -> dict:
    return {"id": f"{ctx.item_id}-{task}", "task": task, "split": ctx.split, **kw}


def _speaker_fields(sp: Speaker) -> dict:
    return {"speaker": sp.id, "gender": sp.gender}


def item_sentence(ctx: ItemContext) -> tuple[list[dict], float]:
    """A sentence in one language: rows asr, lid, s2tt, casr, sa."""
    lang = _pick_language(ctx)
    sid = ctx.rng.choice(sentence_ids_by_split()[ctx.split])
    text = sentence(lang, sid)
    sp = _user_speaker(ctx, lang)
    rel, dur = _save(ctx, ".wav", speak(text, sp, USER_RATE, _user_level(ctx)), USER_RATE)
    common = {"audio": rel, "duration": dur, "sample_rate": USER_RATE, "text": text,
              "language": lang, "sentence": sid.key, **_speaker_fields(sp)}
    if lang == "en":
        others = [x for x in ctx.languages if x != "en"] or ["en"]
        tgt_lang = ctx.rng.choice(others)
    else:
        tgt_lang = "en"
    rows = [
        _base(ctx, "asr", **common),
        _base(ctx, "lid", **common, target=LANGUAGE_NAMES[lang]),
        _base(ctx, "s2tt", **common, target=sentence(tgt_lang, sid), target_language=tgt_lang),
        _base(ctx, "casr", **common, hotwords=hotwords_for(lang, text, ctx.rng)),
        _base(ctx, "sa", **common, target=sp.describe(), pitch_level=sp.pitch_level,
              rate_level=sp.rate_level),
    ]
    if tgt_lang == lang:  # only English requested: no translation pair exists
        rows = [r for r in rows if r["task"] != "s2tt"]
    return rows, dur


def text_sentences(lines: list[str]) -> list[str]:
    """Distinct sentences of a text file, in order: whitespace collapsed, blank and ``#``
    lines skipped."""
    kept = (" ".join(line.split()) for line in lines)
    return list(dict.fromkeys(t for t in kept if t and not t.startswith("#")))


def texts_by_split(lines: list[str], test_fraction: float = 0.05,
                   valid_fraction: float = 0.03) -> dict[str, list[str]]:
    """:func:`text_sentences` grouped by a fixed hash of their text, like the phrase table's:
    a sentence is in one split only, every run."""
    out: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for text in text_sentences(lines):
        out[held_out_split("text:" + text, test_fraction, valid_fraction)].append(text)
    return out


def _file_sentence(ctx: ItemContext, kind: str) -> str:
    """A sentence of ``--text-file`` from this item's split (for the item kind ``kind``)."""
    if not ctx.texts or not ctx.texts.get(ctx.split):
        raise ValueError(f"{ctx.item_id}: the {kind} kind needs sentences of split {ctx.split}")
    return ctx.rng.choice(ctx.texts[ctx.split])


def _assistant_reads(ctx: ItemContext, text: str, language: str = "en") -> tuple[list[dict], float]:
    """The assistant voice reading ``text``: row tts."""
    rel, dur = _save(ctx, ".wav", speak(text, ASSISTANT, TARGET_RATE, -20.0), TARGET_RATE)
    return [_base(ctx, "tts", text=text, language=language, target_audio=rel,
                  target_duration=dur, speaker="assistant")], dur


def item_text(ctx: ItemContext) -> tuple[list[dict], float]:
    """A sentence of the user's text file (``--text-file``) in a user voice: row asr.

    The phrase table's sentences are a closed set a model can learn by heart; open text is
    what teaches it to hear words rather than recognise sentences."""
    text = _file_sentence(ctx, "text")
    sp = _user_speaker(ctx, ctx.text_language)
    rel, dur = _save(ctx, ".wav", speak(text, sp, USER_RATE, _user_level(ctx)), USER_RATE)
    return [_base(ctx, "asr", audio=rel, duration=dur, sample_rate=USER_RATE, text=text,
                  language=ctx.text_language, **_speaker_fields(sp))], dur


def item_text_tts(ctx: ItemContext) -> tuple[list[dict], float]:
    """A sentence of the user's text file read by the assistant voice: row tts.

    The speech output's counterpart of :func:`item_text`: a voice LM trained only on the
    phrase table reads only its sentences aloud."""
    return _assistant_reads(ctx, _file_sentence(ctx, "text_tts"), ctx.text_language)


def item_emotion(ctx: ItemContext) -> tuple[list[dict], float]:
    """A sentence spoken with an emotion or whispered: row ser."""
    lang = _pick_language(ctx)
    sid = ctx.rng.choice(sentence_ids_by_split()[ctx.split])
    text = sentence(lang, sid)
    sp = _user_speaker(ctx, lang)
    label = ctx.rng.choice(EMOTIONS + ("whisper",))
    if label == "whisper":
        wave = speak(text, styled_speaker(sp, "whisper"), USER_RATE, _user_level(ctx))
        target = "The speaker is whispering."
    else:
        wave = speak(text, sp, USER_RATE, _user_level(ctx), emotion=label)
        target = f"The speaker sounds {label}."
    rel, dur = _save(ctx, ".wav", wave, USER_RATE)
    row = _base(ctx, "ser", audio=rel, duration=dur, sample_rate=USER_RATE, text=text,
                language=lang, target=target, emotion=label, sentence=sid.key,
                **_speaker_fields(sp))
    return [row], dur


def item_event(ctx: ItemContext) -> tuple[list[dict], float]:
    """Speech with a background event at a known SNR, or the event alone: rows aed (+asr)."""
    event = ctx.rng.choice(sorted(EVENTS))
    rows = []
    if ctx.rng.random() < 0.75:
        lang = _pick_language(ctx)
        sid = ctx.rng.choice(sentence_ids_by_split()[ctx.split])
        text = sentence(lang, sid)
        sp = _user_speaker(ctx, lang)
        speech = speak(text, sp, USER_RATE, -20.0)
        snr = ctx.rng.choice(SNRS_DB)
        noise = make_event(event, ctx.nprng, speech.size, USER_RATE)
        wave = normalize(mix_at_snr(speech, noise, snr), _user_level(ctx))
        rel, dur = _save(ctx, ".wav", wave, USER_RATE)
        common = {"audio": rel, "duration": dur, "sample_rate": USER_RATE, "language": lang,
                  **_speaker_fields(sp)}
        rows.append(_base(ctx, "aed", **common, text=text, events=["speech", event],
                          snr_db=snr, target=f"Speech with {event} in the background."))
        if snr >= 10.0:
            rows.append(_base(ctx, "asr", **common, text=text, snr_db=snr, events=[event],
                              sentence=sid.key))
    else:
        n = int(ctx.rng.uniform(2.0, 5.0) * USER_RATE)
        wave = normalize(make_event(event, ctx.nprng, n, USER_RATE), _user_level(ctx))
        rel, dur = _save(ctx, ".wav", wave, USER_RATE)
        rows.append(_base(ctx, "aed", audio=rel, duration=dur, sample_rate=USER_RATE,
                          events=[event], target=f"{event.capitalize()}, no speech."))
    return rows, dur


def _qa(ctx: ItemContext) -> QAPair:
    return ctx.rng.choice(qa_pairs_by_split()[ctx.split])


def item_qa(ctx: ItemContext) -> tuple[list[dict], float]:
    """A spoken question and the assistant's spoken answer: rows s2t_chat, s2s_chat, asr."""
    pair = _qa(ctx)
    sp = _user_speaker(ctx, "en")
    q_rel, q_dur = _save(ctx, ".wav", speak(pair.question, sp, USER_RATE, _user_level(ctx)),
                         USER_RATE)
    a_rel, a_dur = _save(ctx, ".answer.wav", speak(pair.answer, ASSISTANT, TARGET_RATE, -20.0),
                         TARGET_RATE)
    common = {"audio": q_rel, "duration": q_dur, "sample_rate": USER_RATE,
              "text": pair.question, "language": "en", "qa_category": pair.category,
              **_speaker_fields(sp)}
    rows = [
        _base(ctx, "s2t_chat", **common, target=pair.answer),
        _base(ctx, "s2s_chat", **common, target=pair.answer, target_audio=a_rel,
              target_duration=a_dur),
        _base(ctx, "asr", **common),
    ]
    return rows, q_dur + a_dur


def _assistant_text(ctx: ItemContext) -> str:
    r = ctx.rng.random()
    if r < 0.5:
        return sentence("en", ctx.rng.choice(sentence_ids_by_split()[ctx.split]))
    pair = _qa(ctx)
    return pair.answer if r < 0.85 else pair.question


def item_tts(ctx: ItemContext) -> tuple[list[dict], float]:
    """The assistant voice reading an English text: row tts."""
    return _assistant_reads(ctx, _assistant_text(ctx))


def item_instruct_tts(ctx: ItemContext) -> tuple[list[dict], float]:
    """The assistant voice reading a text in a requested style: row instruct_tts."""
    text = _assistant_text(ctx)
    style = ctx.rng.choice(ITTS_STYLES)
    if style in ("happy", "sad", "angry"):
        wave = speak(text, ASSISTANT, TARGET_RATE, -20.0, emotion=style)
    else:
        wave = speak(text, styled_speaker(ASSISTANT, style), TARGET_RATE, -20.0)
    rel, dur = _save(ctx, ".wav", wave, TARGET_RATE)
    row = _base(ctx, "instruct_tts", text=text, language="en", style=style, target_audio=rel,
                target_duration=dur, speaker="assistant")
    return [row], dur


def item_duplex(ctx: ItemContext) -> tuple[list[dict], float]:
    """A two-channel dialogue with barge-ins and back-channels: row duplex."""
    sp = _user_speaker(ctx, "en")
    level = _user_level(ctx)
    pairs = [_qa(ctx) for _ in range(ctx.rng.randint(2, 4))]
    questions = [Utterance(speak(p.question, sp, USER_RATE, level), p.question) for p in pairs]
    answers = [Utterance(speak(p.answer, ASSISTANT, USER_RATE, -20.0), p.answer) for p in pairs]
    bc_texts = ctx.rng.sample(BACKCHANNELS, 2)
    backchannels = [Utterance(speak(t, sp, USER_RATE, level), t) for t in bc_texts]
    cmd_texts = ctx.rng.sample(COMMANDS, 2)
    commands = [Utterance(speak(t, sp, USER_RATE, level), t) for t in cmd_texts]
    dialogue = build_dialogue(questions, answers, backchannels, ctx.rng, USER_RATE,
                              DuplexParams(), commands)
    for ch in range(2):
        check_audio(dialogue.audio[ch], f"{ctx.item_id} channel {ch}")
    rel, dur = _save(ctx, ".wav", dialogue.audio, USER_RATE)
    labels_path, labels_rel = ctx.path(".labels.npz")
    dialogue.save_labels(str(labels_path))
    row = _base(ctx, "duplex", audio=rel, duration=dur, sample_rate=USER_RATE,
                labels=labels_rel, turns=dialogue.turns, language="en",
                text=" ".join(t["text"] for t in dialogue.turns if t["role"] == "user"),
                **_speaker_fields(sp))
    return [row], dur


ITEM_KINDS = {
    "sentence": item_sentence,
    "emotion": item_emotion,
    "event": item_event,
    "qa": item_qa,
    "tts": item_tts,
    "instruct_tts": item_instruct_tts,
    "duplex": item_duplex,
    "text": item_text,
    "text_tts": item_text_tts,
}
"""Item kind -> generator."""

KIND_SHARE = {
    "sentence": 0.28, "emotion": 0.08, "event": 0.08, "qa": 0.20, "tts": 0.08,
    "instruct_tts": 0.08, "duplex": 0.20, "text": 0.28, "text_tts": 0.14,
}
"""Fraction of the requested hours that each item kind produces (of the kinds made)."""
TEXT_KINDS = ("text", "text_tts")
"""Kinds made of ``--text-file``'s sentences."""
DEFAULT_KINDS = tuple(k for k in KIND_SHARE if k not in TEXT_KINDS)
"""Kinds made when none are named; ``text`` joins them when a text file is given (``text_tts``
only when named, so a corpus made before it existed resumes unchanged)."""
