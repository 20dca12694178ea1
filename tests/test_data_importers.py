"""Importers on tiny fixtures written here: LibriSpeech, Common Voice TSV, wav+txt folder,
paper-style jsonl, an Asterisk sound set (wav and G.722); and the ``minmo data import|check``
commands on them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from minmo.audio.io import audio_info, load_audio, save_audio
from minmo.cli import data as data_cli
from minmo.data.check import check_manifests
from minmo.data.importers import (asterisk_written, import_asterisk, import_chat_jsonl,
                                  import_common_voice, import_folder, import_librispeech,
                                  read_asterisk_transcripts)
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


# A transcript file in the layout of Debian's asterisk-core-sounds-en (core-sounds-en.txt.gz).
ASTERISK_TRANSCRIPTS = """; Core Asterisk Sounds in English

activated: Activated.
beep: [this is a simple beep tone]
digits/5: five
dictate/both_help: press * to toggle pause, press # to enter a new dictation filename
letters/at: at [@]
silence/1: (1 second of silence)
vm-intro: Please leave your message after the tone.  When done hang up. (simple tone sound plays)
no-audio: This prompt has no recording.
"""


@pytest.mark.parametrize("text, written", [
    ("Activated.", "Activated."),
    ("five", "Five."),
    ("press * to toggle pause, press # to enter a name",
     "Press star to toggle pause, press pound to enter a name."),
    ("at [@]", "At."),
    ("Press ...", "Press."),
    ("... for ...", "For."),
    ("Is this right?", "Is this right?"),
    ("IAX (note: does not say \"2\")", "IAX."),
    ("3D audio enabled", "3D audio enabled."),
    ("[ascending tones]", None),
    ("(10 seconds of silence)", None),
])
def test_asterisk_written(text, written):
    assert asterisk_written(text) == written


def _asterisk_set(root: Path, suffix: str) -> Path:
    voice = root / "sounds" / "en_US_f_Allison"
    for name, secs in (("activated", 0.6), ("beep", 0.2), ("digits/5", 0.4),
                       ("dictate/both_help", 1.5), ("letters/at", 0.3), ("silence/1", 1.0),
                       ("vm-intro", 2.0)):
        path = voice / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".wav":
            save_audio(path, _wave(secs, 8000), 8000)
        else:
            _write_g722(path, _wave(secs))
    return voice


def _write_g722(path: Path, wave: np.ndarray) -> None:
    av = pytest.importorskip("av")
    pcm = np.round(wave * 32767).astype(np.int16).reshape(1, -1)
    with av.open(str(path), "w", format="g722") as container:
        stream = container.add_stream("g722", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def test_asterisk_transcripts_file(tmp_path):
    gz = tmp_path / "core-sounds-en.txt.gz"
    gz.write_bytes(gzip.compress(ASTERISK_TRANSCRIPTS.encode()))
    texts = read_asterisk_transcripts(gz)
    assert texts == {
        "activated": "Activated.", "digits/5": "Five.",
        "dictate/both_help": "Press star to toggle pause, press pound to enter a new dictation "
                             "filename.",
        "letters/at": "At.", "vm-intro": "Please leave your message after the tone. When done "
                                         "hang up.",
        "no-audio": "This prompt has no recording."}
    plain = tmp_path / "core-sounds-en.txt"
    plain.write_text(ASTERISK_TRANSCRIPTS)
    assert read_asterisk_transcripts(plain) == texts
    with pytest.raises(FileNotFoundError, match="transcript file"):
        read_asterisk_transcripts(tmp_path / "missing.txt")


def test_asterisk_wav_set(tmp_path):
    voice = _asterisk_set(tmp_path, ".wav")
    (voice / "core-sounds-en.txt").write_text(ASTERISK_TRANSCRIPTS)
    rows, problems = import_asterisk(voice, voice / "core-sounds-en.txt", split="train")
    by_id = {r.id: r for r in rows}
    assert sorted(by_id) == ["asterisk-Allison-activated", "asterisk-Allison-dictate-both_help",
                             "asterisk-Allison-digits-5", "asterisk-Allison-letters-at",
                             "asterisk-Allison-vm-intro"]
    five = by_id["asterisk-Allison-digits-5"]
    assert five.text == "Five." and five.task == "asr" and five.split == "train"
    assert five.speaker == "asterisk-Allison" and five.gender == "female"
    assert five.language == "en" and five.duration == pytest.approx(0.4)
    assert five.audio == str((voice / "digits" / "5.wav").resolve())  # 8 kHz, read in place
    assert len(problems) == 1 and "no-audio" in problems[0]

    # the CLI finds the transcripts beside the prompts and writes a manifest the checker passes
    out = tmp_path / "ast" / "asr.jsonl"
    assert data_cli.main(["import", "asterisk", str(voice), "--out", str(out)]) == 0
    assert [r.text for r in read_manifest(out).rows] == [r.text for r in rows]
    assert check_manifests([out]).bad == []


def test_asterisk_g722_set_is_decoded(tmp_path, capsys):
    voice = _asterisk_set(tmp_path, ".g722")
    transcripts = tmp_path / "core-sounds-en.txt.gz"
    transcripts.write_bytes(gzip.compress(ASTERISK_TRANSCRIPTS.encode()))
    with pytest.raises(ValueError, match="audio_dir"):
        import_asterisk(voice, transcripts)
    out = tmp_path / "ast" / "asr.jsonl"
    assert data_cli.main(["import", "asterisk", str(voice), "--transcripts", str(transcripts),
                          "--out", str(out)]) == 0
    assert "wrote 5 rows" in capsys.readouterr().out
    rows = read_manifest(out).rows
    decoded = tmp_path / "ast" / "asr_audio" / "dictate" / "both_help.wav"
    assert decoded.is_file()
    row = next(r for r in rows if r.id == "asterisk-Allison-dictate-both_help")
    assert Path(row.audio).resolve() == decoded.resolve()
    assert row.duration == pytest.approx(1.5, abs=0.01)
    wave = load_audio(decoded, sample_rate=None)
    assert audio_info(decoded).sample_rate == 16000
    # G.722 is lossy: the 220 Hz tone comes back, not the exact samples
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) * 16000 / len(wave) == pytest.approx(220, abs=2)


def test_asterisk_undecodable_prompt_is_a_problem(tmp_path):
    voice = _asterisk_set(tmp_path, ".g722")
    (voice / "activated.g722").unlink()
    (voice / "activated.g722").write_bytes(b"")  # an empty file: nothing to decode
    (voice / "core-sounds-en.txt").write_text(ASTERISK_TRANSCRIPTS)
    rows, problems = import_asterisk(voice, voice / "core-sounds-en.txt",
                                     audio_dir=tmp_path / "decoded")
    assert "asterisk-Allison-activated" not in {r.id for r in rows} and len(rows) == 4
    assert any("activated.g722" in p and "G.722" in p for p in problems)


def test_asterisk_transcripts_must_be_found(tmp_path, capsys):
    voice = _asterisk_set(tmp_path, ".wav")
    assert data_cli.main(["import", "asterisk", str(voice), "--out",
                          str(tmp_path / "a.jsonl")]) != 0
    err = capsys.readouterr().err
    assert "no core-sounds-en.txt[.gz]" in err and "pass --transcripts" in err
