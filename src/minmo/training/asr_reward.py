"""Speech targets by an ASR reward: the voice LM's own best takes (rejection sampling).

CosyVoice 2 tunes its speech token LM with an ASR reward: speech that a
recogniser reads back as the intended words is preferred. This module is its simplest form.
For a row with a spoken reply (``tts``: the text read aloud; ``s2s_chat``: the spoken answer
to the user's speech) the model speaks the reply ``K`` times: take 0 with the model's own
decoding (what ``minmo eval``, ``minmo chat`` and the server say), takes ``1..K-1`` sampled
from the ``top_k`` likeliest speech tokens (session seeds ``1..K-1``). A judge transcribes
each take, and the take with the fewest word errors against the reply text becomes the row's
``speech_tokens`` when its WER is at most a bound (0 by default: every word heard). Training
the voice LM on such rows (stage ``s2s``) needs no speech tokenizer: the tokens are the
model's own, in the codebook its flow was trained on.

A ``tts`` row's text is given to the LLM (``start_reply(..., say=TEXT)``), so its takes speak
exactly it. For ``s2s_chat`` the LLM writes its answer (greedy, the same in every take), and
a take counts only if that answer is the row's reference (:data:`REPLY_FIELD`, compared after
the WER normaliser; when it is not, the other takes are not spoken) -- unless
``own_answers``: then every take is judged against the model's own answer, which becomes the
kept row's ``target``. That is on-policy for the voice LM, which at inference speaks
whatever the LLM answered, right or wrong; the row is then no longer a QA reference.

The takes a judge told apart also make preference pairs (:func:`preference_pair`): the best
take as ``speech_tokens``, a take heard with at least ``min_gap`` more word errors as
``rejected_speech_tokens``, both speaking the same reply; stage ``s2s_dpo`` trains the voice
LM on them with DPO, CosyVoice 2's form of ASR-reward tuning.

``scripts/judged_speech_targets.py`` runs it over manifests.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minmo.eval.adapters import TranscriberJudge

REPLY_FIELD = {"tts": "text", "s2s_chat": "target"}
"""Task -> the manifest field holding the reply text a take must speak."""

DEFAULT_TOP_K = 25
"""Takes ``1..K-1`` sample from this many likeliest speech tokens (CosyVoice 2's value)."""


@dataclass
class Take:
    """One spoken reply: the session seed, its text, speech tokens and what the judge heard."""

    seed: int
    text: str
    tokens: list[int]
    heard: str
    wer: float


def take_wer(reference: str, heard: str, language: str = "en") -> float:
    """Word error rate of one take (normalised words; an empty reference counts one word)."""
    from minmo.eval.metrics import utterance_edits

    edits = utterance_edits(reference, heard, language)
    return edits.errors / max(1, edits.reference_length)


def same_text(text: str, reference: str, language: str = "en") -> bool:
    """Whether the LLM wrote the reference text (after the WER normaliser)."""
    from minmo.eval.normalize import normalize_for_language

    return normalize_for_language(text, language) == normalize_for_language(reference, language)


def best_take(reference: str, takes: list[Take], max_wer: float,
              language: str = "en") -> Take | None:
    """The take with the lowest WER whose text is ``reference`` and whose WER is at most
    ``max_wer``; the lowest seed wins ties. None when no take qualifies."""
    fit = [t for t in takes if t.tokens and same_text(t.text, reference, language)
           and t.wer <= max_wer]
    return min(fit, key=lambda t: (t.wer, t.seed)) if fit else None


def speak(rt: Any, row: dict[str, Any], base: Path, seed: int, max_seconds: float,
          top_k: int | None = None) -> tuple[str, list[int], np.ndarray]:
    """One take of the row's reply: ``(text, speech tokens, wave at rt.sample_rate_out)``;
    a ``tts`` row's text is given, an ``s2s_chat`` row's answer is written by the LLM.

    ``base``: the manifest's folder (row audio paths are relative to it); ``top_k``
    overrides the voice LM's for this take (None: the model's own decoding)."""
    from minmo.audio.io import load_audio
    from minmo.eval.model_binding import SPEECH_TOKENS_PER_SECOND, tts_instruction
    from minmo.inference.pipeline import GenerationConfig, SessionConfig, new_session, reply

    gen = GenerationConfig(max_speech_tokens=int(max_seconds * SPEECH_TOKENS_PER_SECOND),
                           seed=seed)
    session = new_session(rt, SessionConfig(generation=gen))
    voice_cfg = rt.model.voice_lm.cfg
    kept_top_k = voice_cfg.top_k
    voice_cfg.top_k = kept_top_k if top_k is None else top_k
    try:
        if row["task"] == "tts":
            said = reply(rt, None, session, say=row["text"], text=tts_instruction(
                row["text"], row.get("style"), row.get("instruction")))
        else:
            said = reply(rt, load_audio(str(base / row["audio"]), rt.sample_rate_in), session,
                         with_transcript=False)
    finally:
        voice_cfg.top_k = kept_top_k
    return said.text.strip(), said.speech_tokens, said.wave


def judge_row(rt: Any, judge: TranscriberJudge, row: dict[str, Any], base: Path, samples: int,
              max_wer: float = 0.0, top_k: int = DEFAULT_TOP_K, max_seconds: float = 12.0,
              own_answers: bool = False) -> tuple[list[Take], Take | None]:
    """Speak the row's reply up to ``samples`` times, judge each take: ``(takes, best)``.
    With ``own_answers`` an ``s2s_chat`` take is judged against the answer the LLM wrote."""
    reference = row[REPLY_FIELD[row["task"]]]
    language = row.get("language") or "en"
    takes = []
    for seed in range(samples):
        text, tokens, wave = speak(rt, row, base, seed, max_seconds, None if seed == 0 else top_k)
        if own_answers and row["task"] == "s2s_chat":
            reference = text
        heard = judge.transcribe(wave, rt.sample_rate_out, language) if wave.size else ""
        takes.append(Take(seed, text, tokens, heard, take_wer(reference, heard, language)))
        if seed == 0 and not same_text(text, reference, language):
            break  # the reply text is greedy: every other take would write it again
    return takes, best_take(reference, takes, max_wer, language)


def read_reply_rows(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """``(manifest folder, row)`` for each row of a task in :data:`REPLY_FIELD`, shuffled
    with seed 0 (so the first N are a sample of every manifest)."""
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            rows += [(path.parent, row) for row in map(json.loads, filter(str.strip, f))
                     if row.get("task") in REPLY_FIELD]
    return [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]


def target_row(row: dict[str, Any], base: Path, take: Take) -> dict[str, Any]:
    """The training row of a kept take: the row, its audio paths made absolute, its
    ``speech_tokens`` and, for ``s2s_chat``, the answer as the LLM wrote it (the reference's
    words, perhaps spelt otherwise, or with ``own_answers`` its own), whose states the
    tokens were spoken from."""
    fixed = {k: str((base / v).resolve()) if k in ("audio", "target_audio") and v else v
             for k, v in row.items()}
    if row["task"] == "s2s_chat":
        fixed["target"] = take.text
    return {**fixed, "speech_tokens": take.tokens}


def preference_pair(takes: list[Take], min_gap: float = 0.2,
                    text: str | None = None) -> tuple[Take, Take] | None:
    """``(preferred, rejected)`` among one row's takes: the take with the lowest WER (lowest
    seed on ties) and the one with the highest (highest seed on ties), when they speak the
    same text (``text`` exactly, when given) and their WERs differ by at least ``min_gap``;
    None otherwise."""
    spoken = [t for t in takes if t.tokens and (text is None or t.text == text.strip())]
    if len(spoken) < 2:
        return None
    best = min(spoken, key=lambda t: (t.wer, t.seed))
    worst = max(spoken, key=lambda t: (t.wer, t.seed))
    if worst.wer - best.wer < min_gap or worst.text != best.text:
        return None
    return best, worst


def row_pair(row: dict[str, Any], takes: list[Take], min_gap: float = 0.2
             ) -> tuple[Take, Take] | None:
    """:func:`preference_pair` of a manifest row's takes. A ``tts`` row trains on its own
    ``text`` (the LLM is fed it), so only takes that spoke exactly it pair; an ``s2s_chat``
    row trains on the answer its takes spoke (:func:`target_row`)."""
    return preference_pair(takes, min_gap, row["text"] if row["task"] == "tts" else None)


def pair_row(row: dict[str, Any], base: Path, preferred: Take, rejected: Take) -> dict[str, Any]:
    """The training row of a preference pair (stage ``s2s_dpo``): :func:`target_row` of the
    preferred take with the rejected take's ``rejected_speech_tokens``."""
    return {**target_row(row, base, preferred), "rejected_speech_tokens": rejected.tokens}


def report_takes(entry: dict[str, Any]) -> list[Take]:
    """The takes of one report row (:func:`report_row`). A take whose report kept only a
    token count (reports written before the tokens were kept) has no tokens."""
    return [Take(t["seed"], t["text"], t["tokens"] if isinstance(t["tokens"], list) else [],
                 t["heard"], t["wer"]) for t in entry["takes"]]


def report_row(row: dict[str, Any], takes: list[Take], best: Take | None) -> dict[str, Any]:
    """What the report keeps of a row: every take's seed, text, transcript, WER and speech
    tokens, the failed takes' too (the pairs a preference objective would train on)."""
    return {"id": row["id"], "task": row["task"], "reference": row[REPLY_FIELD[row["task"]]],
            "kept_seed": best.seed if best else None,
            "takes": [{**asdict(t), "wer": round(t.wer, 4)} for t in takes]}
