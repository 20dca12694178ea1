"""The tiny speech recipe (``scripts/train_speech_tiny.py``) end to end on a toy corpus: every
phase runs one step (a budget spent after the first step), in the order that makes each
phase's inputs (the tokenizer before the flow, the flow and a vocoder before ``vocoder_ft``),
then the evaluation writes its report, ``trained.yaml`` and samples."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from minmo.config import load_model_config

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["the cat sat on the mat", "a dog runs in the park", "we eat bread at noon", "my sister walks home"]


def _script():
    spec = importlib.util.spec_from_file_location("train_speech_tiny", REPO / "scripts" / "train_speech_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _corpus(root: Path) -> Path:
    """train/valid/test splits like ``minmo data synth``'s: the assistant's speech (tts rows
    with ``target_audio``) and ASR rows of two other voices, as tones with a formant-like sweep."""
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        (root / split).mkdir(parents=True)
        tts, asr = [], []
        for i, text in enumerate(TEXTS):
            for voice in ("assistant", "v1-s170", "v2-s150"):
                t = np.arange(int(24000 * 0.8)) / 24000
                f = 110 + 40 * i + 20 * len(voice) + 30 * np.sin(2 * np.pi * 3 * t)
                wave = 0.3 * np.sin(2 * np.pi * np.cumsum(f) / 24000) + 0.01 * rng.standard_normal(t.size)
                path = root / split / f"{voice}-{i}.wav"
                sf.write(path, wave.astype(np.float32), 24000)
                uid = f"{split}-{voice}-{i}"
                if voice == "assistant":
                    tts.append({"id": uid, "task": "tts", "text": text, "target_audio": str(path)})
                else:
                    asr.append({"id": uid, "task": "asr", "text": text, "audio": str(path),
                                "speaker": voice, "language": "en"})
        for name, rows in (("tts", tts), ("asr", asr)):
            (root / split / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_every_phase_runs_in_order_and_the_evaluation_reports(tmp_path, monkeypatch, capsys):
    script = _script()
    data, out, samples = _corpus(tmp_path / "data"), tmp_path / "run", tmp_path / "samples"
    minutes = [f"{phase}=1e-6" for phase in script.PHASES]  # each phase stops after one step
    # --init flow=FILE: the flow phase starts from given weights (here a flow of another seed)
    torch.manual_seed(123)
    shapes = load_model_config(script.write_model_config(tmp_path, "tiny", 0.5))
    start = {k: v.clone() for k, v in script.ChunkFlowMatching(shapes.flow).state_dict().items()}
    save_file(start, tmp_path / "flow_init.safetensors")
    monkeypatch.setattr(sys, "argv", ["train_speech_tiny.py", "--data", str(data), "--out", str(out),
                                      "--tokenizer", "tiny", "--samples", str(samples), "--eval-limit", "2",
                                      "--flow-prior", "0.5", "--minutes", *minutes,
                                      "--init", f"flow={tmp_path / 'flow_init.safetensors'}"])
    monkeypatch.setattr(script, "make_recogniser", lambda: None)  # the CTC judge only: no Whisper here
    script.main()
    for phase in script.PHASES:
        assert (out / phase / "checkpoints").is_dir(), phase
    report = json.loads((out / "report.json").read_text())
    assert {"assistant", "other"} <= set(report["summary"])
    assert all("ctc_round_trip" in row for row in report["rows"]) and len(report["rows"]) == 4
    assert set(report["summary"]["trained"]) == set(script.PHASES)
    assert all(p["steps"] == 1 for p in report["summary"]["trained"].values())
    flow_step1 = load_file(next((out / "flow" / "checkpoints").iterdir()) / "trainable.safetensors")
    assert flow_step1.keys() == start.keys()
    assert max((flow_step1[k] - start[k]).abs().max().item() for k in start) < 1e-3  # one warm-up step away
    trained = load_model_config(out / "trained.yaml")
    assert "vocoder_ft" in trained.vocoder.path and "flow_spk" in trained.flow.path
    assert trained.flow.prior_loss_weight == 0.5
    assert "prior_loss" in json.loads((out / "flow" / "metrics.jsonl").read_text().splitlines()[0])
    assert sorted(p.name for p in samples.glob("*.png"))[:2] == ["speech_tiny_0_real.png", "speech_tiny_0_roundtrip.png"]

    # --ctc-judge: another tokenizer's CTC reads the same audio; judged by the run's own
    # tokenizer, its columns repeat the run's CTC columns word for word
    monkeypatch.setattr(sys, "argv", ["train_speech_tiny.py", "--data", str(data), "--out", str(out),
                                      "--tokenizer", "tiny", "--samples", str(samples), "--eval-limit", "2",
                                      "--flow-prior", "0.5", "--minutes", *minutes, "--stages", "eval",
                                      "--ctc-judge", str(script.latest_checkpoint(out / "tokenizer"))])
    script.main()
    judged = json.loads((out / "report.json").read_text())
    assert judged["summary"]["ctc_judge"].endswith(script.latest_checkpoint(out / "tokenizer").name)
    for row in judged["rows"]:
        assert (row["judge_on_real"], row["judge_round_trip"]) == (row["ctc_on_real"], row["ctc_round_trip"])
    assert judged["summary"]["assistant"]["wer_judge_round_trip"] == judged["summary"]["assistant"]["wer_ctc_round_trip"]

    # the inference sweep reads the same runs
    spec = importlib.util.spec_from_file_location("sweep", REPO / "scripts" / "speech_inference_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    monkeypatch.setattr(sys, "argv", ["speech_inference_sweep.py", "--data", str(data), "--out", str(out),
                                      "--eval-limit", "2", "--settings", "chunk10", "prompt", "mu"])
    sweep.main()
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["setting"] for x in lines][-5:] == ["real", "vocoder_copy", "chunk10", "prompt", "mu"]
    assert all(0.0 <= x["assistant"] and 0.0 <= x["other"] for x in lines[-5:])


def test_vocoder_ft_needs_its_inputs(tmp_path, monkeypatch):
    """Run alone before the flow exists, ``vocoder_ft`` stops with a clear message."""
    script = _script()
    data = _corpus(tmp_path / "data")
    argv = ["train_speech_tiny.py", "--data", str(data), "--out", str(tmp_path / "run"), "--tokenizer", "tiny",
            "--stages", "vocoder_ft"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="no checkpoint; run the stage"):
        script.main()
    # --init names a phase and an existing file; given weights do not replace the flow's mels
    weights = tmp_path / "vocoder.safetensors"
    save_file({"x": torch.zeros(1)}, weights)
    for pair, message in ((f"vocoder_ft={tmp_path / 'none.safetensors'}", "is not a file"),
                          (f"vocoderft={weights}", "PHASE one of"), ("vocoder_ft=", "PHASE one of"),
                          (f"vocoder_ft={weights}", "run the stage of phase 'flow_anneal' first")):
        monkeypatch.setattr(sys, "argv", [*argv, "--init", pair])
        with pytest.raises(SystemExit, match=message):
            script.main()
