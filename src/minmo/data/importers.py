"""Importers: corpora a researcher already has -> minmo manifests.

* :func:`import_librispeech` — ``<root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` +
  ``<utt>.flac``;
* :func:`import_common_voice` — a Common Voice TSV (``path``, ``sentence``, ``client_id``,
  ``gender``, ``locale`` columns) with its ``clips/`` folder;
* :func:`import_folder` — any folder of audio files, each with a same-named ``.txt`` beside it;
* :func:`import_chat_jsonl` — paper-style jsonl: chat ``messages`` with the user turn holding
  ``<|startofspeech|>!path<|endofspeech|>`` (FunAudioLLM style), or SenseVoice-style rows
  (``source``, ``target``, ``text_language``, ``emo_target``, ``event_target``).

Every importer returns ``(rows, problems)``: problems (a missing transcript, an unreadable
file) are reported, never fatal. Durations come from the audio headers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from typing import Callable

from minmo.audio.io import AudioError, audio_info
from minmo.data.manifest import TASKS, ManifestRow, write_manifest

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus")
_SPEECH_RE = re.compile(r"<\|startofspeech\|>!?(.*?)<\|endofspeech\|>", re.S)


def _row_with_audio(row_id: str, task: str, audio: Path, problems: list[str],
                    **kw) -> ManifestRow | None:
    try:
        info = audio_info(audio)
    except AudioError as exc:
        problems.append(str(exc))
        return None
    return ManifestRow(id=row_id, task=task, audio=str(audio.resolve()),
                       duration=round(info.duration, 3), **kw)


def import_librispeech(root: str | Path, split: str | None = None,
                       language: str = "en") -> tuple[list[ManifestRow], list[str]]:
    """Rows ``asr`` for every utterance of a LibriSpeech-layout directory."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: LibriSpeech directory not found")
    rows, problems = [], []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line_no, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            if not text:
                problems.append(f"{trans}:{line_no}: no transcript for {utt}")
                continue
            audio = next((trans.parent / f"{utt}{ext}" for ext in AUDIO_EXTENSIONS
                          if (trans.parent / f"{utt}{ext}").is_file()), None)
            if audio is None:
                problems.append(f"{trans}:{line_no}: audio for {utt} not found")
                continue
            row = _row_with_audio(utt, "asr", audio, problems, text=text, language=language,
                                  speaker=utt.split("-")[0], split=split)
            if row:
                rows.append(row)
    return rows, problems


def import_common_voice(tsv: str | Path, clips_dir: str | Path | None = None,
                        split: str | None = None) -> tuple[list[ManifestRow], list[str]]:
    """Rows ``asr`` from a Common Voice TSV (clips default to ``<tsv dir>/clips``)."""
    tsv = Path(tsv)
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv}: Common Voice TSV not found")
    clips = Path(clips_dir) if clips_dir else tsv.parent / "clips"
    rows, problems = [], []
    with tsv.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"path", "sentence"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{tsv}: missing column(s) {sorted(missing)}; a Common Voice TSV "
                             "has at least 'path' and 'sentence'")
        for line_no, rec in enumerate(reader, start=2):
            text = (rec.get("sentence") or "").strip()
            if not text:
                problems.append(f"{tsv}:{line_no}: empty sentence")
                continue
            gender = (rec.get("gender") or "").lower()
            gender = ("male" if gender.startswith("male") else
                      "female" if gender.startswith("female") else None)
            client = rec.get("client_id") or ""
            row = _row_with_audio(
                Path(rec["path"]).stem, "asr", clips / rec["path"], problems, text=text,
                language=rec.get("locale") or None, split=split, gender=gender,
                speaker=hashlib.sha1(client.encode()).hexdigest()[:12] if client else None)
            if row:
                rows.append(row)
    return rows, problems


def import_folder(root: str | Path, language: str | None = None,
                  split: str | None = None) -> tuple[list[ManifestRow], list[str]]:
    """Rows ``asr`` for every audio file under ``root`` that has a ``.txt`` transcript."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: folder not found")
    rows, problems = [], []
    for audio in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
        txt = audio.with_suffix(".txt")
        if not txt.is_file():
            problems.append(f"{audio}: no transcript {txt.name} beside it")
            continue
        text = " ".join(txt.read_text(encoding="utf-8").split())
        if not text:
            problems.append(f"{txt}: empty transcript")
            continue
        row_id = audio.relative_to(root).with_suffix("").as_posix().replace("/", "-")
        row = _row_with_audio(row_id, "asr", audio, problems, text=text, language=language,
                              split=split)
        if row:
            rows.append(row)
    return rows, problems


def _strip_tag(value: str | None) -> str | None:
    if not value:
        return None
    return value.strip().removeprefix("<|").removesuffix("|>") or None


def import_chat_jsonl(path: str | Path, task: str = "asr",
                      split: str | None = None) -> tuple[list[ManifestRow], list[str]]:
    """Rows from paper-style jsonl (chat ``messages`` or SenseVoice-style keys).

    For chat rows the user text before the speech becomes the row's ``instruction`` and the
    assistant message its ``target`` (and ``text`` for transcript tasks).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: jsonl not found")
    if task not in TASKS:
        raise ValueError(f"--task '{task}' unknown (expected one of: {', '.join(TASKS)})")
    rows, problems = [], []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        row_id = str(obj.get("key") or obj.get("id") or f"{path.stem}-{line_no}")
        if "messages" in obj:
            msgs = obj["messages"]
            user = next((m.get("content", "") for m in msgs if m.get("role") == "user"), "")
            reply = next((m.get("content", "") for m in msgs if m.get("role") == "assistant"), "")
            match = _SPEECH_RE.search(user if isinstance(user, str) else "")
            if not match:
                problems.append(f"{where}: user message holds no <|startofspeech|>!path"
                                "<|endofspeech|>")
                continue
            audio = Path(match.group(1).strip())
            instruction = user[: match.start()].strip()
            kw = {"instruction": instruction or None, "target": reply}
            if task in ("asr", "casr"):
                kw["text"] = reply
        elif "source" in obj:
            audio = Path(str(obj["source"]))
            lang = _strip_tag(obj.get("text_language"))
            kw = {"text": str(obj.get("target", "")), "language": lang.lower() if lang else None,
                  "emotion": (_strip_tag(obj.get("emo_target")) or "").lower() or None,
                  "events": [e] if (e := _strip_tag(obj.get("event_target"))) else None}
        else:
            problems.append(f"{where}: neither 'messages' nor 'source' present")
            continue
        if not audio.is_absolute():
            audio = path.parent / audio
        row = _row_with_audio(row_id, task, audio, problems, split=split, **kw)
        if row:
            rows.append(row)
    return rows, problems


IMPORTERS: dict[str, Callable[..., tuple[list[ManifestRow], list[str]]]] = {
    "librispeech": import_librispeech,
    "common_voice": import_common_voice,
    "folder": import_folder,
    "jsonl": import_chat_jsonl,
}


def write_import(rows: list[ManifestRow], out: str | Path) -> int:
    """Write imported rows as a manifest (paths relative to it). Returns the row count."""
    return write_manifest(out, rows)
