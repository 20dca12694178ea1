"""Importers: corpora a researcher already has -> minmo manifests.

* :func:`import_librispeech` — ``<root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` +
  ``<utt>.flac``;
* :func:`import_common_voice` — a Common Voice TSV (``path``, ``sentence``, ``client_id``,
  ``gender``, ``locale`` columns) with its ``clips/`` folder;
* :func:`import_folder` — any folder of audio files, each with a same-named ``.txt`` beside it;
* :func:`import_chat_jsonl` — paper-style jsonl: chat ``messages`` with the user turn holding
  ``<|startofspeech|>!path<|endofspeech|>`` (FunAudioLLM style), or SenseVoice-style rows
  (``source``, ``target``, ``text_language``, ``emo_target``, ``event_target``);
* :func:`import_asterisk` — the recorded prompts of an Asterisk PBX sound set (Debian's
  ``asterisk-core-sounds-en-g722`` or ``-wav``: one real voice, ~25 minutes of short prompts,
  digits, letters and the spelling alphabet) with its ``core-sounds-<lang>.txt`` transcripts.

Every importer returns ``(rows, problems)``: problems (a missing transcript, an unreadable
file) are reported, never fatal. Durations come from the audio headers.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Callable

import numpy as np

from minmo.audio.io import AudioError, audio_info, save_audio
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


# Asterisk sound sets live in folders named <lang>_<REGION>_<f|m>_<Speaker> (en_US_f_Allison).
_ASTERISK_VOICE_RE = re.compile(r"^(?P<lang>[a-z]{2,3})_[A-Z]{2}_(?P<gender>[fm])_(?P<name>\w+)$")
# Notes on what is not said: "[ascending tones]", "at [@]", "(10 seconds of silence)",
# "IAX (note: does not say "2")".
_BRACKETED_RE = re.compile(r"\[[^\]]*\]|\([^)]*\)")
# Keypad keys as the voice says them ("press * to toggle pause": "press star ...").
_KEYPAD_WORDS = {"#": "pound", "*": "star"}


def asterisk_written(text: str) -> str | None:
    """One Asterisk transcript as a written sentence, or None when it is not speech.

    The transcript files mix styles ("Call waiting.", "press 0 for help", "at [@]"); rows
    here are sentences as the rest of minmo's text is: bracketed and parenthesised notes
    (tones, symbols, silences) dropped, the keypad's ``#`` / ``*`` as the words the voice
    says, ellipses of prompt fragments ("... for ...") removed, then a capital and a
    closing full stop.
    """
    text = _BRACKETED_RE.sub(" ", text)
    text = re.sub(r"(?<!\S)[#*](?!\S)", lambda m: _KEYPAD_WORDS[m.group(0)], text)
    text = " ".join(text.replace("...", " ").split()).strip(" ,;")
    if not any(ch.isalnum() for ch in text):
        return None
    if text[-1] not in ".?!":
        text += "."
    return text[0].upper() + text[1:]


def read_asterisk_transcripts(path: str | Path) -> dict[str, str]:
    """``name: text`` lines of an Asterisk ``core-sounds-<lang>.txt`` (plain or ``.gz``).

    Returns ``{name: written sentence}`` (names as in the file: ``digits/5``, ``vm-login``);
    comments (``;``) and entries that are not speech (``[ascending tones]``) are left out.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Asterisk transcript file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        lines = fh.read().splitlines()
    out = {}
    for line in lines:
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        name, sep, text = line.partition(":")
        written = asterisk_written(text) if sep else None
        if written:
            out[name.strip()] = written
    return out


def _decode_g722(src: Path, dst: Path) -> None:
    """Decode a raw G.722 file (16 kHz wideband) to a 16-bit wav with PyAV.

    Raises:
        RuntimeError: PyAV is not installed.
        AudioError: the file does not decode.
    """
    try:
        import av
    except ImportError:
        raise RuntimeError("reading .g722 sound files needs PyAV: pip install av "
                           "(or the .wav sound set, 8 kHz)") from None
    try:
        with av.open(str(src), format="g722") as container:
            rate = container.streams.audio[0].rate
            chunks = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
    except av.FFmpegError as exc:
        raise AudioError(f"{src}: not a decodable G.722 file ({exc})") from None
    if not chunks:
        raise AudioError(f"{src}: no G.722 audio in it")
    save_audio(dst, np.concatenate(chunks).astype(np.float32) / 32768.0, rate)


def find_asterisk_transcripts(sounds_dir: Path, language: str) -> Path:
    """Where a sound set's ``core-sounds-<lang>.txt[.gz]`` is: beside the prompts or where
    Debian's ``asterisk-core-sounds-<lang>`` package puts it."""
    names = [f"core-sounds-{language}.txt", f"core-sounds-{language}.txt.gz"]
    debian = Path(f"/usr/share/doc/asterisk-core-sounds-{language}")
    for folder in (sounds_dir, debian):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(
        f"no {names[0]}[.gz] in {sounds_dir} or {debian}; pass --transcripts (it is in "
        f"Debian's asterisk-core-sounds-{language} package)")


def import_asterisk(sounds_dir: str | Path, transcripts: str | Path | None = None,
                    audio_dir: str | Path | None = None, split: str | None = None,
                    language: str | None = None) -> tuple[list[ManifestRow], list[str]]:
    """Rows ``asr`` for the prompts of an Asterisk sound set that its transcripts name.

    Args:
        sounds_dir: the voice's folder (``/usr/share/asterisk/sounds/en_US_f_Allison``),
            holding ``<name>.wav`` (8 kHz) or ``<name>.g722`` (16 kHz) files.
        transcripts: its ``core-sounds-<lang>.txt`` (or ``.txt.gz``); default: found by
            :func:`find_asterisk_transcripts`.
        audio_dir: where ``.g722`` prompts are decoded to ``.wav`` (needed only for those).
        split: value of the rows' ``split`` field.
        language: language code (default: the folder name's, e.g. ``en``).
    """
    sounds_dir = Path(sounds_dir)
    if not sounds_dir.is_dir():
        raise FileNotFoundError(f"{sounds_dir}: Asterisk sounds folder not found")
    folder = sounds_dir.resolve().name
    voice = _ASTERISK_VOICE_RE.match(folder)
    speaker = f"asterisk-{voice['name'] if voice else folder}"
    gender = {"f": "female", "m": "male"}[voice["gender"]] if voice else None
    language = language or (voice["lang"] if voice else None)
    texts = read_asterisk_transcripts(
        transcripts or find_asterisk_transcripts(sounds_dir, language or folder.split("_")[0]))
    rows, problems = [], []
    for name, text in sorted(texts.items()):
        wav, g722 = sounds_dir / f"{name}.wav", sounds_dir / f"{name}.g722"
        if wav.is_file():
            audio = wav
        elif g722.is_file():
            if audio_dir is None:
                raise ValueError(f"{g722}: .g722 prompts are decoded to wav files; give "
                                 "audio_dir (--audio-dir)")
            audio = Path(audio_dir) / f"{name}.wav"
            if not audio.is_file():
                try:
                    _decode_g722(g722, audio)
                except AudioError as exc:
                    problems.append(str(exc))
                    continue
        else:
            problems.append(f"{sounds_dir}: no {name}.wav or {name}.g722 for '{text}'")
            continue
        row = _row_with_audio(f"{speaker}-{name.replace('/', '-')}", "asr", audio, problems,
                              text=text, language=language, speaker=speaker, gender=gender,
                              split=split)
        if row:
            rows.append(row)
    return rows, problems


IMPORTERS: dict[str, Callable[..., tuple[list[ManifestRow], list[str]]]] = {
    "librispeech": import_librispeech,
    "common_voice": import_common_voice,
    "folder": import_folder,
    "jsonl": import_chat_jsonl,
    "asterisk": import_asterisk,
}


def write_import(rows: list[ManifestRow], out: str | Path) -> int:
    """Write imported rows as a manifest (paths relative to it). Returns the row count."""
    return write_manifest(out, rows)
