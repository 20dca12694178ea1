"""The project-manifest reader (uses the data package's manifest schema)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from minmo.eval import readers


def write_wave(path: Path, seconds: float = 0.1, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(seconds * sr), dtype=np.float32), sr)
    return path


def test_project_manifest(tmp_path: Path) -> None:
    write_wave(tmp_path / "wavs" / "a.wav")
    write_wave(tmp_path / "wavs" / "b.wav")
    rows = [
        {"id": "a", "task": "asr", "audio": "wavs/a.wav", "text": "hello there",
         "language": "en", "speaker": "spk1", "split": "test"},
        {"id": "b", "task": "s2tt", "audio": "wavs/b.wav", "text": "hallo",
         "target": "hello", "language": "de", "target_language": "en", "split": "test"},
        {"id": "c", "task": "asr", "audio": "wavs/a.wav", "text": "train row", "split": "train"},
        {"id": "d", "task": "no_such_task", "audio": "wavs/a.wav", "text": "x"},
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = readers.read_project_manifest(path, split="test")
    assert [i.id for i in result.items] == ["a", "b"]
    a, b = result.items
    assert a.reference == "hello there" and a.speaker == "spk1" and a.language == "en"
    assert a.audio == tmp_path / "wavs" / "a.wav"
    assert b.reference == "hello" and b.extra["target_language"] == "en"
    assert len(result.problems) == 1 and "unknown_task" in result.problems[0]


def test_project_manifest_reads_a_repeated_row_once(tmp_path: Path) -> None:
    """`minmo tokenize` writes <name>.tokens.jsonl beside <name>.jsonl: a directory scan must
    not evaluate those rows twice."""
    write_wave(tmp_path / "a.wav")
    row = {"id": "t1", "task": "tts", "text": "say this", "target_audio": "a.wav", "split": "test"}
    (tmp_path / "tts.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "tts.tokens.jsonl").write_text(json.dumps({**row, "speech_tokens": [1, 2]}) + "\n")
    result = readers.read_project_manifest(tmp_path, split="test")
    assert [i.id for i in result.items] == ["t1"]
    assert len(result.problems) == 1 and "read once" in result.problems[0]


def test_project_manifest_row_without_its_audio_is_a_problem_not_an_item(tmp_path: Path) -> None:
    """A missing input file is the data's fault: it must not be scored as the model's empty
    answer (it would count as 100 % WER)."""
    write_wave(tmp_path / "wavs" / "a.wav")
    rows = [{"id": "a", "task": "asr", "audio": "wavs/a.wav", "text": "hello"},
            {"id": "gone", "task": "asr", "audio": "wavs/gone.wav", "text": "hello"},
            {"id": "t", "task": "tts", "text": "no input audio", "speech_tokens": [1, 2]}]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = readers.read_project_manifest(path)
    assert [i.id for i in result.items] == ["a", "t"]
    assert len(result.problems) == 1 and "gone.wav not found" in result.problems[0]
