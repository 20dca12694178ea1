"""The runner and ``minmo eval`` end to end, driven by a scripted test double.

The double's outputs are fixed functions of each item (it is told the item), so every number
the harness reports can be computed by hand here. This tests the harness, not a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from minmo.eval import adapters
from minmo.eval.adapters import DuplexTrace, ModelUnavailableError, SpokenReply
from minmo.eval.duplex_metrics import CONTINUE, LISTEN, RESPOND, STOP
from minmo.eval.readers import EvalItem
from minmo.eval.runner import RunSettings, SystemUnderTest, make_groups, read_suite, run_evaluation, SuiteSpec
from minmo.eval.tasks import pool_labels

SR = 16000


def tone(f0: float, seconds: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 5))).astype(np.float32)


class ScriptedModel:
    """Test double with every capability; outputs are fixed functions of the item."""

    name = "scripted"

    def capabilities(self) -> frozenset[str]:
        return frozenset(adapters.CAPABILITIES)

    def speech_to_text(self, task: str, wave: np.ndarray, sample_rate: int, item: EvalItem) -> str:
        assert wave.ndim == 1 and sample_rate == SR
        if task in ("asr", "casr"):
            if item.id == "judge":  # used as ASR judge on generated speech
                return self.last_spoken
            words = item.reference.split()
            return " ".join(words[:-1]) if item.language == "en" else item.reference
        if task == "s2tt":
            return item.reference
        if task == "lid":
            return "This is English." if item.id.endswith("0") else "I think it is German."
        if task == "ser":
            return f"The speaker sounds {item.extra['emotion']}."
        if task == "aed":
            return "I hear music."
        if task == "sa":
            return "A male speaker with a low-pitched voice, speaking slowly."
        if task == "s2t_chat":
            return "The answer is 4." if item.id == "qa0" else "No idea."
        raise AssertionError(task)

    def spoken_reply(self, wave: np.ndarray, sample_rate: int, item: EvalItem) -> SpokenReply:
        self.last_spoken = "it is four"
        return SpokenReply("It is four, I think.", tone(200, 0.5, 24000), 24000,
                           {"first_text_token": 100.0, "end_to_end": 700.0 + len(item.id)})

    def synthesize(self, text, language, style, instruction, prompt):
        self.last_spoken = text
        seconds = {"fast": 0.7, "slow": 1.5}.get(style, 1.0)
        f0 = {"high": 260.0, "low": 110.0}.get(style, 180.0)
        if style == "low":  # this double ignores "low": it keeps its neutral pitch
            f0 = 180.0
        return tone(f0, seconds, 24000), 24000

    def duplex(self, user_wave: np.ndarray, sample_rate: int, item: EvalItem) -> DuplexTrace:
        decisions = np.zeros(100, dtype=np.int64)  # 40 ms frames
        decisions[27] = RESPOND  # true respond at 10 ms frame 100 -> 40 ms frame 25
        decisions[60] = STOP  # true stop at 40 ms frame 45: 15 frames away > K=10
        return DuplexTrace(40.0, decisions, [{"duplex_decision": 30.0}])

    def speaker_embedding(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        return np.array([1.0, 0.0]) if wave.size > 20000 else np.array([1.0, 1.0])


def write_wave(path: Path, wave: np.ndarray, sr: int = SR) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave.T if wave.ndim == 2 else wave, sr)
    return path.name if path.parent.name == "" else str(path.relative_to(path.parents[1]))


def build_suite(root: Path) -> Path:
    """A tiny synthetic-corpus layout: <root>/test/all.jsonl with one row family per task."""
    test = root / "test"
    audio = root / "audio"
    speech = tone(150, 0.3)
    write_wave(audio / "u.wav", speech)
    write_wave(audio / "a.wav", tone(200, 0.3, 24000), 24000)
    labels = np.full(400, LISTEN, dtype=np.int8)
    labels[100:180] = CONTINUE
    labels[100] = RESPOND
    labels[180] = STOP
    speaking = (labels != LISTEN).astype(np.uint8)
    np.savez(audio / "d.labels.npz", labels=labels, assistant_speaking=speaking)
    write_wave(audio / "d.wav", np.stack([tone(150, 4.0), tone(200, 4.0)]))
    u, a = "../audio/u.wav", "../audio/a.wav"
    rows = [
        {"id": "asr0", "task": "asr", "audio": u, "text": "one two three four", "language": "en",
         "speaker": "s1"},
        {"id": "asr1", "task": "asr", "audio": u, "text": "five six", "language": "en",
         "speaker": "s2"},
        {"id": "asr2", "task": "asr", "audio": u, "text": "eins zwei", "language": "de",
         "speaker": "s3"},
        {"id": "st0", "task": "s2tt", "audio": u, "text": "eins", "target": "the cat sat on the mat",
         "language": "de", "target_language": "en"},
        {"id": "lid0", "task": "lid", "audio": u, "text": "x", "language": "en"},
        {"id": "lid1", "task": "lid", "audio": u, "text": "x", "language": "en"},
        {"id": "lid2", "task": "lid", "audio": u, "text": "x", "language": "de"},
        {"id": "ser0", "task": "ser", "audio": u, "text": "x", "target": "The speaker sounds sad.",
         "emotion": "sad"},
        {"id": "aed0", "task": "aed", "audio": u, "target": "Music, no speech.", "events": ["music"]},
        {"id": "aed1", "task": "aed", "audio": u, "target": "Siren.", "events": ["speech", "siren"]},
        {"id": "sa0", "task": "sa", "audio": u, "text": "x", "target": "A male speaker.",
         "gender": "male", "pitch_level": "high", "rate_level": "slow"},
        {"id": "qa0", "task": "s2t_chat", "audio": u, "text": "two plus two?", "target": "four",
         "answers": ["four", "4"]},
        {"id": "qa1", "task": "s2t_chat", "audio": u, "text": "capital?", "target": "Paris"},
        {"id": "sqa0", "task": "s2s_chat", "audio": u, "text": "two plus two?", "target": "four",
         "target_audio": a},
        {"id": "tts0", "task": "tts", "text": "hello there world", "language": "en",
         "target_audio": a},
        {"id": "itts0", "task": "instruct_tts", "text": "hello there", "language": "en",
         "style": "fast", "target_audio": a},
        {"id": "itts1", "task": "instruct_tts", "text": "hello there", "language": "en",
         "style": "high", "target_audio": a},
        {"id": "itts2", "task": "instruct_tts", "text": "hello there", "language": "en",
         "style": "low", "target_audio": a},
        {"id": "itts3", "task": "instruct_tts", "text": "hello there", "language": "en",
         "style": "happy", "target_audio": a},
        {"id": "dup0", "task": "duplex", "audio": "../audio/d.wav", "labels": "../audio/d.labels.npz",
         "language": "en", "turns": [
             {"role": "user", "start": 0.2, "end": 0.9, "text": "q"},
             {"role": "assistant", "start": 1.0, "end": 1.8, "text": "a"},
             {"role": "user", "start": 1.3, "end": 1.5, "text": "uh-huh", "backchannel": True},
             {"role": "user", "start": 1.6, "end": 2.5, "text": "wait"}]},
    ]
    test.mkdir(parents=True, exist_ok=True)
    (test / "all.jsonl").write_text("".join(json.dumps(dict(r, split="test")) + "\n" for r in rows)
                                    + '{"id": "broken", "task": "asr"}\n')
    return root


def rows_by(results, task, metric, dataset=None):
    found = [r for r in results.rows if r.task == task and r.metric == metric
             and (dataset is None or r.dataset == dataset)]
    assert len(found) == 1, (task, metric, dataset, [(r.task, r.metric, r.dataset) for r in results.rows])
    return found[0]


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    root = build_suite(tmp_path_factory.mktemp("synth"))
    read = read_suite(SuiteSpec("synth-test", str(root)))
    model = ScriptedModel()
    system = SystemUnderTest("minmo", model, adapters.SelfJudge(model))
    return read, run_evaluation([system], read, "scripted", "synth-test",
                                RunSettings(k=10, show_progress=False))


def test_reader_problems_are_reported(run_output) -> None:
    read, out = run_output
    assert len(read.items) == 20
    assert any("broken" in p for p in out.results.problems)


def test_text_task_numbers(run_output) -> None:
    results = run_output[1].results
    asr_en = rows_by(results, "asr", "WER", "synth/en")
    assert asr_en.value == pytest.approx(100 * 2 / 6)  # last word dropped in both utterances
    assert asr_en.details["per_speaker"]["s2"]["rate"] == pytest.approx(0.5)
    assert rows_by(results, "asr", "WER", "synth/de").value == 0.0
    assert rows_by(results, "s2tt", "BLEU").value == pytest.approx(100.0)
    lid = rows_by(results, "lid", "accuracy")
    # replies: lid0 -> English (right), lid1 -> German (wrong), lid2 -> German (right)
    assert lid.value == pytest.approx(100 * 2 / 3)
    assert lid.details["labels"] == ["de", "en"]
    assert lid.details["matrix"] == [[1, 0], [1, 1]]
    assert rows_by(results, "ser", "accuracy").value == 100.0
    assert rows_by(results, "aed", "accuracy").value == 50.0
    assert rows_by(results, "sa", "gender accuracy").value == 100.0
    assert rows_by(results, "sa", "pitch accuracy").value == 0.0
    assert rows_by(results, "sa", "speaking-rate accuracy").value == 100.0
    assert rows_by(results, "spoken_qa_s2t", "S2T accuracy").value == 50.0


def test_speech_task_numbers(run_output) -> None:
    results = run_output[1].results
    s2s = rows_by(results, "spoken_qa_s2s", "S2S accuracy")
    assert s2s.value == 100.0 and s2s.details["judge"].startswith("self")
    # the judge hears "it is four" of "It is four, I think.": 2 of 5 words lost
    spoken = rows_by(results, "spoken_qa_s2s", "reply speech WER")
    assert spoken.value == pytest.approx(40.0) and spoken.details["edits"]["deletions"] == 2
    assert rows_by(results, "tts", "WER").value == 0.0  # the judge hears the text it was given
    assert rows_by(results, "tts", "SIM").value == pytest.approx(1 / np.sqrt(2))
    itts = rows_by(results, "instruct_tts", "accuracy")
    # fast and high followed, low not (the double keeps its pitch); "happy" not judgeable
    assert itts.count == 3
    assert itts.value == pytest.approx(100 * 2 / 3)
    assert itts.details["per_request"] == {"fast": 100.0, "high": 100.0, "low": 0.0}
    assert itts.details["not_judgeable"] == 1


def test_duplex_numbers_and_latency(run_output) -> None:
    results = run_output[1].results
    assert rows_by(results, "duplex", "assistant turn-taking F1@10").value == 1.0
    assert rows_by(results, "duplex", "user turn-taking F1@10").value == 0.0
    # back-channel 1.3-1.5 s -> frames 32..37 (+K): the STOP at frame 60 is outside
    assert rows_by(results, "duplex", "back-channel accuracy").value == 100.0
    assert rows_by(results, "duplex", "turn-taking latency").value == pytest.approx(80.0)
    # the server's turn taking replayed on the same dialogue (serving.turns; its own tests)
    for policy in ("VAD rule", "VAD rule + predictor"):
        row = rows_by(results, "duplex", f"server ({policy}): assistant turn-taking F1@10")
        assert row.count == 1 and 0.0 <= row.value <= 1.0
        assert row.details["dialogues"] == 1
    example = results.duplex_examples[0]
    assert example.frame_ms == 40.0 and len(example.true_labels) == 100
    assert results.latency["minmo"]["end_to_end"]["mean"] == pytest.approx(704.0)
    assert results.latency["minmo"]["duplex_decision"]["count"] == 1


def test_pool_labels_keeps_events() -> None:
    labels = np.array([0, 0, 3, 1, 3, 3, 2, 0])
    assert pool_labels(labels, 2).tolist() == [LISTEN, RESPOND, CONTINUE, STOP]
    assert pool_labels(labels, 3).tolist() == [CONTINUE, RESPOND, STOP]


def test_limit_and_task_filter() -> None:
    items = [EvalItem(str(i), "asr", None, "x", "en", dataset="d") for i in range(5)]
    items += [EvalItem("t", "tts", None, "x", "en", dataset="d")]
    groups = make_groups(items, limit=2, tasks=["asr"])
    assert [(t, d, [i.id for i in m]) for t, d, m in groups] == [("asr", "d", ["0", "1"])]


def test_missing_capability_is_reported_not_scored(tmp_path: Path) -> None:
    class TextOnly(ScriptedModel):
        def capabilities(self) -> frozenset[str]:
            return frozenset({"speech_to_text"})

    root = build_suite(tmp_path)
    read = read_suite(SuiteSpec("synth-test", str(root)))
    model = TextOnly()
    out = run_evaluation([SystemUnderTest("minmo", model, None)], read, "m", "s",
                         RunSettings(tasks=["tts", "duplex", "asr"], show_progress=False))
    reasons = {s.task: s.reason for s in out.results.skipped}
    assert reasons == {"tts": "model has no 'synthesize' ability",
                       "duplex": "model has no 'duplex' ability"}
    assert {r.task for r in out.results.rows} == {"asr"}


def test_model_errors_count_as_failures(tmp_path: Path) -> None:
    class Flaky(ScriptedModel):
        def speech_to_text(self, task, wave, sample_rate, item):
            if item.id == "asr1":
                raise RuntimeError("decoder exploded")
            return super().speech_to_text(task, wave, sample_rate, item)

    read = read_suite(SuiteSpec("synth-test", str(build_suite(tmp_path))))
    out = run_evaluation([SystemUnderTest("minmo", Flaky(), None)], read, "m", "s",
                         RunSettings(tasks=["asr"], show_progress=False))
    row = rows_by(out.results, "asr", "WER", "synth/en")
    assert row.details["failed"] == 1
    assert row.value == pytest.approx(100 * 3 / 6)  # 1 error in asr0 + both words of asr1
    assert any("decoder exploded" in p and "asr1" in p for p in out.results.problems)


def test_progress_moves_item_by_item_within_a_group(tmp_path: Path, monkeypatch) -> None:
    """A group of thousands of clips (LibriSpeech test-clean) must not hold the bar at 0 %."""
    import minmo.eval.runner as runner_module

    class Bar:
        def __init__(self, *args, **kwargs):
            self.n, self.at_call = 0, []

        def update(self, n=1):
            self.n += n

        def set_postfix_str(self, s):
            pass

        def close(self):
            pass

    bar = Bar()
    monkeypatch.setattr(runner_module, "tqdm", lambda *a, **k: bar)

    class Watched(ScriptedModel):
        def speech_to_text(self, task, wave, sample_rate, item):
            bar.at_call.append(bar.n)
            if item.id == "asr1":
                raise RuntimeError("a failed item counts as done too")
            return super().speech_to_text(task, wave, sample_rate, item)

    read = read_suite(SuiteSpec("synth-test", str(build_suite(tmp_path))))
    asr = [i for i in read.items if i.task == "asr"]
    run_evaluation([SystemUnderTest("minmo", Watched(), None)], read, "m", "s",
                   RunSettings(tasks=["asr", "tts"], show_progress=False))
    assert bar.at_call[:len(asr)] == list(range(len(asr)))  # one step per item, not per group
    assert bar.n == len(asr) + sum(i.task == "tts" for i in read.items)


def test_cli_writes_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from minmo.cli.main import main

    root = build_suite(tmp_path / "corpus")
    monkeypatch.setattr(adapters, "load_eval_model", lambda spec, device="cpu", **options: ScriptedModel())
    out = tmp_path / "out"
    code = main(["eval", "--model", "scripted", "--suite", "synth-test", "--data", str(root),
                 "--limit", "20", "--tasks", "asr,lid,s2s_chat,duplex", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    assert (out / "results.json").is_file() and (out / "report.md").is_file()
    assert (out / "predictions.jsonl").is_file()
    assert len(list(out.glob("*.png"))) >= 3
    report = (out / "report.md").read_text()
    assert "## Full duplex" in report
    import torch

    assert "Versions: minmo 0.1.0, python " in report and f"torch {torch.__version__}" in report
    # spoken replies judged by the model itself: said, with the independent judge to use
    assert "--asr-judge faster-whisper:tiny.en" in capsys.readouterr().err
    threads = torch.get_num_threads()
    try:
        assert main(["eval", "--model", "scripted", "--suite", "synth-test", "--data", str(root),
                     "--limit", "5", "--tasks", "asr", "--out", str(tmp_path / "asr"),
                     "--no-progress", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "own recogniser" not in capsys.readouterr().err
    saved = json.loads((tmp_path / "asr" / "results.json").read_text())
    assert saved["settings"]["torch_threads"] == 1


def test_cli_passes_the_beam_and_refuses_what_cannot_be(tmp_path: Path, monkeypatch,
                                                        capsys) -> None:
    from minmo.cli.main import main

    root = build_suite(tmp_path / "corpus")
    seen: dict = {}

    def load(spec, device="cpu", **options):
        seen.update(options)
        return ScriptedModel()

    monkeypatch.setattr(adapters, "load_eval_model", load)
    args = ["eval", "--model", "m", "--suite", "synth-test", "--data", str(root), "--limit", "2",
            "--tasks", "asr", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args + ["--beam-size", "4", "--length-penalty", "0.5"]) == 0
    assert seen["beam_size"] == 4 and seen["length_penalty"] == 0.5
    seen.clear()
    capsys.readouterr()
    assert main(args + ["--beam-size", "0"]) != 0
    assert "--beam-size must be >= 1" in capsys.readouterr().err
    assert main(args + ["--beam-size", "2", "--ctc-weight", "0.3"]) != 0
    assert "not both" in capsys.readouterr().err
    assert seen == {}  # refused before any model is loaded


def test_cli_says_the_models_warning_before_its_numbers(tmp_path: Path, monkeypatch, capsys) -> None:
    """A model with random weights (or a weak one) is said on the console, as by chat."""
    from minmo.cli.main import main

    root = build_suite(tmp_path / "corpus")

    class Untrained(ScriptedModel):
        def describe(self) -> dict:
            return {"name": "tiny", "warning": "random weights — not a trained model"}

    monkeypatch.setattr(adapters, "load_eval_model", lambda spec, device="cpu", **options: Untrained())
    assert main(["eval", "--model", "tiny", "--suite", "synth-test", "--data", str(root),
                 "--limit", "2", "--tasks", "asr", "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    assert "minmo eval: WARNING: random weights — not a trained model" in capsys.readouterr().err


def test_cli_says_how_many_items_failed_beside_a_figure(tmp_path: Path, monkeypatch, capsys) -> None:
    """Items the model failed on are scored as empty outputs; the console says how many."""
    from minmo.cli.main import main

    root = build_suite(tmp_path / "corpus")

    class Failing(ScriptedModel):
        def speech_to_text(self, task, wave, sample_rate, item):
            raise RuntimeError("model broke")

    monkeypatch.setattr(adapters, "load_eval_model", lambda spec, device="cpu", **options: Failing())
    assert main(["eval", "--model", "x", "--suite", "synth-test", "--data", str(root),
                 "--limit", "3", "--tasks", "asr", "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    failed = [int(line.split("(")[-1].split()[0]) for line in lines if "failed: report.md" in line]
    assert len(failed) == len(lines) and sum(failed) == 3, lines  # per language set


def test_cli_refuses_to_print_numbers_without_a_model(tmp_path: Path, monkeypatch, capsys) -> None:
    from minmo.cli.main import main

    root = build_suite(tmp_path / "corpus")

    def unavailable(spec, device="cpu", **options):
        raise ModelUnavailableError("inference API not in this build")

    monkeypatch.setattr(adapters, "load_eval_model", unavailable)
    code = main(["eval", "--model", "tiny", "--suite", "synth-test", "--data", str(root),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    assert "inference API not in this build" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()


def test_limit_applies_per_task_before_the_language_split() -> None:
    items = [EvalItem(f"{lang}{i}", "asr", None, "x", lang, dataset="synth")
             for i in range(3) for lang in ("en", "de")]
    groups = make_groups(items, limit=3)
    assert [(d, [i.id for i in m]) for _, d, m in groups] == [
        ("synth/de", ["de0"]), ("synth/en", ["en0", "en1"])]


def test_packaged_whisper_judge_needs_no_path(tmp_path) -> None:
    """``--asr-judge faster-whisper:tiny.en`` is the Whisper the default model installs."""
    assert (Path(adapters.judge_model_dir("tiny.en")) / "model.bin").is_file()
    assert adapters.judge_model_dir(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError, match="faster-whisper:tiny.en"):
        adapters.make_judge("whisper", ScriptedModel())


def test_whisper_judge_reads_the_same_audio_the_same_way(tmp_path) -> None:
    """The judge decodes greedily only: on reversed speech, Whisper's default temperature
    fallback samples (unseeded), and five reads of one clip gave five different texts."""
    import shutil
    import subprocess

    pytest.importorskip("faster_whisper")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/install.sh installs it)")
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "the quick brown fox jumps over the lazy dog "
                    "while seven cats watch from the garden wall"], check=True)
    wave, rate = sf.read(path, dtype="float32")
    judge = adapters.make_judge("faster-whisper:tiny.en", ScriptedModel())
    assert "lazy dog" in judge.transcribe(wave, rate, "en")  # it hears speech
    backwards = wave[::-1].copy()  # speech-like, but no words: the fallback's hard case
    reads = {judge.transcribe(backwards, rate, "en") for _ in range(4)}
    assert len(reads) == 1 and reads.pop()


def test_baselines_are_a_checked_comma_list() -> None:
    import argparse

    from minmo.cli.eval import _baselines

    assert _baselines("none") == []
    assert _baselines("text, cascade,text") == ["text", "cascade"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown baseline oracle"):
        _baselines("cascade,oracle")


def test_only_a_file_named_for_llama_questions_is_reported_as_the_papers_set(tmp_path) -> None:
    from minmo.eval.paper import format_paper_cell
    from minmo.eval.runner import qa_dataset_name

    audio = tmp_path / "q.wav"
    sf.write(audio, np.zeros(1600, np.float32), 16000)
    row = json.dumps({"id": "q", "audio": str(audio), "answer": "Paris"}) + "\n"
    for name, dataset in (("llama_questions.jsonl", "llama-questions"),
                          ("open_qa.jsonl", "open_qa")):
        (tmp_path / name).write_text(row)
        read = read_suite(SuiteSpec("llama-questions", str(tmp_path / name)))
        assert {i.dataset for i in read.items} == {dataset}
        assert {i.task for i in read.items} == {"s2t_chat", "s2s_chat"}
    assert qa_dataset_name(Path("llama-questions/test.jsonl")) == "llama-questions"
    assert format_paper_cell("spoken_qa_s2t", "S2T accuracy", "llama-questions") == "78.90 (same set)"
    assert "same set" not in format_paper_cell("spoken_qa_s2t", "S2T accuracy", "open_qa")
