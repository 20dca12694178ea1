"""Manifest schema: one training example per jsonl line, with validation that never crashes.

A manifest is a ``.jsonl`` file; every line is one JSON object (see ``docs/data.md``)::

    {"id": "utt-001", "task": "asr", "audio": "wavs/utt-001.wav", "duration": 3.2,
     "text": "the cat sat", "language": "en", "speaker": "spk7", "split": "train"}

Relative paths (``audio``, ``target_audio``, ``labels``) are resolved against the directory of
the manifest file. Keys this schema does not know are kept in ``ManifestRow.meta``.

A bad row is never fatal: :func:`read_manifest` returns the good rows and a :class:`BadRow`
(file, line number, id, kind, message) for every bad one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from minmo.audio.io import AudioError, audio_info

TASKS: tuple[str, ...] = (
    "asr", "s2tt", "lid", "casr", "ser", "aed", "sa", "s2t_chat",
    "tts", "instruct_tts", "s2s_chat", "duplex",
)
"""Every task name a manifest may use (exact spelling)."""

TEXT_INPUT_TASKS = frozenset({"tts", "instruct_tts"})
"""Tasks whose user turn is text only (no input speech)."""

SPEECH_OUTPUT_TASKS = frozenset({"tts", "instruct_tts", "s2s_chat"})
"""Tasks whose assistant answer is speech (``target_audio`` and/or ``speech_tokens``)."""

TRANSCRIPT_TASKS = frozenset({"asr", "casr", "tts", "instruct_tts"})
"""Tasks whose assistant text is the ``text`` field itself."""

BAD_ROW_KINDS = (
    "invalid_json", "missing_field", "unknown_task", "empty_text", "missing_file",
    "unreadable_audio", "wrong_sample_rate", "wrong_channels", "bad_window", "bad_labels",
    "too_long",
)

LANGUAGE_NAMES = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
    "pt": "Portuguese", "nl": "Dutch", "zh": "Chinese", "ja": "Japanese", "ko": "Korean",
    "ru": "Russian", "pl": "Polish", "sv": "Swedish", "yue": "Cantonese", "ar": "Arabic",
}


class RowError(ValueError):
    """One manifest row is unusable. ``kind`` is one of :data:`BAD_ROW_KINDS`."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class ManifestRow:
    """One example. Paths are absolute after :func:`parse_row`.

    Fields follow ``docs/data.md``; ``meta`` holds any key the schema does not name.
    """

    id: str
    task: str
    audio: str | None = None
    offset: float = 0.0
    duration: float | None = None
    channel: int | None = None
    sample_rate: int | None = None
    text: str = ""
    target: str = ""
    instruction: str | None = None
    language: str | None = None
    target_language: str | None = None
    speaker: str | None = None
    gender: str | None = None
    style: str | None = None
    emotion: str | None = None
    hotwords: list[str] | None = None
    events: list[str] | None = None
    snr_db: float | None = None
    target_audio: str | None = None
    target_duration: float | None = None
    speech_tokens: list[int] | None = None
    rejected_speech_tokens: list[int] | None = None
    labels: str | None = None
    turns: list[dict[str, Any]] | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_speech_input(self) -> bool:
        """True when the user turn carries speech (``audio``)."""
        return self.task not in TEXT_INPUT_TASKS and self.audio is not None

    def to_json(self, base_dir: str | Path | None = None) -> dict[str, Any]:
        """Row -> JSON object; paths are made relative to ``base_dir`` when given."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "meta":
                continue
            value = getattr(self, f.name)
            if value is None or value == f.default and f.name in ("offset", "target"):
                continue  # the defaults a reader fills in (no window, the implied answer)
            if f.name in ("audio", "target_audio", "labels") and base_dir is not None:
                value = relative_path(value, base_dir)
            out[f.name] = value
        out.update(self.meta)
        return out


_FIELD_NAMES = {f.name for f in fields(ManifestRow)} - {"meta"}


def relative_path(path: str | Path, base_dir: str | Path) -> str:
    """``path`` relative to ``base_dir`` (with ``..`` if needed), POSIX separators."""
    import os

    return Path(os.path.relpath(Path(path).resolve(), Path(base_dir).resolve())).as_posix()


def tokens_manifest_path(manifest: str | Path) -> Path:
    """Where ``minmo tokenize`` writes ``manifest`` with ``speech_tokens`` filled:
    ``<stem>.tokens.jsonl`` beside it, so relative audio paths stay valid."""
    return Path(manifest).with_suffix(".tokens.jsonl")


def target_text(row: ManifestRow) -> str:
    """The assistant's text for ``row``: ``target``, or what the task implies.

    ASR-like and TTS tasks answer with the transcript; language ID with the language name.
    """
    if row.target:
        return row.target
    if row.task in TRANSCRIPT_TASKS:
        return row.text
    if row.task == "lid" and row.language:
        return LANGUAGE_NAMES.get(row.language, row.language)
    return ""


def _resolve(base_dir: Path, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise RowError("missing_field", f"'{key}' must be a non-empty path string")
    path = Path(value)
    return str(path if path.is_absolute() else (base_dir / path))


def parse_row(obj: Any, base_dir: str | Path) -> ManifestRow:
    """Check the fields of one decoded JSON object and build a :class:`ManifestRow`.

    Only the schema is checked here (no file access); see :func:`check_row_files`.

    Raises:
        RowError: missing/ill-typed field, unknown task, or empty text.
    """
    base_dir = Path(base_dir)
    if not isinstance(obj, dict):
        raise RowError("invalid_json", "a row must be a JSON object")
    task = obj.get("task")
    if not isinstance(task, str) or not task:
        raise RowError("missing_field", "missing 'task'")
    if task not in TASKS:
        raise RowError("unknown_task", f"unknown task '{task}' (expected one of: "
                       f"{', '.join(TASKS)})")
    row_id = obj.get("id")
    if not isinstance(row_id, (str, int)) or row_id == "":
        raise RowError("missing_field", "missing 'id'")
    kwargs: dict[str, Any] = {"id": str(row_id), "task": task}
    meta = {k: v for k, v in obj.items() if k not in _FIELD_NAMES}
    for key in ("audio", "target_audio", "labels"):
        if obj.get(key) is not None:
            kwargs[key] = _resolve(base_dir, obj[key], key)
    for key in ("offset", "duration", "target_duration", "snr_db"):
        if obj.get(key) is not None:
            value = obj[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RowError("missing_field", f"'{key}' must be a number, got {value!r}")
            kwargs[key] = float(value)
    for key in ("channel", "sample_rate"):
        if obj.get(key) is not None:
            if isinstance(obj[key], bool) or not isinstance(obj[key], int):
                raise RowError("missing_field", f"'{key}' must be an integer")
            kwargs[key] = obj[key]
    for key in ("text", "target", "instruction", "language", "target_language", "speaker",
                "gender", "style", "emotion", "split"):
        if obj.get(key) is not None:
            if not isinstance(obj[key], str):
                raise RowError("missing_field", f"'{key}' must be a string")
            kwargs[key] = obj[key]
    for key in ("hotwords", "events"):
        if obj.get(key) is not None:
            if not isinstance(obj[key], list) or not all(isinstance(w, str) for w in obj[key]):
                raise RowError("missing_field", f"'{key}' must be a list of strings")
            kwargs[key] = list(obj[key])
    for key in ("speech_tokens", "rejected_speech_tokens"):
        if obj.get(key) is not None:
            toks = obj[key]
            if not isinstance(toks, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in toks
            ):
                raise RowError("missing_field", f"'{key}' must be a list of integers")
            kwargs[key] = toks
    if obj.get("turns") is not None:
        if not isinstance(obj["turns"], list):
            raise RowError("missing_field", "'turns' must be a list")
        kwargs["turns"] = obj["turns"]
    row = ManifestRow(**kwargs, meta=meta)

    if row.task not in TEXT_INPUT_TASKS and row.audio is None:
        raise RowError("missing_field", f"task '{task}' needs 'audio' (the input speech)")
    if row.task in TRANSCRIPT_TASKS and not row.text.strip():
        raise RowError("empty_text", f"task '{task}' needs a non-empty 'text'")
    if row.task != "duplex" and not target_text(row).strip():
        raise RowError("empty_text", f"task '{task}' needs a non-empty 'target'")
    if row.task == "s2tt" and not row.target_language:
        raise RowError("missing_field", "task 's2tt' needs 'target_language'")
    if row.task in SPEECH_OUTPUT_TASKS and row.target_audio is None and not row.speech_tokens:
        raise RowError("missing_field",
                       f"task '{task}' needs 'target_audio' or 'speech_tokens' (assistant speech)")
    if row.task == "duplex" and row.labels is None:
        raise RowError("missing_field", "task 'duplex' needs 'labels' (the .npz label file)")
    if row.task == "casr" and not row.hotwords:
        raise RowError("missing_field", "task 'casr' needs a non-empty 'hotwords' list")
    return row


def check_row_files(row: ManifestRow, expected_sample_rate: int | None = None) -> None:
    """Check the files a row names: present, readable, rate, channels, window.

    Fills ``row.duration`` (and ``row.target_duration``) from the headers when absent.

    Args:
        row: a parsed row.
        expected_sample_rate: if set, input audio at any other rate is a bad row (on top of
            the row's own ``sample_rate`` declaration, which is always checked).

    Raises:
        RowError: ``missing_file``, ``unreadable_audio``, ``wrong_sample_rate``,
            ``wrong_channels``, ``bad_window`` or ``bad_labels``.
    """
    if row.audio is not None:
        info = _info_or_raise(row.audio)
        for want in (row.sample_rate, expected_sample_rate):
            if want is not None and info.sample_rate != want:
                raise RowError("wrong_sample_rate", f"{row.audio}: sample rate "
                               f"{info.sample_rate} Hz, expected {want} Hz (resample the file "
                               f"or fix 'sample_rate')")
        if row.task == "duplex" and info.channels != 2:
            raise RowError("wrong_channels", f"{row.audio}: duplex audio needs 2 channels "
                           f"(0 user, 1 assistant), file has {info.channels}")
        if row.channel is not None and not 0 <= row.channel < info.channels:
            raise RowError("wrong_channels", f"{row.audio}: channel {row.channel} asked, "
                           f"file has {info.channels}")
        if info.frames == 0:
            raise RowError("unreadable_audio", f"{row.audio}: file holds no samples")
        end = row.offset + (row.duration if row.duration is not None else 0.0)
        if row.offset < 0 or end > info.duration + 0.05:
            raise RowError("bad_window", f"{row.audio}: window {row.offset:.2f}-{end:.2f}s "
                           f"lies outside the file ({info.duration:.2f}s)")
        if row.duration is None:
            row.duration = info.duration - row.offset
    if row.target_audio is not None:
        info = _info_or_raise(row.target_audio)
        if row.target_duration is None:
            row.target_duration = info.duration
    if row.labels is not None:
        if not Path(row.labels).is_file():
            raise RowError("missing_file", f"{row.labels}: duplex label file not found")
        try:
            import numpy as np

            with np.load(row.labels) as npz:
                if "labels" not in npz or "assistant_speaking" not in npz:
                    raise RowError("bad_labels", f"{row.labels}: needs arrays 'labels' and "
                                   "'assistant_speaking'")
        except RowError:
            raise
        except Exception as exc:
            raise RowError("bad_labels", f"{row.labels}: unreadable label file ({exc})") from None


def _info_or_raise(path: str):
    if not Path(path).is_file():
        raise RowError("missing_file", f"{path}: file not found")
    try:
        return audio_info(path)
    except AudioError as exc:
        raise RowError("unreadable_audio", str(exc)) from None


@dataclass
class BadRow:
    """A rejected row: where it is and why."""

    source: str
    line: int
    id: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        ident = f" (id {self.id})" if self.id else ""
        return f"{self.source}:{self.line}{ident}: {self.kind}: {self.message}"


@dataclass
class ManifestScan:
    """Good rows and bad rows of one or more manifests."""

    rows: list[ManifestRow] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)

    def bad_counts(self) -> dict[str, int]:
        """Number of bad rows per kind."""
        return dict(Counter(b.kind for b in self.bad))


def read_manifest(
    path: str | Path,
    check_files: bool = False,
    expected_sample_rate: int | None = None,
    scan: ManifestScan | None = None,
) -> ManifestScan:
    """Read one jsonl manifest; bad rows are collected, never raised.

    Args:
        path: the ``.jsonl`` file.
        check_files: also open every file's header (see :func:`check_row_files`).
        expected_sample_rate: passed to :func:`check_row_files`.
        scan: append to this scan instead of a new one.

    Raises:
        FileNotFoundError: the manifest itself does not exist.
    """
    path = Path(path)
    scan = scan if scan is not None else ManifestScan()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    base_dir = path.parent
    with path.open("r", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row_id = None
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RowError("invalid_json", f"not valid JSON ({exc.msg} at column "
                                   f"{exc.colno})") from None
                if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)):
                    row_id = str(obj["id"])
                row = parse_row(obj, base_dir)
                if check_files:
                    check_row_files(row, expected_sample_rate)
            except RowError as err:
                scan.bad.append(BadRow(str(path), line_no, row_id, err.kind, str(err)))
                continue
            row.meta.setdefault("_source", f"{path}:{line_no}")
            scan.rows.append(row)
    return scan


def expand_manifest_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files and directories -> sorted list of ``.jsonl`` files (directories searched
    recursively)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(p.rglob("*.jsonl")))
        else:
            out.append(p)
    return out


def read_manifests(
    paths: Iterable[str | Path], check_files: bool = False,
    expected_sample_rate: int | None = None,
) -> ManifestScan:
    """Read many manifests (files or directories) into one scan."""
    scan = ManifestScan()
    for p in expand_manifest_paths(paths):
        read_manifest(p, check_files=check_files, expected_sample_rate=expected_sample_rate,
                      scan=scan)
    return scan


def write_manifest(path: str | Path, rows: Iterable[ManifestRow | dict[str, Any]]) -> int:
    """Write rows as jsonl (atomically: temp file + rename). Paths in :class:`ManifestRow`
    objects are written relative to the manifest's directory. Returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            obj = row.to_json(path.parent) if isinstance(row, ManifestRow) else row
            obj = {k: v for k, v in obj.items() if k != "_source"}
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
