"""The report writer: results.json round trip, markdown tables with paper numbers, PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from minmo.eval.duplex_metrics import CONTINUE, RESPOND, STOP
from minmo.eval.latency import aggregate_latencies
from minmo.eval.paper import format_paper_cell
from minmo.eval.report import write_report
from minmo.eval.results import DuplexExample, EvalResults, MetricRow, SkippedTask


def fixture_results() -> EvalResults:
    """A small hand-made result set (a report-writer fixture, not model output)."""
    rng = np.random.default_rng(0)
    rows = [
        MetricRow("asr", "librispeech/test-clean", "minmo", "WER", 4.2, "%", False, 20,
                  {"per_speaker": {f"spk{i}": {"rate": 0.02 + 0.01 * i} for i in range(6)}}),
        MetricRow("asr", "librispeech/test-clean", "cascade", "WER", 5.1, "%", False, 20),
        MetricRow("asr", "synth", "minmo", "WER", float("nan"), "%", False, 0),
        MetricRow("s2tt", "fleurs/cmn_hans_cn->en_us", "minmo", "BLEU", 12.3, "BLEU", True, 20),
        MetricRow("lid", "synth", "minmo", "accuracy", 75.0, "%", True, 8,
                  {"labels": ["en", "zh", "de"], "matrix": [[3, 1, 0], [0, 2, 0], [1, 0, 1]]}),
        MetricRow("duplex", "synth", "minmo", "assistant turn-taking F1@10", 0.9, "F1", True, 4),
        MetricRow("duplex", "synth", "minmo", "turn-taking latency", 120.0, "ms", False, 4),
    ]
    true = np.zeros(300, dtype=int)
    true[40:120] = CONTINUE
    true[40] = RESPOND
    true[200:260] = CONTINUE
    true[200], true[230] = RESPOND, STOP
    pred = true.copy()
    pred[40], pred[43] = CONTINUE, RESPOND
    user = np.zeros(300, dtype=int)
    user[5:35] = 1
    user[150:195] = 1
    user[228:250] = 1
    samples = {"duplex_decision": list(rng.normal(260, 30, 40)),
               "first_text_token": list(rng.normal(110, 15, 40)),
               "end_to_end": list(rng.normal(850, 60, 40))}
    stats = aggregate_latencies(
        [{k: v[i] for k, v in samples.items()} for i in range(40)])
    return EvalResults(
        model="runs/tiny", suite="fixture", created="2026-01-01T00:00:00",
        settings={"limit": 20, "k": 10, "model_info[minmo]": {
                      "name": "runs/tiny", "source": "runs/tiny", "vocoder": "token2wav"},
                  "model_info[cascade]": {
                      "name": "cascade(runs/tiny)", "source": "runs/tiny", "vocoder": "token2wav",
                      "beam_size": 4, "length_penalty": 0.5,
                      "quantization": "int8 LLM weights: 211 linear layers"}}, rows=rows,
        skipped=[SkippedTask("tts", "synth", "minmo", "model has no 'synthesize'", 5)],
        problems=[f"x.jsonl:{i}: missing_file" for i in range(25)],
        latency={"minmo": {k: v.as_dict() for k, v in stats.items()}},
        latency_samples={"minmo": samples},
        duplex_examples=[DuplexExample("dlg-1", 10.0, user.tolist(),
                                       (true > 0).astype(int).tolist(), true.tolist(),
                                       pred.tolist())],
    )


def test_write_report_files_and_tables(tmp_path: Path) -> None:
    results = fixture_results()
    written = write_report(results, tmp_path)
    names = sorted(p.name for p in written["plots"])
    assert names == ["confusion_lid_synth_minmo.png", "duplex_dlg-1.png", "latency.png",
                     "speakers_asr_librispeech_test-clean_minmo.png", "tasks.png"]
    for p in written["plots"]:
        assert p.stat().st_size > 5000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((tmp_path / "results.json").read_text())
    assert data["rows"][2]["value"] is None  # NaN -> null, valid JSON
    back = EvalResults.from_json(data)
    assert math.isnan(back.rows[2].value)
    assert back.rows[0] == results.rows[0]
    assert back.duplex_examples[0].true_labels == results.duplex_examples[0].true_labels

    md = (tmp_path / "report.md").read_text()
    assert "| librispeech/test-clean | WER (%) ↓ | 4.20 | 5.10 | 1.74 (same set) | 20 |" in md
    assert "| synth | WER (%) ↓ | n/a | – |" in md
    assert "| 12.30 | – | 24.71 (same set) |" in md
    assert "0.80 (Alimeeting); 0.88 (Fisher); 0.99 (simulated)" in md
    assert "| duplex decision |" in md and "| 250 |" in md
    assert "model has no 'synthesize'" in md
    assert "… and 5 more" in md
    assert "![tasks](tasks.png)" in md
    assert "speech decoder `token2wav`, text decoded greedily." in md
    assert ("`cascade(runs/tiny)` from `runs/tiny`, speech decoder `token2wav`, text decoded "
            "by beam search of width 4 (length penalty 0.5); int8 LLM weights: 211 linear "
            "layers.") in md


def test_paper_cell_rules() -> None:
    assert format_paper_cell("asr", "WER", "librispeech/test-other") == "3.89 (same set)"
    assert format_paper_cell("asr", "WER", "synth").startswith("1.74 (LibriSpeech test-clean)")
    assert format_paper_cell("tts", "CER", "seed-tts-eval/zh") == "2.48 (same set)"
    assert format_paper_cell("ser", "accuracy", "synth") == "–"
    assert format_paper_cell("duplex", "assistant turn-taking F1@5", "synth") == "–"


def test_empty_results_still_write_json_and_markdown(tmp_path: Path) -> None:
    results = EvalResults(model="m", suite="s", created="now")
    written = write_report(results, tmp_path)
    assert written["plots"] == []
    assert (tmp_path / "results.json").is_file()
    assert "# minmo evaluation" in (tmp_path / "report.md").read_text()
