"""Importers on tiny fixtures written here: LibriSpeech, Common Voice TSV, wav+txt folder,
paper-style jsonl; and the ``minmo data import|check`` commands on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from minmo.audio.io import save_audio
from minmo.cli import data as data_cli
from minmo.data.check import check_manifests
from minmo.data.importers import (import_chat_jsonl, import_common_voice, import_folder,
                                  import_librispeech)
from minmo.data.manifest import read_manifest


def _wave(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_librispeech(tmp_path):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    chapter = root / "84" / "121123"
    for i, secs in enumerate((1.0, 0.5)):
        save_audio(chapter / f"84-121123-000{i}.flac", _wave(secs), 16000)
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
        "84-121123-0002 THIS ONE HAS NO AUDIO\n")
    rows, problems = import_librispeech(root, split="dev")
    assert [r.id for r in rows] == ["84-121123-0000", "84-121123-0001"]
    assert rows[0].text == "GO DO YOU HEAR" and rows[0].speaker == "84"
    assert rows[0].duration == pytest.approx(1.0) and rows[1].duration == pytest.approx(0.5)
    assert rows[0].task == "asr" and rows[0].language == "en" and rows[0].split == "dev"
    assert len(problems) == 1 and "84-121123-0002" in problems[0]

    out = tmp_path / "manifests" / "libri.jsonl"
    code = data_cli.main(["import", "librispeech", str(root), "--out", str(out)])
    assert code == 0
    scan = read_manifest(out, check_files=True, expected_sample_rate=16000)
    assert len(scan.rows) == 2 and not scan.bad
    assert not Path(json.loads(out.read_text().splitlines()[0])["audio"]).is_absolute()


def test_common_voice(tmp_path):
    clips = tmp_path / "cv" / "clips"
    save_audio(clips / "common_voice_de_1.wav", _wave(0.8, 48000), 48000)
    save_audio(clips / "common_voice_de_2.wav", _wave(0.4, 48000), 48000)
    tsv = tmp_path / "cv" / "train.tsv"
    tsv.write_text(
        "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\n"
        "abc\tcommon_voice_de_1.wav\tGuten Morgen.\t2\t0\ttwenties\tmale_masculine\t\tde\n"
        "def\tcommon_voice_de_2.wav\tDas ist \"gut\".\t2\t0\t\tfemale_feminine\t\tde\n"
        "ghi\tcommon_voice_de_3.wav\tFehlt.\t2\t0\t\t\t\tde\n"
        "jkl\tcommon_voice_de_2.wav\t\t2\t0\t\t\t\tde\n")
    rows, problems = import_common_voice(tsv, split="train")
    assert [r.text for r in rows] == ["Guten Morgen.", 'Das ist "gut".']
    assert [r.gender for r in rows] == ["male", "female"]
    assert rows[0].language == "de" and rows[0].speaker and rows[0].speaker != rows[1].speaker
    assert rows[0].duration == pytest.approx(0.8)
    assert len(problems) == 2
    with pytest.raises(ValueError, match="sentence"):
        bad = tmp_path / "bad.tsv"
        bad.write_text("path\tnothing\nx.wav\ty\n")
        import_common_voice(bad)


def test_wav_txt_folder(tmp_path):
    root = tmp_path / "folder"
    save_audio(root / "a" / "one.wav", _wave(0.3), 16000)
    (root / "a" / "one.txt").write_text("hello\nworld \n")
    save_audio(root / "two.flac", _wave(0.6), 22050)
    (root / "two.txt").write_text("second file")
    save_audio(root / "orphan.wav", _wave(0.2), 16000)
    rows, problems = import_folder(root, language="en")
    assert {r.id: r.text for r in rows} == {"a-one": "hello world", "two": "second file"}
    assert len(problems) == 1 and "orphan" in problems[0]
    out = tmp_path / "folder.jsonl"
    assert data_cli.main(["import", "folder", str(root), "--out", str(out)]) == 0
    report = check_manifests([out], expected_sample_rate=16000)
    assert report.counts["asr"] == 1 and [b.kind for b in report.bad] == ["wrong_sample_rate"]


def test_paper_style_jsonl(tmp_path):
    save_audio(tmp_path / "w" / "q.wav", _wave(0.5), 16000)
    rows_in = [
        {"key": "c1", "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Transcribe:<|startofspeech|>!w/q.wav<|endofspeech|>"},
            {"role": "assistant", "content": "hello there"}]},
        {"key": "s1", "source": str(tmp_path / "w" / "q.wav"), "target": "hello there",
         "text_language": "<|en|>", "emo_target": "<|HAPPY|>", "event_target": "<|Speech|>"},
        {"key": "x", "messages": [{"role": "user", "content": "no speech here"}]},
    ]
    src = tmp_path / "paper.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows_in) + "\n")
    rows, problems = import_chat_jsonl(src, task="asr")
    assert [r.id for r in rows] == ["c1", "s1"]
    assert rows[0].instruction == "Transcribe:" and rows[0].text == "hello there"
    assert rows[1].language == "en" and rows[1].emotion == "happy" and rows[1].events == ["Speech"]
    assert len(problems) == 1 and ":3:" in problems[0]
    chat_rows, _ = import_chat_jsonl(src, task="s2t_chat")
    assert chat_rows[0].target == "hello there" and chat_rows[0].task == "s2t_chat"


def test_check_cli_exit_codes(tmp_path, capsys):
    save_audio(tmp_path / "a.wav", _wave(0.3), 16000)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"id": "1", "task": "asr", "audio": "a.wav", "text": "x"}) + "\n")
    assert data_cli.main(["check", str(good)]) == 0
    assert "bad rows: 0" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "2", "task": "asr", "audio": "b.wav", "text": "x"}) + "\n")
    assert data_cli.main(["check", str(bad)]) == 1
    assert "bad.jsonl:1 (id 2): missing_file" in capsys.readouterr().out
