"""Preference tuning of the speech output (stage ``s2s_dpo``): the DPO loss, the voice LM's
sequence log-probabilities, preference pairs from judged takes, and the stage through the
real loop and data pipeline."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from minmo.config import ConfigError, DataConfig, OptimConfig, TrainConfig, VoiceLMConfig
from minmo.data.manifest import parse_row
from minmo.models.voice_lm import VoiceTokenLM, dpo_loss
from minmo.training import checkpointing as ckpt
from minmo.training.asr_reward import Take, pair_row, preference_pair, report_takes
from minmo.training.loop import train
from minmo.training.toydata import write_toy_corpus

ROOT = Path(__file__).resolve().parents[1]


def test_dpo_loss_values_and_direction():
    pc, pr = torch.tensor([-1.0], requires_grad=True), torch.tensor([-3.0], requires_grad=True)
    rc, rr = torch.tensor([-2.0]), torch.tensor([-2.0])
    loss, margins = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert margins.item() == pytest.approx(1.0)  # 0.5 * ((-1 + 2) - (-3 + 2))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)))
    loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descent raises the preferred, lowers the other
    same, zero = dpo_loss(rc, rr, rc, rr, beta=0.1)
    assert same.item() == pytest.approx(math.log(2.0)) and zero.item() == 0.0


def test_sequence_logprobs_are_the_teacher_forced_cross_entropy():
    torch.manual_seed(0)
    lm = VoiceTokenLM(VoiceLMConfig(hidden_size=32, intermediate_size=64, num_layers=2,
                                    num_heads=2, num_kv_heads=1, speech_vocab=50)).eval()
    sem = torch.randn(2, 9, 32)
    sem_lens = torch.tensor([9, 6])
    speech = torch.randint(0, 50, (2, 23))
    speech_lens = torch.tensor([23, 11])
    with torch.no_grad():
        logp, counts = lm.sequence_logprobs(sem, sem_lens, speech, speech_lens)
    for b in range(2):
        alone = (sem[b:b + 1, :sem_lens[b]], sem_lens[b:b + 1], speech[b:b + 1, :speech_lens[b]],
                 speech_lens[b:b + 1])
        ce, _ = lm(*alone)
        # every speech token, a FILL after each full group of 15, and EOS
        full_groups = min((int(sem_lens[b]) - 1) // 5, int(speech_lens[b]) // 15)
        assert int(counts[b]) == int(speech_lens[b]) + full_groups + 1
        assert float(logp[b]) == pytest.approx(-ce.item() * int(counts[b]), rel=1e-4)
        with torch.no_grad():
            assert lm.sequence_logprobs(*alone)[0].item() == pytest.approx(logp[b].item(), rel=1e-4)


def _take(seed, wer, text="It is 7.", tokens=(1, 2)):
    return Take(seed, text, list(tokens), "heard", wer)


def test_preference_pair_best_against_worst_with_a_gap():
    takes = [_take(0, 0.2), _take(1, 0.6), _take(2, 0.0), _take(3, 0.6)]
    best, worst = preference_pair(takes, min_gap=0.2)
    assert (best.seed, worst.seed) == (2, 3)  # ties: lowest seed preferred, highest rejected
    assert preference_pair(takes, min_gap=0.7) is None
    assert preference_pair([_take(0, 0.0), _take(1, 1.0, tokens=())]) is None  # nothing spoken
    assert preference_pair([_take(0, 0.0), _take(1, 1.0, text="It is 8.")]) is None
    assert preference_pair([_take(0, 0.0)]) is None
    assert preference_pair(takes, text="It is 7.") is not None
    assert preference_pair(takes, text="It is 8.") is None  # a tts row's takes speak its text
    row = {"id": "r", "task": "s2s_chat", "audio": "a.wav", "target": "7.", "text": "q"}
    made = pair_row(row, Path("/data"), takes[2], takes[3])
    assert made["speech_tokens"] == [1, 2] and made["rejected_speech_tokens"] == [1, 2]
    assert made["target"] == "It is 7." and made["audio"] == "/data/a.wav"
    old = {"takes": [{"seed": 0, "text": "x", "tokens": 31, "heard": "x", "wer": 0.0}]}
    assert report_takes(old)[0].tokens == []  # a report that kept only token counts


def test_manifest_and_collate_carry_rejected_tokens(tmp_path):
    row = {"id": "t", "task": "tts", "text": "Hi.", "speech_tokens": [1, 2, 3],
           "rejected_speech_tokens": [4, 5]}
    assert parse_row(row, tmp_path).rejected_speech_tokens == [4, 5]
    with pytest.raises(Exception, match="rejected_speech_tokens"):
        parse_row({**row, "rejected_speech_tokens": [1.5]}, tmp_path)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """The toy corpus' s2s rows as preference pairs: their tokens preferred, other random
    tokens of another length rejected."""
    root = tmp_path_factory.mktemp("dpo")
    toy = write_toy_corpus(root / "data", num_examples=4, num_speech_tokens=20)
    rng = np.random.default_rng(5)
    rows = [json.loads(line) for line in open(toy["s2s"])]
    out = toy["s2s"].with_name("pairs.tokens.jsonl")
    with open(out, "w") as f:
        for row in rows:
            row["rejected_speech_tokens"] = rng.integers(0, 6561, 26).tolist()
            f.write(json.dumps(row) + "\n")
    with open(out.with_name("no_pairs.jsonl"), "w") as f:
        f.write(json.dumps({k: v for k, v in rows[0].items() if k != "rejected_speech_tokens"})
                + "\n")
        f.write(json.dumps({**rows[1], "rejected_speech_tokens": [7] * 9}) + "\n")
    return root, out


def _cfg(root, manifest, steps, name, **options):
    return TrainConfig(stage="s2s_dpo", output_dir=str(root / name), seed=3,
                       stage_options=options,
                       data=DataConfig(train=[str(manifest)], batch_size=4, num_workers=0),
                       optim=OptimConfig(lr=3e-3, warmup_steps=2, max_steps=steps,
                                         min_lr_ratio=0.1, weight_decay=0.0),
                       log_every=1000, save_every=5, progress=False)


def test_s2s_dpo_prefers_the_preferred_speech_and_keeps_its_reference(pairs):
    root, manifest = pairs
    result = train(_cfg(root, manifest, 12, "run", beta=0.5))
    # the policy starts as its reference: every margin is 0 and the loss log 2
    assert result.losses[0] == pytest.approx(math.log(2.0), abs=1e-5)
    assert result.losses[-1] < 0.5 * result.losses[0]
    trained = ckpt.read_checkpoint(ckpt.checkpoint_dir(root / "run", 12)).trainable
    assert trained and all(k.split(".")[0] in ("voice_lm", "output_projector") for k in trained)
    # a resumed run compares against the weights it started from, not the checkpoint's
    resumed = train(_cfg(root, manifest, 14, "run", beta=0.5))
    assert resumed.resumed_from is not None and resumed.losses[0] < 0.5 * math.log(2.0)


def test_s2s_dpo_needs_pairs_and_valid_options(pairs):
    root, manifest = pairs
    with pytest.raises(ConfigError, match="unknown key"):
        train(_cfg(root, manifest, 1, "bad_option", betta=0.1))
    with pytest.raises(ConfigError, match="beta must be > 0"):
        train(_cfg(root, manifest, 1, "bad_beta", beta=0.0))
    half = train(_cfg(root, manifest.with_name("no_pairs.jsonl"), 1, "half"))  # the row without a pair is bad
    assert half.steps == 1 and half.skipped_rows == 1


def test_script_writes_pairs_from_its_report(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("judged", ROOT / "scripts/judged_speech_targets.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    toy = write_toy_corpus(tmp_path / "toy", num_examples=2)
    from minmo.training.asr_reward import read_reply_rows

    rows = read_reply_rows([toy["tts"]])[:2]
    report = tmp_path / "kept.report.jsonl"
    with open(report, "w") as f:  # a judged run's report: every row done, so nothing is spoken
        for i, (_base, row) in enumerate(rows):
            takes = [{"seed": 0, "text": row["text"], "tokens": [1, 2, 3], "heard": "", "wer": 0.0},
                     {"seed": 1, "text": row["text"], "tokens": [4, 5], "heard": "", "wer": 0.1 + i}]
            f.write(json.dumps({"id": row["id"], "task": "tts", "reference": row["text"],
                                "kept_seed": 0, "takes": takes}) + "\n")
        f.write(json.dumps({"id": rows[0][1]["id"] + "x", "task": "tts", "takes": []}) + "\n")
    out = tmp_path / "pairs.tokens.jsonl"
    assert script.main(["--model", "tiny", "--data", str(toy["tts"]), "--limit", "2",
                        "--out", str(tmp_path / "kept.tokens.jsonl"), "--pairs", str(out),
                        "--no-progress"]) == 0
    assert "0 rows to speak (2 done)" in capsys.readouterr().out
    made = [json.loads(line) for line in open(out)]
    assert [r["id"] for r in made] == [rows[1][1]["id"]]  # the first pair's gap is under 0.2
    assert made[0]["speech_tokens"] == [1, 2, 3] and made[0]["rejected_speech_tokens"] == [4, 5]
