"""``minmo compare``: metrics recomputed from two runs' predictions, and the paired bootstrap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minmo.eval import adapters, metrics
from minmo.eval.compare import compare_runs, format_comparison, read_predictions
from minmo.eval.runner import RunSettings, SuiteSpec, SystemUnderTest, read_suite, run_evaluation
from minmo.eval.runner import write_predictions
from test_eval_runner import ScriptedModel, build_suite


def write_run(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "predictions.jsonl").write_text(
        "".join(json.dumps({"system": "minmo", "dataset": "synth", **r}) + "\n" for r in rows))
    return path


def tts_rows(heard: list[str], texts: list[str]) -> list[dict]:
    return [{"task": "tts", "id": f"t{i}", "text": t, "heard": h, "language": "en"}
            for i, (t, h) in enumerate(zip(texts, heard))]


TEXTS = [f"please turn on the {c} {r} light"  # 60 texts of seven words, no digits
         for c in ("red", "green", "blue", "white", "warm", "soft")
         for r in ("kitchen", "hall", "porch", "garage", "office", "attic", "garden", "study",
                   "bedroom", "cellar")]


def test_metrics_are_the_evals_own_and_a_run_equals_itself(tmp_path: Path) -> None:
    read = read_suite(SuiteSpec("synth-test", str(build_suite(tmp_path / "corpus"))))
    model = ScriptedModel()
    out = run_evaluation([SystemUnderTest("minmo", model, adapters.SelfJudge(model))], read,
                         "scripted", "synth-test", RunSettings(k=10, show_progress=False))
    write_predictions(tmp_path / "run" / "predictions.jsonl", out.predictions)
    run = read_predictions(tmp_path / "run")
    result = compare_runs(run, run, samples=200)
    assert result.only_a == result.only_b == 0
    compared = {(m.dataset, m.metric) for m in result.metrics}
    # every per-item metric of the eval: WER (en, de), BLEU, S2T/S2S accuracy, reply WER,
    # TTS WER, the classification views and instruction following
    assert {("synth/en", "WER"), ("synth/de", "WER"), ("synth", "BLEU"),
            ("synth", "S2T accuracy"), ("synth", "S2S accuracy"),
            ("synth", "reply speech WER"), ("synth", "accuracy")} <= compared
    for m in result.metrics:
        rows = [r for r in out.results.rows if r.dataset == m.dataset and r.metric == m.metric
                and pytest.approx(r.value) == m.a]
        assert rows, f"{m.task} {m.dataset} {m.metric} = {m.a}: not a value minmo eval reported"
        assert m.delta == 0 and m.ci_low == m.ci_high == 0
        assert m.verdict == "no difference shown"


def test_a_better_run_is_shown_and_noise_is_not(tmp_path: Path) -> None:
    # A drops the last word of every text; B reads every text
    clipped = [t.rsplit(" ", 1)[0] for t in TEXTS]
    a = read_predictions(write_run(tmp_path / "a", tts_rows(clipped, TEXTS)))
    b = read_predictions(write_run(tmp_path / "b", tts_rows(TEXTS, TEXTS)))
    better = compare_runs(a, b, samples=2000).metrics[0]
    assert better.metric == "WER" and better.n == 60
    assert better.a == pytest.approx(100 / 7) and better.b == 0
    assert better.ci_high < 0 and better.verdict == "B better"
    assert (better.b_better, better.a_better, better.ties) == (60, 0, 0)
    assert compare_runs(b, a, samples=2000).metrics[0].verdict == "A better"
    # B reads item 0 better and item 1 worse than A: a difference these items cannot show
    x = read_predictions(write_run(tmp_path / "x", tts_rows([clipped[0]] + TEXTS[1:], TEXTS)))
    y = read_predictions(write_run(tmp_path / "y", tts_rows(
        TEXTS[:1] + [clipped[1]] + TEXTS[2:], TEXTS)))
    noise = compare_runs(x, y, samples=2000).metrics[0]
    assert noise.delta == 0 and noise.ci_low < 0 < noise.ci_high
    assert noise.verdict == "no difference shown"
    assert (noise.b_better, noise.a_better, noise.ties) == (1, 1, 58)
    # the interval is a function of the seed
    assert compare_runs(x, y, samples=500, seed=3).metrics[0].ci_low == \
        compare_runs(x, y, samples=500, seed=3).metrics[0].ci_low


def test_reply_wer_leaves_out_empty_replies_as_the_eval_does(tmp_path: Path) -> None:
    rows = [{"task": "s2s_chat", "id": "q0", "answers": ["4"], "reply_text": "It is 4.",
             "heard": "it is four", "correct": False},
            {"task": "s2s_chat", "id": "q1", "answers": ["5"], "reply_text": " ",
             "heard": "some words", "correct": False},
            {"task": "s2s_chat", "id": "q2", "answers": ["6"], "reply_text": "6.",
             "heard": "6", "correct": True}]
    run = read_predictions(write_run(tmp_path / "r", rows))
    by_name = {m.metric: m for m in compare_runs(run, run, samples=10).metrics}
    edits = metrics.corpus_edits(["It is 4.", "6."], ["it is four", "6"])
    assert by_name["reply speech WER"].a == pytest.approx(100 * edits.rate)
    assert by_name["S2S accuracy"].a == pytest.approx(100 / 3)


def test_runs_heard_by_different_judges_are_flagged(tmp_path: Path) -> None:
    def judged(name, judge):
        return read_predictions(write_run(tmp_path / name, [
            dict(r, **({"judge": judge} if judge else {})) for r in tts_rows(TEXTS, TEXTS)]))

    greedy = judged("a", "faster-whisper:tiny.en (greedy)")
    assert compare_runs(greedy, judged("b", "faster-whisper:tiny.en (greedy)"),
                        samples=10).judges_differ == []
    mixed = compare_runs(greedy, judged("c", "self (minmo-small)"), samples=10)
    assert mixed.judges_differ == ["tts (synth): A by faster-whisper:tiny.en (greedy), "
                                   "B by self (minmo-small)"]
    assert "warning: the runs' ASR judges differ" in format_comparison(mixed)
    old = compare_runs(judged("d", None), greedy, samples=10)  # predictions of older runs
    assert len(old.judges_differ) == 1 and "unrecorded judge" in old.judges_differ[0]
    assert old.as_dict()["judges_differ"] == old.judges_differ
    # the eval writes the judge into every judged prediction
    read = read_suite(SuiteSpec("synth-test", str(build_suite(tmp_path / "corpus"))))
    model = ScriptedModel()
    out = run_evaluation([SystemUnderTest("minmo", model, adapters.SelfJudge(model))], read,
                         "scripted", "synth-test", RunSettings(k=10, show_progress=False))
    assert out.results.settings["versions"]["minmo"] == "0.1.0"  # results name their libraries
    # and the thread count: sampled speech tokens differ with it (summation order)
    import torch

    assert out.results.settings["torch_threads"] == torch.get_num_threads()
    heard = [p for p in out.predictions if "heard" in p]
    assert {p["task"] for p in heard} == {"tts", "s2s_chat"}
    assert {p["judge"] for p in heard} == {f"self ({model.name})"}


def test_runs_of_different_test_sets_are_refused(tmp_path: Path) -> None:
    a = read_predictions(write_run(tmp_path / "a", tts_rows(TEXTS, TEXTS)))
    other = ["switch off the fan"] + TEXTS[1:]
    b = read_predictions(write_run(tmp_path / "b", tts_rows(other, other)))
    with pytest.raises(ValueError, match="not the same test set"):
        compare_runs(a, b)
    c = read_predictions(write_run(tmp_path / "c", [dict(r, id="x" + r["id"])
                                                    for r in tts_rows(TEXTS, TEXTS)]))
    with pytest.raises(ValueError, match="share no item"):
        compare_runs(a, c)


def test_cli_prints_the_table_and_writes_json(tmp_path: Path, capsys) -> None:
    from minmo.cli.main import main

    a = write_run(tmp_path / "a", tts_rows([t.rsplit(" ", 1)[0] for t in TEXTS], TEXTS))
    b = write_run(tmp_path / "b", tts_rows(TEXTS, TEXTS)[:50])
    assert main(["compare", str(a), str(b), "--samples", "300", "--json",
                 str(tmp_path / "c.json")]) == 0
    printed = capsys.readouterr().out
    assert "| tts | synth | WER ↓ | 50 |" in printed and "B better" in printed
    assert "10 item(s) only in A, 0 only in B" in printed
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["metrics"][0]["verdict"] == "B better" and saved["only_a"] == 10
    assert "different settings" not in printed and saved["settings_differ"] == []
    # runs made with other thread counts or library versions are flagged
    settings = {"torch_threads": 1, "versions": {"torch": "2.13.0", "peft": "0.21.2"}}
    (a / "results.json").write_text(json.dumps({"settings": settings}))
    (b / "results.json").write_text(json.dumps({"settings": {
        "torch_threads": 2, "versions": {"torch": "2.13.0", "peft": "0.22.0"}}}))
    assert main(["compare", str(a), str(b), "--samples", "300"]) == 0
    printed = capsys.readouterr().out
    assert ("warning: the runs were made with different settings" in printed
            and "torch threads: A 1, B 2; peft: A 0.21.2, B 0.22.0" in printed)
    (b / "results.json").write_text(json.dumps({"settings": settings}))
    assert main(["compare", str(a), str(b), "--samples", "300"]) == 0
    assert "different settings" not in capsys.readouterr().out
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "no predictions.jsonl" in capsys.readouterr().err
    assert format_comparison(compare_runs(read_predictions(a), read_predictions(a),
                                          samples=5)).count("\n| tts |") == 1
