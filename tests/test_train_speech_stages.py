"""The speech-generation stages (speech_tokenizer, flow, vocoder) through the training loop."""

from __future__ import annotations

import json

import pytest
import torch

from minmo.checkpoints import load_tensors
from minmo.config import ConfigError, DataConfig, FlowConfig, OptimConfig, TrainConfig
from minmo.models.flow import ChunkFlowMatching
from minmo.training.checkpointing import seed_everything
from minmo.training.loop import train
from minmo.training.stages import get_stage
from minmo.training.toydata import write_toy_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_toy_corpus(tmp_path_factory.mktemp("toy"), num_examples=4, seconds=0.75)


def _cfg(stage, out, manifests, steps, lr=3e-3, batch=4, **options):
    return TrainConfig(stage=stage, output_dir=str(out), log_every=1, save_every=steps,
                       keep_last=1, progress=False, seed=0, stage_options=options,
                       data=DataConfig(train=[str(m) for m in manifests], batch_size=batch),
                       optim=OptimConfig(lr=lr, warmup_steps=1, max_steps=steps, grad_clip=5.0))


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _final_ckpt(out, step):
    return out / "checkpoints" / f"step_{step:08d}"


def test_stages_registered():
    for name in ("speech_tokenizer", "flow", "vocoder"):
        assert get_stage(name).build_model is not None


def test_tokenizer_then_flow(corpus, tmp_path):
    tok = train(_cfg("speech_tokenizer", tmp_path / "tok", [corpus["asr"]], 8))
    assert all(torch.isfinite(torch.tensor(tok.losses)))
    assert tok.losses[-1] < tok.losses[0]
    ckpt = _final_ckpt(tmp_path / "tok", 8)
    assert (ckpt / "trainable.safetensors").is_file()

    flow = train(_cfg("flow", tmp_path / "flow", [corpus["asr"]], 6, tokenizer=str(ckpt),
                      max_tokens=20))
    assert all(torch.isfinite(torch.tensor(flow.losses)))
    trained = load_tensors(_final_ckpt(tmp_path / "flow", 6) / "trainable.safetensors")
    seed_everything(0)  # the loop's seed before it builds the model: the initial weights
    init = dict(ChunkFlowMatching(FlowConfig()).named_parameters())
    assert trained.keys() == init.keys()
    assert any(not torch.equal(init[k], v) for k, v in trained.items())


def test_vocoder_gan_with_reconstruction_warmup(corpus, tmp_path):
    out = tmp_path / "voc"
    res = train(_cfg("vocoder", out, [corpus["asr"]], 4, lr=2e-3, batch=2,
                     reconstruction_steps=2, frames=16))
    assert all(torch.isfinite(torch.tensor(res.losses)))
    lines = _metrics(out)
    assert "grad_norm_discriminator" not in lines[0]  # warm-up: generator only
    assert {"grad_norm_generator", "grad_norm_discriminator", "d_loss"} <= set(lines[-1])
    ckpt = _final_ckpt(out, 4)
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert set(saved) == {"generator", "discriminator"}
    tensors = load_tensors(ckpt / "trainable.safetensors")
    assert any(k.startswith("generator.") for k in tensors)
    assert any(k.startswith("discriminator.") for k in tensors)


def test_unknown_stage_option_is_clear(corpus, tmp_path):
    with pytest.raises(ConfigError, match="stage_options"):
        train(_cfg("vocoder", tmp_path / "bad", [corpus["asr"]], 1, warmup=3))
