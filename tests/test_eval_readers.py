"""Readers on tiny fixtures written in each standard on-disk layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from minmo.eval import readers


def write_wave(path: Path, seconds: float = 0.1, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(seconds * sr), dtype=np.float32), sr)
    return path


def test_librispeech_layout(tmp_path: Path) -> None:
    root = tmp_path / "LibriSpeech" / "test-clean"
    chapter = root / "1089" / "134686"
    write_wave(chapter / "1089-134686-0000.flac")
    write_wave(chapter / "1089-134686-0001.flac")
    (chapter / "1089-134686.trans.txt").write_text(
        "1089-134686-0000 HE HOPED THERE WOULD BE STEW FOR DINNER\n"
        "1089-134686-0001 STUFF IT INTO YOU\n"
        "1089-134686-0002 NO AUDIO FOR THIS ONE\n"
    )
    other = root / "121" / "121726"
    write_wave(other / "121-121726-0000.flac")
    (other / "121-121726.trans.txt").write_text("121-121726-0000 ALSO A HEDGE\n")

    result = readers.read_librispeech(root)
    ids = [item.id for item in result.items]
    assert ids == ["1089-134686-0000", "1089-134686-0001", "121-121726-0000"]
    first = result.items[0]
    assert first.reference == "HE HOPED THERE WOULD BE STEW FOR DINNER"
    assert first.speaker == "1089"
    assert first.task == "asr" and first.language == "en"
    assert first.dataset == "librispeech/test-clean"
    assert first.audio == chapter / "1089-134686-0000.flac"
    assert len(result.problems) == 1 and "1089-134686-0002" in result.problems[0]

    write_wave(tmp_path / "not_librispeech" / "x.wav")
    with pytest.raises(FileNotFoundError, match="trans.txt"):
        readers.read_librispeech(tmp_path / "not_librispeech")


FLEURS_EN = [
    ["1686", "10004088536354799741.wav", "Hello, world.", "hello world", "h e l l o | w o r l d |", "64320", "FEMALE"],
    ["1686", "10004088536354799742.wav", "Hello, world.", "hello world", "h e l l o | w o r l d |", "64000", "MALE"],
    ["1700", "11111111111111111111.wav", "The \"quoted\" sky.", "the quoted sky", "t h e |", "50000", "MALE"],
]
FLEURS_ZH = [
    ["1686", "20000000000000000001.wav", "你好，世界。", "你好世界", "你 好 | 世 界 |", "60000", "FEMALE"],
    ["1999", "20000000000000000002.wav", "没有译文。", "没有译文", "没 有 |", "60000", "MALE"],
]


def write_fleurs(root: Path, config: str, rows: list[list[str]], with_audio: bool = True) -> Path:
    tsv = root / config / "test.tsv"
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    if with_audio:
        for r in rows:
            write_wave(root / config / "audio" / "test" / r[1])
    return tsv


def test_fleurs_asr_layout(tmp_path: Path) -> None:
    tsv = write_fleurs(tmp_path, "en_us", FLEURS_EN)
    with tsv.open("a", encoding="utf-8") as fh:
        fh.write("broken\trow\n")
    result = readers.read_fleurs(tsv)
    assert [i.id for i in result.items] == [
        "10004088536354799741", "10004088536354799742", "11111111111111111111"]
    item = result.items[2]
    assert item.reference == 'The "quoted" sky.'  # quotes are literal, not CSV quoting
    assert item.language == "en" and item.task == "asr"
    assert item.extra["sentence_id"] == "1700" and item.extra["gender"] == "MALE"
    assert item.extra["num_samples"] == 50000
    assert item.dataset == "fleurs/en_us"
    assert len(result.problems) == 1 and "7 tab-separated columns" in result.problems[0]


def test_fleurs_translation_and_lid(tmp_path: Path) -> None:
    zh = write_fleurs(tmp_path, "cmn_hans_cn", FLEURS_ZH)
    en = write_fleurs(tmp_path, "en_us", FLEURS_EN, with_audio=False)
    result = readers.read_fleurs(zh, target_tsv=en, task="s2tt")
    assert len(result.items) == 1
    item = result.items[0]
    assert item.language == "zh"
    assert item.reference == "Hello, world."
    assert item.extra["target_language"] == "en"
    assert item.dataset == "fleurs/cmn_hans_cn->en_us"
    assert any("1999" in p for p in result.problems)
    lid = readers.read_fleurs(zh, task="lid")
    assert [i.reference for i in lid.items] == ["zh", "zh"]
    with pytest.raises(ValueError, match="target_tsv"):
        readers.read_fleurs(zh, task="s2tt")


def test_seed_tts_meta_lst(tmp_path: Path) -> None:
    base = tmp_path / "seedtts_testset" / "en"
    write_wave(base / "prompt-wavs" / "common_voice_en_1.wav")
    write_wave(base / "prompt-wavs" / "common_voice_en_2.wav")
    (base / "meta.lst").write_text(
        "utt1|The prompt says this.|prompt-wavs/common_voice_en_1.wav|Please read this target.\n"
        "utt2|Another prompt.|prompt-wavs/common_voice_en_2.wav|Second target.|wavs/utt2.wav\n"
        "utt3|Missing prompt.|prompt-wavs/nope.wav|Third.\n"
        "bad line without fields\n"
    )
    result = readers.read_seed_tts(base / "meta.lst")
    assert [i.id for i in result.items] == ["utt1", "utt2"]
    first, second = result.items
    assert first.task == "tts" and first.language == "en"
    assert first.reference == "Please read this target."
    assert first.extra["prompt_text"] == "The prompt says this."
    assert first.audio == base / "prompt-wavs" / "common_voice_en_1.wav"
    assert second.extra["ground_truth_audio"] == base / "wavs" / "utt2.wav"
    assert first.dataset == "seed-tts-eval/en"
    assert len(result.problems) == 2


def test_qa_jsonl(tmp_path: Path) -> None:
    write_wave(tmp_path / "audio" / "q1.wav")
    write_wave(tmp_path / "audio" / "q2.wav")
    rows = [
        {"id": "q1", "audio": "audio/q1.wav", "question": "capital of france?", "answer": "Paris"},
        {"audio_path": "audio/q2.wav", "answers": ["seven", "7"]},
        {"id": "q3", "audio": "audio/q3.wav", "answer": "x"},
        {"id": "q4", "audio": "audio/q1.wav"},
    ]
    path = tmp_path / "llama_questions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    result = readers.read_qa_jsonl(path)
    assert [i.id for i in result.items] == ["q1", "2"]
    assert result.items[0].extra["answers"] == ["Paris"]
    assert result.items[1].extra["answers"] == ["seven", "7"]
    assert result.items[0].task == "s2t_chat" and result.items[0].dataset == "llama-questions"
    assert len(result.problems) == 3
    assert any("not valid JSON" in p for p in result.problems)
