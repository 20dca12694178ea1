"""Readers for evaluation sets on disk -> a common :class:`EvalItem` list.

Layouts (each documented in ``docs/eval.md``):

* **LibriSpeech** test directory: ``<root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt``
  with lines ``<speaker>-<chapter>-<utt> WORDS ...`` and audio ``<utt-id>.flac`` beside it.
* **Fleurs** ``<lang>/<split>.tsv`` (google/fleurs): tab-separated, no header, 7 columns
  ``id, file_name, raw_transcription, transcription, characters, num_samples, gender``; the
  ``id`` is the FLoRes *sentence* id (several speakers read one sentence), so the item id is
  the audio file name. Audio is looked up in ``<lang>/audio/<split>/`` then ``<lang>/<split>/``.
  For speech translation a second TSV of the target language gives the reference by sentence id.
* **Seed-TTS-eval** ``meta.lst``: ``utt|prompt_text|prompt_wav|target_text`` lines (a fifth
  field, the ground-truth wav, is kept when present); paths relative to the list's directory.
* **Llama-Questions-style jsonl**: one object per line with the question audio (``audio``,
  ``audio_path``, ``question_audio`` or ``wav``) and the accepted answer(s) (``answer``: str,
  or ``answers``: list of str); optional ``id``, ``question`` (text), ``language``.
* The project's own **manifests** (``docs/data.md``), read with :mod:`minmo.data.manifest`.

A row that cannot be used is never fatal: it is skipped and reported in
:attr:`ReadResult.problems` as ``"<file>:<line>: <why>"``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minmo.eval.normalize import canonical_language

AUDIO_SUFFIXES = (".flac", ".wav", ".mp3", ".ogg")


@dataclass
class EvalItem:
    """One evaluation example, whatever the set it came from.

    Attributes:
        id: unique id inside its set.
        task: manifest task name (``asr``, ``s2tt``, ``lid``, ``ser``, ``aed``, ``sa``,
            ``s2t_chat``, ``s2s_chat``, ``tts``, ``instruct_tts``, ``duplex``, ``casr``).
        audio: input speech (for TTS: the voice prompt, or ``None``).
        reference: what the output is scored against: transcript, translation, label, first
            accepted answer, or the text to speak (TTS).
        language: language of the input speech / reference text (canonical code).
        speaker: speaker id if the set has one.
        dataset: set name used in reports (``librispeech/test-clean``, ``fleurs/en_us``, ...).
        extra: set-specific fields (``answers``, ``target_language``, ``prompt_text``,
            ``instruction``, ``style``, ``labels``, ``offset``/``duration``/``channel``, ...).
    """

    id: str
    task: str
    audio: Path | None
    reference: str
    language: str = ""
    speaker: str | None = None
    dataset: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReadResult:
    """Items read from a set plus the rows that were skipped, with the reason."""

    items: list[EvalItem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _find_audio(directory: Path, stem: str) -> Path | None:
    for suffix in AUDIO_SUFFIXES:
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found")


def read_librispeech(root: str | Path, dataset: str | None = None) -> ReadResult:
    """Read a LibriSpeech test directory (e.g. ``LibriSpeech/test-clean``).

    Args:
        root: directory holding ``<speaker>/<chapter>/`` folders (searched recursively for
            ``*.trans.txt``).
        dataset: report name; default ``librispeech/<root folder name>``.
    """
    root = Path(root)
    _require_file(root, "LibriSpeech directory")
    name = dataset or f"librispeech/{root.name}"
    out = ReadResult()
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise FileNotFoundError(
            f"{root}: no '<speaker>-<chapter>.trans.txt' files below it; point --data at a "
            "LibriSpeech split directory such as LibriSpeech/test-clean"
        )
    for trans in transcripts:
        for line_no, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            audio = _find_audio(trans.parent, utt_id)
            if audio is None:
                out.problems.append(f"{trans}:{line_no}: audio {utt_id}.flac not found")
                continue
            if not text.strip():
                out.problems.append(f"{trans}:{line_no}: empty transcript for {utt_id}")
                continue
            out.items.append(EvalItem(
                id=utt_id, task="asr", audio=audio, reference=text.strip(), language="en",
                speaker=utt_id.split("-")[0], dataset=name,
                extra={"chapter": utt_id.split("-")[1] if utt_id.count("-") >= 2 else None},
            ))
    return out


FLEURS_COLUMNS = ("id", "file_name", "raw_transcription", "transcription", "characters",
                  "num_samples", "gender")


def _fleurs_rows(tsv: Path) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    rows, problems = [], []
    with tsv.open(encoding="utf-8", newline="") as fh:
        for line_no, fields in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not fields or not any(f.strip() for f in fields):
                continue
            if len(fields) != len(FLEURS_COLUMNS):
                problems.append(
                    f"{tsv}:{line_no}: expected {len(FLEURS_COLUMNS)} tab-separated columns "
                    f"({', '.join(FLEURS_COLUMNS)}), got {len(fields)}"
                )
                continue
            rows.append((line_no, dict(zip(FLEURS_COLUMNS, fields))))
    return rows, problems


def fleurs_language(config_name: str) -> str:
    """Fleurs config folder (``en_us``, ``cmn_hans_cn``) -> canonical language code."""
    return canonical_language(config_name)


def read_fleurs(
    tsv: str | Path,
    audio_dir: str | Path | None = None,
    target_tsv: str | Path | None = None,
    task: str = "asr",
    language: str | None = None,
) -> ReadResult:
    """Read a Fleurs ``<split>.tsv``.

    Args:
        tsv: e.g. ``fleurs/cmn_hans_cn/test.tsv``.
        audio_dir: folder of the split's audio; default ``<tsv dir>/audio/<split>`` or
            ``<tsv dir>/<split>``.
        target_tsv: the same split in the target language; required for ``task="s2tt"``
            (reference = target ``raw_transcription`` of the same sentence id).
        task: ``asr`` (reference: raw transcription), ``s2tt`` or ``lid`` (reference: the
            language code).
        language: language of the audio; default from the TSV's folder name.
    """
    tsv = Path(tsv)
    _require_file(tsv, "Fleurs TSV")
    if task not in ("asr", "s2tt", "lid"):
        raise ValueError(f"read_fleurs: task must be asr, s2tt or lid, got {task!r}")
    if task == "s2tt" and target_tsv is None:
        raise ValueError("read_fleurs: task 's2tt' needs target_tsv (the target language TSV)")
    split = tsv.stem
    lang = canonical_language(language) if language else fleurs_language(tsv.parent.name)
    if audio_dir is None:
        candidates = [tsv.parent / "audio" / split, tsv.parent / split]
        audio_root = next((c for c in candidates if c.is_dir()), candidates[0])
    else:
        audio_root = Path(audio_dir)
    rows, problems = _fleurs_rows(tsv)
    out = ReadResult(problems=problems)
    targets: dict[str, str] = {}
    target_lang = ""
    if target_tsv is not None:
        target_tsv = Path(target_tsv)
        _require_file(target_tsv, "Fleurs target-language TSV")
        target_lang = fleurs_language(target_tsv.parent.name)
        target_rows, target_problems = _fleurs_rows(target_tsv)
        out.problems.extend(target_problems)
        for _, row in target_rows:
            targets.setdefault(row["id"], row["raw_transcription"])
    name = f"fleurs/{tsv.parent.name}" + (f"->{target_tsv.parent.name}" if target_tsv else "")
    for line_no, row in rows:
        audio = audio_root / row["file_name"]
        if not audio.is_file():
            out.problems.append(f"{tsv}:{line_no}: audio {audio} not found")
            continue
        if task == "s2tt":
            if row["id"] not in targets:
                out.problems.append(
                    f"{tsv}:{line_no}: sentence id {row['id']} has no row in {target_tsv}"
                )
                continue
            reference = targets[row["id"]]
        elif task == "lid":
            reference = lang
        else:
            reference = row["raw_transcription"]
        extra: dict[str, Any] = {
            "sentence_id": row["id"], "transcription": row["transcription"],
            "raw_transcription": row["raw_transcription"], "gender": row["gender"],
            "num_samples": int(row["num_samples"]) if row["num_samples"].isdigit() else None,
        }
        if task == "s2tt":
            extra["target_language"] = target_lang
        out.items.append(EvalItem(
            id=Path(row["file_name"]).stem, task=task, audio=audio, reference=reference,
            language=lang, speaker=None, dataset=name, extra=extra,
        ))
    return out


def read_seed_tts(meta_lst: str | Path, language: str | None = None) -> ReadResult:
    """Read a Seed-TTS-eval ``meta.lst`` (``utt|prompt_text|prompt_wav|target_text[|gt_wav]``).

    Args:
        meta_lst: e.g. ``seedtts_testset/en/meta.lst``.
        language: of the target text; default the list's folder name (``en``/``zh``).
    """
    meta_lst = Path(meta_lst)
    _require_file(meta_lst, "Seed-TTS-eval meta.lst")
    base = meta_lst.parent
    lang = canonical_language(language or base.name)
    out = ReadResult()
    for line_no, line in enumerate(meta_lst.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.strip().split("|")
        if len(fields) not in (4, 5):
            out.problems.append(
                f"{meta_lst}:{line_no}: expected 'utt|prompt_text|prompt_wav|target_text' "
                f"(4 or 5 '|'-separated fields), got {len(fields)}"
            )
            continue
        utt, prompt_text, prompt_wav, target_text = fields[:4]
        prompt = Path(prompt_wav) if Path(prompt_wav).is_absolute() else base / prompt_wav
        if not prompt.is_file():
            out.problems.append(f"{meta_lst}:{line_no}: prompt audio {prompt} not found")
            continue
        extra: dict[str, Any] = {"prompt_text": prompt_text}
        if len(fields) == 5 and fields[4]:
            gt = Path(fields[4]) if Path(fields[4]).is_absolute() else base / fields[4]
            extra["ground_truth_audio"] = gt
        out.items.append(EvalItem(
            id=utt, task="tts", audio=prompt, reference=target_text, language=lang,
            speaker=None, dataset=f"seed-tts-eval/{base.name}", extra=extra,
        ))
    return out


_QA_AUDIO_KEYS = ("audio", "audio_path", "question_audio", "wav")


def read_qa_jsonl(
    path: str | Path, dataset: str = "llama-questions", task: str = "s2t_chat"
) -> ReadResult:
    """Read a Llama-Questions-style jsonl (question audio + accepted answers).

    Args:
        path: the ``.jsonl`` file; relative audio paths are resolved against its folder.
        dataset: report name.
        task: ``s2t_chat`` (text reply scored) or ``s2s_chat`` (spoken reply scored).
    """
    path = Path(path)
    _require_file(path, "QA jsonl")
    out = ReadResult()
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            out.problems.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            out.problems.append(f"{where}: a row must be a JSON object")
            continue
        audio_value = next((obj[k] for k in _QA_AUDIO_KEYS if obj.get(k)), None)
        if not isinstance(audio_value, str):
            out.problems.append(f"{where}: no question audio (one of {', '.join(_QA_AUDIO_KEYS)})")
            continue
        answers = obj.get("answers", obj.get("answer"))
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers or not all(
            isinstance(a, str) and a.strip() for a in answers
        ):
            out.problems.append(f"{where}: 'answer' (string) or 'answers' (list of strings) needed")
            continue
        audio = Path(audio_value) if Path(audio_value).is_absolute() else path.parent / audio_value
        if not audio.is_file():
            out.problems.append(f"{where}: audio {audio} not found")
            continue
        out.items.append(EvalItem(
            id=str(obj.get("id", line_no)), task=task, audio=audio, reference=answers[0],
            language=canonical_language(obj.get("language", "en")), speaker=None,
            dataset=dataset, extra={"answers": answers, "question": obj.get("question")},
        ))
    return out


def read_project_manifest(
    paths: str | Path | list[str | Path], split: str | None = None, dataset: str = "synth"
) -> ReadResult:
    """Read the project's jsonl manifests (files or directories) with the data schema.

    Args:
        paths: manifest files or directories (searched for ``*.jsonl``); a row repeating
            the task and id of an earlier one is read once (and counted in ``problems``).
        split: keep only rows of this ``split`` (e.g. ``"test"``); rows without a split are
            kept.
        dataset: report name prefix; items are named ``<dataset>`` .

    Returns:
        Items with ``reference`` = the assistant's text for the row (``target`` or what the
        task implies); ``extra`` carries ``target_language``, ``instruction``, ``style``,
        ``emotion``, ``gender``, ``events``, ``labels`` (duplex), ``turns``, ``target_audio``,
        ``offset``/``duration``/``channel``, ``text`` (the transcript), ``answers``.
    """
    from minmo.data.manifest import read_manifests, target_text

    paths_list = paths if isinstance(paths, list) else [paths]
    for p in paths_list:
        _require_file(Path(p), "manifest")
    scan = read_manifests(paths_list)
    out = ReadResult(problems=[str(b) for b in scan.bad])
    seen: set[tuple[str, str]] = set()
    repeats = 0
    for row in scan.rows:
        if split is not None and row.split is not None and row.split != split:
            continue
        if (row.task, row.id) in seen:  # e.g. `minmo tokenize`'s .tokens.jsonl beside its source
            repeats += 1
            continue
        seen.add((row.task, row.id))
        if row.audio and not Path(row.audio).is_file():  # the data's fault, not the model's
            out.problems.append(f"{row.task} {row.id}: audio {row.audio} not found")
            continue
        extra: dict[str, Any] = {
            "text": row.text, "target_language": row.target_language,
            "instruction": row.instruction, "style": row.style, "emotion": row.emotion,
            "gender": row.gender, "events": row.events, "labels": row.labels,
            "turns": row.turns, "target_audio": row.target_audio, "offset": row.offset,
            "duration": row.duration, "channel": row.channel, "hotwords": row.hotwords,
            "split": row.split,
        }
        extra.update({k: v for k, v in row.meta.items() if not k.startswith("_")})
        answers = row.meta.get("answers")
        extra["answers"] = answers if isinstance(answers, list) and answers else [target_text(row)]
        out.items.append(EvalItem(
            id=row.id, task=row.task, audio=Path(row.audio) if row.audio else None,
            reference=target_text(row), language=canonical_language(row.language),
            speaker=row.speaker, dataset=dataset, extra=extra,
        ))
    if repeats:
        out.problems.append(f"{repeats} row(s) repeat the task and id of an earlier row (e.g. a "
                            "tokenised copy beside its manifest): each item is read once")
    return out
