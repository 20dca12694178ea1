"""Acceptance 5: 20 steps straight == 10 steps, process SIGKILLed, resumed for 10 (as
subprocesses through the CLI), with dropout on so that RNG restoration matters, a DataLoader
worker, gradient accumulation, LoRA adapters and a validation pass every 5 steps (which must
not move the training RNG)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from minmo.checkpoints import load_tensors
from minmo.config import load_model_config, save_yaml
from minmo.training import checkpointing as ckpt
from minmo.training.loop import KILL_ENV, METRICS_FILE
from minmo.training.toydata import write_toy_corpus


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (KILL_ENV, "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    return env


def _train(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minmo.cli.train", *args], env=_env(**env),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    corpus = write_toy_corpus(root / "data", num_examples=8)
    model_cfg = load_model_config("tiny")
    model_cfg.projector = replace(model_cfg.projector, dropout=0.1)
    model_cfg.llm.lora = replace(model_cfg.llm.lora, dropout=0.1)
    save_yaml(model_cfg, root / "tiny_dropout.yaml")
    common = ["configs/train/s2t_sft.yaml", f"model={root / 'tiny_dropout.yaml'}", "init=null",
              f"data.train=[{corpus['asr']}]", "data.batch_size=2", "data.num_workers=1",
              f"data.valid=[{corpus['asr']}]", "valid_every=5", "valid_max_batches=2",
              "optim.max_steps=20", "optim.warmup_steps=3", "optim.grad_accum=2",
              "optim.lr=0.003", "save_every=10", "log_every=1", "progress=false"]
    return root, common


def test_kill_and_resume_equals_straight_run(setup):
    root, common = setup
    straight = _train([*common, f"output_dir={root / 'a'}"])
    assert straight.returncode == 0, straight.stderr
    assert "done: steps=20" in straight.stdout

    killed = _train([*common, f"output_dir={root / 'b'}"], **{KILL_ENV: "10"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in ckpt.list_checkpoints(root / "b")] == ["step_00000010"]

    resumed = _train([*common, f"output_dir={root / 'b'}"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "at step 10" in resumed.stderr

    final_a = ckpt.checkpoint_dir(root / "a", 20)
    final_b = ckpt.checkpoint_dir(root / "b", 20)
    a, b = (load_tensors(d / ckpt.TRAINABLE_FILE) for d in (final_a, final_b))
    assert a.keys() == b.keys() and any("lora_" in k for k in a)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst == 0.0, f"parameters differ by {worst}"  # bit-exact, validation included
    # the first step moved the parameters away from their start: the comparison is not vacuous
    start = load_tensors(ckpt.checkpoint_dir(root / "b", 10) / ckpt.TRAINABLE_FILE)
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4

    curves, valid = [], []
    for run in ("a", "b"):
        lines = [json.loads(x) for x in (root / run / METRICS_FILE).read_text().splitlines()]
        assert [x["step"] for x in lines] == list(range(1, 21))
        curves.append([x["loss"] for x in lines])
        valid.append({x["step"]: x["valid_loss"] for x in lines if "valid_loss" in x})
    assert curves[0] == pytest.approx(curves[1], abs=1e-6)
    assert list(valid[0]) == [5, 10, 15, 20] and valid[0] == pytest.approx(valid[1], abs=1e-6)
    assert "valid_loss=" in straight.stdout and "valid_loss=" in resumed.stdout

    # LoRA adapters are saved on their own, in peft layout, equal to the trained tensors
    lora_a = load_tensors(final_a / ckpt.LORA_DIR / "adapter_model.safetensors")
    lora_b = load_tensors(final_b / ckpt.LORA_DIR / "adapter_model.safetensors")
    assert lora_a.keys() == lora_b.keys() and all(k.startswith("base_model.model.") for k in lora_a)
    assert all(torch.allclose(lora_a[k], lora_b[k], atol=1e-6) for k in lora_a)
    assert json.loads((final_a / ckpt.LORA_DIR / "adapter_config.json").read_text())["r"] == 4
    state = json.loads((final_b / ckpt.STATE_FILE).read_text())
    assert state["step"] == 20 and state["stage"] == "s2t_sft"
