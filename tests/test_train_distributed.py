"""Acceptance 6: ``torchrun --nproc_per_node 2`` (gloo, CPU) on the tiny config, with FSDP2
and with DDP, gives the loss curve of one process on the same global batch.

Two ranks with ``batch_size=1`` take global batches ``2k`` and ``2k+1`` (minmo.data's
sampler gives rank ``r`` batches ``r, r+R, ...``); one process with ``grad_accum=2`` takes
the same two per step. Both average the two micro-batch losses, so the curves and the
parameters agree up to float summation order. The stage is ``s2t_sft`` so the FSDP path also
writes the LoRA adapters from gathered shards. The one-process run is shared by both tests.

Validation runs on 3 batches at steps 2 and 4: rank 0 takes batches 0 and 2, rank 1 batch 1
and then repeats it with weight 0 (FSDP needs every rank in each forward pass); the reduced
``valid_loss`` equals the one process's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from minmo.checkpoints import load_tensors
from minmo.config import load_train_config
from minmo.models.builders import minmo_tiny
from minmo.training import checkpointing as ckpt
from minmo.training.loop import METRICS_FILE, train
from minmo.training.toydata import write_toy_corpus

STEPS = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    valid = write_toy_corpus(root / "valid", num_examples=3, seed=1)
    return {**write_toy_corpus(root / "train", num_examples=6), "valid": valid["asr"]}


CONFIG = "configs/train/s2t_sft.yaml"


def _overrides(corpus, out, accum):
    return ["init=null", f"data.train=[{corpus['asr']}]", "data.batch_size=1",
            "data.num_workers=0", f"data.valid=[{corpus['valid']}]", "valid_every=2",
            f"optim.max_steps={STEPS}", "optim.warmup_steps=1", "optim.lr=0.01",
            f"optim.grad_accum={accum}", f"save_every={STEPS}", "log_every=1",
            "progress=false", f"output_dir={out}"]


def _curve(out):
    return [json.loads(x)["loss"] for x in (out / METRICS_FILE).read_text().splitlines()]


def _valid(out):
    lines = [json.loads(x) for x in (out / METRICS_FILE).read_text().splitlines()]
    return {x["step"]: (x["valid_loss"], x["valid_batches"]) for x in lines if "valid_loss" in x}


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    """The reference: one process, ``grad_accum=2``."""
    one = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(load_train_config(CONFIG, _overrides(corpus, one, 2)))
    finally:
        torch.set_num_threads(threads)
    curve = _curve(one)
    assert len(curve) == STEPS and result.losses == pytest.approx(curve, rel=1e-6)
    assert curve[-1] < curve[0]  # it trained
    valid = _valid(one)
    assert list(valid) == [2, 4] and [b for _l, b in valid.values()] == [3, 3]
    return one


def _torchrun(corpus, out, mode):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "minmo.cli.train", CONFIG, *_overrides(corpus, out, 1), f"distributed={mode}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        # torchrun starts each worker in its own session: SIGTERM lets torchrun stop them (a
        # SIGKILL would leave them running, holding the pipes, and this test waiting forever)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"torchrun {mode} did not finish in 300 s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    assert f"done: steps={STEPS}" in stdout
    assert f"distributed: {mode} over 2 processes (gloo)" in stderr
    state = json.loads((ckpt.checkpoint_dir(out, STEPS) / ckpt.STATE_FILE).read_text())
    assert state["world_size"] == 2
    assert state["versions"]["torch"] == torch.__version__  # what made the checkpoint


def _assert_same_run(two, one):
    """Loss curve, validation and trained parameters of ``two`` equal ``one``'s."""
    assert _curve(two) == pytest.approx(_curve(one), rel=1e-5)
    valid_two, valid_one = _valid(two), _valid(one)
    assert {k: b for k, (_l, b) in valid_two.items()} == {2: 3, 4: 3}
    assert [v[0] for v in valid_two.values()] == pytest.approx(
        [v[0] for v in valid_one.values()], rel=1e-5)
    a = load_tensors(ckpt.checkpoint_dir(two, STEPS) / ckpt.TRAINABLE_FILE)
    b = load_tensors(ckpt.checkpoint_dir(one, STEPS) / ckpt.TRAINABLE_FILE)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    # the adapters each mode wrote load into a fresh model through peft
    fresh = minmo_tiny()
    fresh.llm.load_lora(ckpt.checkpoint_dir(two, STEPS) / ckpt.LORA_DIR)
    params = dict(fresh.named_parameters())
    assert any("lora_" in k for k in a)
    for k, v in a.items():
        if "lora_" in k:
            torch.testing.assert_close(params[k].detach(), v, rtol=0, atol=0, msg=k)


def test_torchrun_fsdp_two_processes_match_one(corpus, one_process, tmp_path):
    _torchrun(corpus, tmp_path / "fsdp", "fsdp")
    _assert_same_run(tmp_path / "fsdp", one_process)


def test_torchrun_ddp_two_processes_match_one(corpus, one_process, tmp_path):
    _torchrun(corpus, tmp_path / "ddp", "ddp")
    _assert_same_run(tmp_path / "ddp", one_process)
