"""Duplex decisions: thresholds over the argmax, and the threshold tuning script."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from minmo.models.duplex import Decision, decide

REPO = Path(__file__).resolve().parents[1]


def test_thresholds_decide_rare_switches_below_the_argmax() -> None:
    probs = torch.tensor([[0.70, 0.25, 0.02, 0.03],   # listen wins the argmax; respond at 0.25
                          [0.05, 0.01, 0.30, 0.64],   # continue wins; stop at 0.30
                          [0.10, 0.40, 0.45, 0.05],   # both reach their thresholds: stop first
                          [0.90, 0.05, 0.01, 0.04]])
    assert decide(probs).tolist() == [Decision.LISTEN, Decision.CONTINUE, Decision.STOP, Decision.LISTEN]
    assert decide(probs, respond_threshold=0.2).tolist() == [
        Decision.RESPOND, Decision.CONTINUE, Decision.RESPOND, Decision.LISTEN]
    assert decide(probs, 0.2, 0.3).tolist() == [
        Decision.RESPOND, Decision.STOP, Decision.STOP, Decision.LISTEN]
    assert decide(probs[None], 0.2, 0.3).shape == (1, 4)


def test_tune_script_scores_the_grid_from_one_pass(tmp_path: Path) -> None:
    from minmo.training.toydata import write_toy_corpus

    spec = importlib.util.spec_from_file_location("tune_duplex", REPO / "scripts" / "tune_duplex.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    manifests = write_toy_corpus(tmp_path / "toy", num_examples=2)
    out = tmp_path / "grid.json"
    threads = torch.get_num_threads()
    try:
        assert script.main(["--model", "tiny", "--data", str(manifests["duplex"]), "--json", str(out),
                            "--threads", "1"]) == 0
        assert script.main(["--model", "tiny", "--data", str(manifests["duplex"]), "--offline",
                            "--json", str(tmp_path / "offline.json"), "--vad-rule",
                            "--barge-in-ms", "240,600", "--predictor-stop"]) == 0
    finally:
        torch.set_num_threads(threads)
    offline = json.loads((tmp_path / "offline.json").read_text())
    assert offline["features"] == "offline" and len(offline["grid"]) == len(script.GRID) ** 2
    # the server replayed under 3 policies x 2 barge-in spans, each with all duplex scores
    server = offline["server"]
    assert len(server) == 6 and sum("barge-in 600 ms" in name for name in server) == 3
    assert all(set(row) >= {"user_turn_taking", "barge_in_latency"} for row in server.values())
    report = json.loads(out.read_text())
    assert report["features"] == "streaming"
    assert report["dialogues"] == 2 and len(report["grid"]) == len(script.GRID) ** 2
    for row in report["grid"]:
        assert 0.0 <= row["assistant_f1"] <= 1.0 and 0.0 <= row["user_f1"] <= 1.0
    assert report["best"]["objective"] == max(r["objective"] for r in report["grid"])
    # a threshold of 0.1 says RESPOND far more often than a random model's argmax: scores move
    objectives = {(r["respond_threshold"], r["stop_threshold"]): r["objective"] for r in report["grid"]}
    assert len(set(np.round(list(objectives.values()), 6))) > 1
