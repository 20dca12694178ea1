"""Speech targets by an ASR reward (``minmo.training.asr_reward``,
``scripts/judged_speech_targets.py``): selection rules, and the takes spoken by a real
(tiny, random) runtime."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from minmo.training.asr_reward import (Take, best_take, judge_row, read_reply_rows, same_text,
                                       speak, take_wer, target_row)
from minmo.training.toydata import write_toy_corpus

ROOT = Path(__file__).resolve().parents[1]


def test_take_wer_and_same_text_use_the_wer_normaliser():
    assert take_wer("3 plus 4 is 7.", "three plus four is seven") == 0.0
    # numbers become words: "thirty plus four is thirty four", 2 errors in 6
    assert take_wer("30 plus 4 is 34.", "30 plus 40, 34.") == pytest.approx(2 / 6)
    assert take_wer("", "hello") == 1.0
    assert same_text("Ten is bigger.", "10 is bigger")
    assert not same_text("16 is bigger.", "41 is bigger.")


def _take(seed, wer, text="It is 7.", tokens=(1, 2)):
    return Take(seed, text, list(tokens), "heard", wer)


def test_best_take_lowest_wer_within_bound_and_right_text():
    takes = [_take(0, 0.2), _take(1, 0.0, text="It is 8."), _take(2, 0.1), _take(3, 0.1)]
    assert best_take("It is 7.", takes, max_wer=0.15).seed == 2  # 1 wrote another text
    assert best_take("It is 7.", takes, max_wer=0.0) is None
    assert best_take("It is 7.", [_take(0, 0.0, tokens=())], max_wer=0.0) is None
    assert best_take("It is 7.", [_take(1, 0.0), _take(0, 0.0)], max_wer=0.0).seed == 0


class ScriptedJudge:
    """Hears the row's reply on the takes listed in ``right`` (by call order), else noise."""

    name = "scripted"

    def __init__(self, reference: str, right: set[int]):
        self.reference, self.right, self.calls = reference, right, 0

    def transcribe(self, wave, sample_rate, language):
        assert wave.size > 0 and sample_rate > 0
        self.calls += 1
        return self.reference if self.calls - 1 in self.right else "static noise"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_corpus(tmp_path_factory.mktemp("toy"), num_examples=2)


def test_judge_row_keeps_the_take_the_judge_heard(rt, toy):
    base, row = toy["s2s"].parent, dict(read_reply_rows([toy["s2s"]])[0][1])
    said, greedy, _ = speak(rt, row, base, 0, 2.0)
    row["target"] = said  # what the random LLM writes, so its takes count
    takes, best = judge_row(rt, ScriptedJudge(said, {2}), row, base, samples=3, max_seconds=2.0)
    assert [t.seed for t in takes] == [0, 1, 2] and best is takes[2]
    again = speak(rt, row, base, 2, 2.0, top_k=25)[1]
    assert best.tokens == again  # the kept take is reproducible from its seed
    assert best.tokens != greedy  # and sampled, not the greedy take
    assert takes[0].tokens == greedy and takes[0].wer == 1.0


def test_judge_row_stops_when_the_reply_text_is_another(rt, toy):
    base, row = toy["s2s"].parent, dict(read_reply_rows([toy["s2s"]])[0][1])
    row["target"] = "A reply the random model never writes."
    judge = ScriptedJudge(row["target"], {0, 1, 2})
    takes, best = judge_row(rt, judge, row, base, samples=3, max_seconds=2.0)
    assert len(takes) == 1 and best is None and judge.calls == 1


def test_own_answers_judges_the_answer_the_model_wrote(rt, toy):
    base, row = toy["s2s"].parent, dict(read_reply_rows([toy["s2s"]])[0][1])
    said = speak(rt, row, base, 0, 2.0)[0]
    row["target"] = "A reply the random model never writes."
    takes, best = judge_row(rt, ScriptedJudge(said, {1}), row, base, samples=3, max_seconds=2.0,
                            own_answers=True)
    assert len(takes) == 3 and best is takes[1] and best.text == said
    assert target_row(row, base, best)["target"] == said


def test_a_tts_take_speaks_the_given_text(rt, toy):
    base, row = toy["tts"].parent, read_reply_rows([toy["tts"]])[0][1]
    takes, best = judge_row(rt, ScriptedJudge(row["text"], {0}), row, base, samples=2,
                            max_seconds=2.0)
    assert [t.text for t in takes] == [row["text"]] * 2 and best is takes[0]
    kept = target_row(row, base, best)
    assert kept["text"] == row["text"] and kept["speech_tokens"] == takes[0].tokens


def test_script_writes_report_and_resumes(toy, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("judged", ROOT / "scripts/judged_speech_targets.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "kept.tokens.jsonl"
    args = ["--model", "tiny", "--data", str(toy["tts"]), str(toy["s2s"]), "--asr-judge", "self",
            "--samples", "2", "--max-seconds", "1", "--limit", "3", "--out", str(out),
            "--no-progress"]
    assert script.main(args) == 0
    report = [json.loads(line) for line in open(tmp_path / "kept.report.jsonl")]
    assert len(report) == 3 and {r["task"] for r in report} <= {"tts", "s2s_chat"}
    assert all(1 <= len(r["takes"]) <= 2 for r in report)
    kept = [json.loads(line) for line in open(out)]
    assert len(kept) == sum(r["kept_seed"] is not None for r in report)
    assert all(t["tokens"] and set(t) >= {"seed", "text", "heard", "wer"}
               for r in report for t in r["takes"])  # every take's tokens, failed ones too
    kept_takes = {r["id"]: r["takes"][r["kept_seed"]] for r in report if r["kept_seed"] is not None}
    assert all(row["speech_tokens"] == kept_takes[row["id"]]["tokens"] for row in kept)
    assert script.main(args) == 0
    assert "0 rows to speak (3 done)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="tokens.jsonl"):
        script.main(args[:-3] + ["--out", str(tmp_path / "kept.jsonl")])
