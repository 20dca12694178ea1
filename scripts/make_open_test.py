"""An out-of-template English ASR test: everyday sentences the synthetic corpus never uses,
spoken by its held-out test voices.

    .venv/bin/python scripts/make_open_test.py --out DIR [--sentences FILE] [--per-sentence 2]
        [--mbrola] [--flite] [--seed 0]
    .venv/bin/minmo eval --model M --suite manifest --data DIR/asr.jsonl --tasks asr --out EVAL

The corpus' test split holds out speakers and sentences, but its sentences are new
combinations of the same 12 subjects x 16 predicates x 10 time phrases: a model can learn
that grammar and score well on it while mishearing anything else. This test reads other
sentences (``scripts/open_sentences_en.txt``, 40 written for it) so a WER on it says how much
of a model's hearing carries beyond the corpus' sentences. The voices are the ones no
training row uses (espeak-ng variants of the test split and, with ``--mbrola`` / ``--flite``,
the held-out MBROLA / flite voice), drawn with ``--seed``: the same arguments give the same
clips.

The same sentences are the open read-aloud test: ``DIR/tts.jsonl`` asks the model to say each
one (the assistant voice's own reading is the row's ``target_audio``, as in the corpus' ``tts``
rows), for the TTS round trip on text outside the corpus:

    .venv/bin/minmo eval --model M --suite manifest --data DIR/tts.jsonl --tasks tts \
        --tts-text given --asr-judge faster-whisper:tiny.en --out EVAL

The open spoken QA test, ``DIR/open_qa.jsonl``, asks everyday general-knowledge questions
(``scripts/open_questions_en.txt``, 40 written for it, none among the corpus' questions) in the
same held-out voices, in the Llama Questions layout (question audio, accepted answers). It
measures what the paper's spoken QA measures: how much of what the LLM knows a spoken question
reaches. ``--baseline text`` types each question to the same LLM (the ceiling), ``cascade``
types the model's own transcript:

    .venv/bin/minmo eval --model M --suite llama-questions --data DIR/open_qa.jsonl \
        --tasks s2t_chat --baseline cascade,text --out EVAL

Output: ``DIR/asr.jsonl`` (manifest rows of task ``asr``, split ``test``), ``DIR/tts.jsonl``
(one row of task ``tts`` per sentence), ``DIR/open_qa.jsonl`` (``per_sentence`` clips of each
question), ``DIR/audio/*.wav`` (16 kHz user speech, 24 kHz assistant readings).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SENTENCES = REPO / "scripts" / "open_sentences_en.txt"
DEFAULT_QUESTIONS = REPO / "scripts" / "open_questions_en.txt"


def read_sentences(path: Path) -> list[str]:
    """The distinct sentences of ``path`` (blank and ``#`` lines skipped), as ``minmo data
    synth --text-file`` reads them."""
    from minmo.data.synth_items import text_sentences

    return text_sentences(path.read_text(encoding="utf-8").splitlines())


def read_questions(path: Path) -> list[tuple[str, list[str]]]:
    """``[(question, accepted answers)]`` of a questions file: one per line, the question, a
    tab, the answers separated by ``|`` (blank and ``#`` lines skipped)."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        question, tab, answers = line.partition("\t")
        accepted = [a.strip() for a in answers.split("|") if a.strip()]
        if not tab or not question.strip() or not accepted:
            raise ValueError(f"{path}:{n}: expected 'question<TAB>answer|answer...'")
        out.append((question.strip(), accepted))
    return out


def make_open_test(out: Path, sentences: list[str], per_sentence: int = 2, mbrola: bool = False,
                   seed: int = 0, flite: bool = False,
                   questions: list[tuple[str, list[str]]] = ()) -> list[dict]:
    """Speak every sentence ``per_sentence`` times with held-out voices and once in the
    assistant voice, then every question ``per_sentence`` times with held-out voices; write
    the clips, ``out/asr.jsonl``, ``out/tts.jsonl`` and ``out/open_qa.jsonl``. Returns the
    ``asr`` rows."""
    from minmo.audio.io import save_audio
    from minmo.data.espeak import ASSISTANT, random_speaker
    from minmo.data.synth_items import TARGET_RATE, USER_RATE, speak, user_level

    rng = random.Random(seed)

    def say(text: str, name: str) -> tuple[Any, float]:
        """``text`` in the next held-out voice at a drawn level, as ``audio/{name}.wav``:
        (the speaker, seconds)."""
        speaker = random_speaker(rng, "en", "test", mbrola=mbrola, flite=flite)
        wave = speak(text, speaker, USER_RATE, rms_db=user_level(rng))
        save_audio(out / "audio" / f"{name}.wav", wave, USER_RATE)
        return speaker, round(wave.shape[-1] / USER_RATE, 3)

    rows, reads = [], []
    for i, text in enumerate(sentences):
        wave = speak(text, ASSISTANT, TARGET_RATE, -20.0)  # the corpus' assistant level
        save_audio(out / "audio" / f"open-{i:03d}-tts.wav", wave, TARGET_RATE)
        reads.append({"id": f"open-{i:03d}-tts", "task": "tts", "split": "test", "text": text,
                      "language": "en", "target_audio": f"audio/open-{i:03d}-tts.wav",
                      "target_duration": round(wave.shape[-1] / TARGET_RATE, 3),
                      "speaker": "assistant"})
        for k in range(per_sentence):
            name = f"open-{i:03d}-{k}"
            speaker, seconds = say(text, name)
            rows.append({"id": f"{name}-asr", "task": "asr", "split": "test",
                         "audio": f"audio/{name}.wav", "duration": seconds,
                         "sample_rate": USER_RATE, "text": text, "language": "en",
                         "speaker": speaker.id, "gender": speaker.gender})
    asked = []  # after the sentences, so the sentences' voices stay what they were
    for i, (question, answers) in enumerate(questions):
        for k in range(per_sentence):
            name = f"question-{i:03d}-{k}"
            speaker, _ = say(question, name)
            asked.append({"id": name, "audio": f"audio/{name}.wav", "question": question,
                          "answers": answers, "language": "en", "speaker": speaker.id})
    for name, manifest in (("asr", rows), ("tts", reads), ("open_qa", asked)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest),
                                           encoding="utf-8")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--sentences", type=Path, default=DEFAULT_SENTENCES,
                        help="text file, one sentence per line (# comments)")
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS,
                        help="questions file for open_qa.jsonl: 'question<TAB>answer|answer' per "
                             "line (# comments)")
    parser.add_argument("--per-sentence", type=int, default=2,
                        help="clips per sentence and per question, each by another held-out "
                             "voice")
    parser.add_argument("--mbrola", action="store_true",
                        help="half the voices from the held-out MBROLA voice (needs the "
                             "Debian mbrola packages, docs/data.md)")
    parser.add_argument("--flite", action="store_true",
                        help="a third of the voices from the held-out flite voice (Debian "
                             "flite)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from minmo.data.espeak import missing_flite, missing_mbrola_voices

    missing = (missing_mbrola_voices(["en"]) if args.mbrola else []) + (
        missing_flite() if args.flite else [])
    if missing:
        raise SystemExit(f"make_open_test: --mbrola / --flite need {' '.join(missing)} "
                         "(docs/data.md)")
    sentences = read_sentences(args.sentences)
    if not sentences:
        raise SystemExit(f"make_open_test: no sentences in {args.sentences}")
    questions = read_questions(args.questions)
    rows = make_open_test(args.out, sentences, args.per_sentence, args.mbrola, args.seed,
                          args.flite, questions)
    hours = sum(r["duration"] for r in rows) / 3600
    print(f"make_open_test: {len(rows)} clips ({hours * 60:.1f} min) of {len(sentences)} "
          f"sentences -> {args.out / 'asr.jsonl'}; read aloud -> {args.out / 'tts.jsonl'}; "
          f"{len(questions) * args.per_sentence} spoken questions -> {args.out / 'open_qa.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
