"""Acceptance 4: on the tiny config, every stage's loss falls by >= 90 % on a handful of
examples within a bounded number of CPU steps, through the real loop and data pipeline.

MinMo aligns *pretrained* parts, and with a random, frozen LLM or voice LM no trainable part
could lower the loss much (their output layers are frozen at random init). So, like the
paper, the frozen parts are pretrained first, here in a few dozen steps:

* text stages start from an LLM warmed up on "Repeat: <text>" -> <text> (a test-only stage
  ``lm_warmup`` that trains the ``llm`` group, registered through the stage hooks): the LLM
  learned to answer from what the user turn holds, and the stage must make speech
  embeddings say what the text said;
* ``t2s_projector`` starts from the voice LM of a ``t2s_full`` run, with a differently
  seeded LLM and output projector;
* ``t2s_full``, ``s2s`` and ``duplex`` train their whole output path from scratch.
"""

from __future__ import annotations

import json

import pytest
import torch

from minmo.checkpoints import load_tensors, save_tensors
from minmo.config import DataConfig, OptimConfig, TrainConfig
from minmo.training import checkpointing as ckpt
from minmo.models.builders import minmo_tiny
from minmo.models.embedding_ctc import norm_gap
from minmo.modules.transformer import padding_mask
from minmo.training.data_source import DataPosition
from minmo.training.loop import train
from minmo.training.manifest_data import build_manifest_source
from minmo.training.stages import STAGES, Stage, register_stage
from minmo.training.toydata import write_toy_corpus


def _run(root, stage, manifest, steps, lr, init=None, seed=1234, name=None):
    cfg = TrainConfig(stage=stage, output_dir=str(root / (name or stage)), init=init, seed=seed,
                      data=DataConfig(train=[str(manifest)], batch_size=4, num_workers=0),
                      optim=OptimConfig(lr=lr, warmup_steps=3, max_steps=steps,
                                        min_lr_ratio=0.1, weight_decay=0.0),
                      log_every=1000, save_every=100000, progress=False)
    return train(cfg)


def _assert_overfits(result, stage):
    first, last = result.losses[0], result.losses[-1]
    assert last <= 0.1 * first, f"{stage}: loss {first:.4f} -> {last:.4f} (< 90 % drop)"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("overfit")


@pytest.fixture(scope="module")
def corpus(root):
    return write_toy_corpus(root / "data", num_examples=4)


@pytest.fixture(scope="module")
def warm_llm(root, corpus):
    register_stage(Stage("lm_warmup", ("llm",), ("text",), "test only: LLM warm-up"),
                   replace=True)
    try:
        result = _run(root, "lm_warmup", corpus["lm"], steps=60, lr=1e-2)
    finally:
        STAGES.pop("lm_warmup", None)
    assert result.losses[-1] < 0.05
    return root / "lm_warmup"


@pytest.mark.parametrize("stage,lr", [("s2t_prealign", 1e-2), ("s2t_fullalign", 3e-3),
                                      ("s2t_sft", 1e-2)])
def test_text_stages_overfit(root, corpus, warm_llm, stage, lr):
    result = _run(root, stage, corpus["asr"], steps=30, lr=lr, init=str(warm_llm))
    _assert_overfits(result, stage)


def test_ctc_stage_puts_each_spoken_token_where_the_llm_reads_it(root, corpus):
    """``s2t_ctc`` (no LLM runs): after training, the token embeddings nearest the input
    projector's frames spell each row's transcript (greedy CTC), and the frames sit at the
    scale of real embeddings."""
    result = _run(root, "s2t_ctc", corpus["asr"], steps=100, lr=1e-2)
    _assert_overfits(result, "s2t_ctc")
    model = minmo_tiny()
    model.load_state_dict(load_tensors(ckpt.checkpoint_dir(root / "s2t_ctc", 100) / ckpt.TRAINABLE_FILE),
                          strict=False)
    model.eval()
    cfg = TrainConfig(stage="s2t_ctc", data=DataConfig(train=[str(corpus["asr"])], batch_size=4,
                                                       num_workers=0, shuffle=False))
    batch, _ = next(build_manifest_source(cfg, model, 0, 1).batches(DataPosition()))
    heard = [model.tokenizer.decode(ids) for ids in model.ctc_decode(batch["feats"], batch["feat_lens"])]
    said = {row["id"]: row["text"] for row in map(json.loads, corpus["asr"].read_text().splitlines())}
    assert heard == [said[i] for i in batch["ids"]]
    with torch.no_grad():
        speech, lens = model.encode_speech(batch["feats"], batch["feat_lens"])
    norms = speech[padding_mask(lens, speech.shape[1])].norm(dim=-1)
    scale = model.ctc_vocabulary().norm(dim=-1).mean()
    assert torch.allclose(norms.mean(), scale, rtol=0.2)
    assert norm_gap(speech, lens, model.ctc_vocabulary()) < 0.05


@pytest.mark.parametrize("stage,manifest", [("s2s", "s2s"), ("duplex", "duplex")])
def test_output_stages_overfit(root, corpus, stage, manifest):
    _assert_overfits(_run(root, stage, corpus[manifest], steps=30, lr=1e-2), stage)


def test_t2s_stages_overfit(root):
    short = write_toy_corpus(root / "data_short", num_examples=4, num_speech_tokens=4)
    full = _run(root, "t2s_full", short["tts"], steps=30, lr=1e-2)
    _assert_overfits(full, "t2s_full")
    trained = load_tensors(ckpt.checkpoint_dir(root / "t2s_full", 30) / ckpt.TRAINABLE_FILE)
    voice_lm = {k: v for k, v in trained.items() if k.startswith("voice_lm.")}
    assert voice_lm and len(voice_lm) < len(trained)  # the output projector is left out
    save_tensors(voice_lm, root / "voice_lm.safetensors")
    proj = _run(root, "t2s_projector", short["tts"], steps=30, lr=1e-2,
                init=str(root / "voice_lm.safetensors"), seed=7)
    _assert_overfits(proj, "t2s_projector")
    final = load_tensors(ckpt.checkpoint_dir(root / "t2s_projector", 30) / ckpt.TRAINABLE_FILE)
    assert sorted(final) == ["output_projector.proj.bias", "output_projector.proj.weight"]
