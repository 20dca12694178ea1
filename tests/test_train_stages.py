"""Freeze matrix of every MinMo stage (acceptance 3) and the stage extension hooks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from minmo.checkpoints import load_tensors
from minmo.config import ConfigError, DataConfig, OptimConfig, TrainConfig
from minmo.models.builders import minmo_tiny
from minmo.training.data_source import DataPosition, IndexedBatchSource, ListDataset
from minmo.training.loop import train
from minmo.training.manifest_data import build_manifest_source
from minmo.training.optim import build_adamw
from minmo.training.stages import (STAGES, Stage, StepContext, StepOutput, apply_stage,
                                   get_stage, register_stage)
from minmo.training.toydata import write_toy_corpus

# The paper's freeze matrix, written out independently of minmo.training.stages.
PAPER_MATRIX = {
    "s2t_prealign": ({"input_projector"}, ("text",), "asr"),
    "s2t_fullalign": ({"encoder", "input_projector"}, ("text",), "asr"),
    "s2t_sft": ({"input_projector", "llm_lora"}, ("text",), "asr"),
    "t2s_projector": ({"output_projector"}, ("speech",), "tts"),
    "t2s_full": ({"output_projector", "voice_lm"}, ("speech",), "tts"),
    "s2s": ({"output_projector", "voice_lm"}, ("speech",), "s2s"),
    "duplex": ({"duplex"}, ("duplex",), "duplex"),
}
# Not in the paper: a CTC aid that aligns the input projector before pre-alignment.
EXTRA_MATRIX = {"s2t_ctc": ({"input_projector"}, ("ctc",), "asr")}
ALL_STAGES = {**PAPER_MATRIX, **EXTRA_MATRIX}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_toy_corpus(tmp_path_factory.mktemp("toy"), num_examples=2)


def test_stage_table_matches_paper():
    for name, (groups, losses, _m) in ALL_STAGES.items():
        stage = get_stage(name)
        assert set(stage.trains) == groups, name
        assert stage.losses == losses, name
    with pytest.raises(KeyError, match="known stages: .*s2t_prealign"):
        get_stage("s2t_prealing")


@pytest.mark.parametrize("name", list(ALL_STAGES))
def test_freeze_matrix_and_one_step(name, corpus):
    groups_trained, losses, manifest = ALL_STAGES[name]
    torch.manual_seed(0)
    model = minmo_tiny()
    stage = get_stage(name)
    trainable = apply_stage(model, stage)
    groups = model.param_groups()

    # every parameter sits in exactly one group
    grouped = [id(p) for g in groups.values() for p in g.values()]
    assert len(grouped) == len(set(grouped)) == len(list(model.parameters()))
    # LoRA adapters exist only for the stage that trains them
    assert bool(groups["llm_lora"]) == (name == "s2t_sft")
    # exactly the stage's groups require grad
    for group, params in groups.items():
        assert params or group == "llm_lora", f"group {group} is empty"
        for pname, p in params.items():
            assert p.requires_grad == (group in groups_trained), (name, group, pname)
    assert set(trainable) == {n for g in groups_trained for n in groups[g]}

    # one optimizer step on a real batch changes only the trainable tensors
    cfg = TrainConfig(stage=name, data=DataConfig(train=[str(corpus[manifest])], batch_size=2,
                                                  num_workers=0))
    batch, _ = next(build_manifest_source(cfg, model, 0, 1).batches(DataPosition()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_adamw(model.parameters(), OptimConfig(lr=1e-2))
    model.train()
    model(batch, losses=losses).loss.backward()
    with_grad = {n for n, p in model.named_parameters()
                 if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert with_grad <= set(trainable)
    assert with_grad <= changed <= set(trainable)
    for group in groups_trained:
        assert changed & set(groups[group]), f"{name}: nothing in {group} moved"



def test_data_tasks_mixes_tts_rows_into_s2s(corpus):
    """``data.tasks`` widens a stage's rows: s2s trains on spoken answers and read-aloud text
    in one batch, each row scored as if alone; a task the loss cannot read stops the run."""
    torch.manual_seed(0)
    model = minmo_tiny()
    apply_stage(model, get_stage("s2s"))
    model.eval()
    manifests = [str(corpus["s2s"]), str(corpus["tts"])]

    def source(batch_size, tasks=()):
        return build_manifest_source(TrainConfig(stage="s2s", data=DataConfig(
            train=manifests, batch_size=batch_size, num_workers=0, shuffle=False,
            tasks=list(tasks))), model, 0, 1)

    assert len(source(4).loader.dataset) == 2
    mixed = source(4, ["s2s_chat", "tts"])
    assert len(mixed.loader.dataset) == 4
    batches = source(1, ["s2s_chat", "tts"]).batches(DataPosition())
    alone = [next(batches)[0] for _ in range(4)]
    assert sorted(t for b in alone for t in b["tasks"]) == ["s2s_chat"] * 2 + ["tts"] * 2
    with torch.no_grad():
        together = model(next(mixed.batches(DataPosition()))[0], losses=("speech",)).loss
        each = [model(b, losses=("speech",)).loss for b in alone]
    assert torch.allclose(together, torch.stack(each).mean(), atol=1e-5)
    with pytest.raises(ConfigError, match="cannot train on \\['asr'\\]"):
        source(4, ["s2s_chat", "asr"])
    with pytest.raises(ConfigError, match="unknown task"):
        source(4, ["s2s"])

# ---- a stage that brings its own model, data, optimizers and step (GAN-style) ----------


class ToyGAN(nn.Module):
    """Stand-in for a vocoder: a generator and a discriminator trained alternately."""

    def __init__(self):
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))
        self.discriminator = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def param_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        return {g: {f"{g}.{n}": p for n, p in getattr(self, g).named_parameters()}
                for g in ("generator", "discriminator")}


def gan_step(ctx: StepContext) -> StepOutput:
    model = ctx.raw_model
    (batch, _w), = ctx.micro_batches
    real, noise = batch["real"], batch["noise"]
    softplus = nn.functional.softplus
    ctx.optimizers["discriminator"].zero_grad(set_to_none=True)
    fake = model.generator(noise)
    d_loss = softplus(model.discriminator(fake.detach())).mean() + \
        softplus(-model.discriminator(real)).mean()
    d_loss.backward()
    d_norm, _ = ctx.clip_and_step("discriminator")
    g_loss = softplus(-model.discriminator(fake)).mean() + (fake - real).pow(2).mean()
    g_loss.backward()
    g_norm, _ = ctx.clip_and_step("generator")
    return StepOutput(loss=float(g_loss.detach()), metrics={"d_loss": float(d_loss.detach())},
                      grad_norms={"grad_norm_generator": g_norm,
                                  "grad_norm_discriminator": d_norm},
                      examples=real.shape[0], weight=1)


def _gan_data(cfg, model, rank, world_size):
    g = torch.Generator().manual_seed(0)
    rows = [{"real": torch.randn(4, generator=g) * 0.5 + 1.0, "noise": torch.randn(4, generator=g)}
            for _ in range(8)]
    collate = lambda xs: {k: torch.stack([x[k] for x in xs]) for k in xs[0]}  # noqa: E731
    return IndexedBatchSource(ListDataset(rows), collate, cfg.data.batch_size, seed=cfg.seed,
                              rank=rank, world_size=world_size)


def _gan_optimizers(model, optim_cfg):
    groups = model.param_groups()
    return {g: build_adamw(groups[g].values(), optim_cfg) for g in ("generator", "discriminator")}


@pytest.fixture()
def gan_stage():
    stage = register_stage(Stage("toy_gan", ("generator", "discriminator"), (), step=gan_step,
                                 build_model=lambda cfg: ToyGAN(), build_data=_gan_data,
                                 build_optimizers=_gan_optimizers), replace=True)
    yield stage
    STAGES.pop("toy_gan", None)


class Crash(RuntimeError):
    pass


def test_custom_stage_two_optimizers_resume_exactly(gan_stage, tmp_path):
    def cfg(out):
        return TrainConfig(stage="toy_gan", output_dir=str(out), save_every=3, log_every=1,
                           keep_last=1, progress=False, data=DataConfig(batch_size=3),
                           optim=OptimConfig(lr=1e-2, warmup_steps=2, max_steps=8))

    straight = train(cfg(tmp_path / "a"))

    def crashing_step(ctx):
        if ctx.step == 4:  # the fifth step, after the checkpoint of step 3
            raise Crash("simulated crash")
        return gan_step(ctx)

    register_stage(Stage("toy_gan", gan_stage.trains, (), step=crashing_step,
                         build_model=gan_stage.build_model, build_data=gan_stage.build_data,
                         build_optimizers=gan_stage.build_optimizers), replace=True)
    with pytest.raises(Crash):
        train(cfg(tmp_path / "b"))
    register_stage(gan_stage, replace=True)
    resumed = train(cfg(tmp_path / "b"))

    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step_00000003"
    assert resumed.losses == straight.losses[3:]  # bit-exact continuation
    a = load_tensors(tmp_path / "a/checkpoints/step_00000008/trainable.safetensors")
    b = load_tensors(tmp_path / "b/checkpoints/step_00000008/trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = torch.load(tmp_path / "a/checkpoints/step_00000008/optimizer.pt", weights_only=True)
    assert set(saved) == {"generator", "discriminator"}
    assert [p.name for p in (tmp_path / "a/checkpoints").iterdir()] == ["step_00000008"]
    lines = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 9))  # lines after the crash dropped
    assert {"grad_norm_generator", "grad_norm_discriminator", "d_loss"} <= set(lines[0])


def test_aux_ctc_loss_joins_a_text_stage_on_asr_rows_only(corpus, tmp_path):
    """``aux_losses: [ctc]`` adds the CTC term to ``s2t_sft`` (text + ctc), scored on the
    batch's asr rows alone (an answer is not a transcript); a stage that does not train the
    input projector, or an unknown loss, stops the run with one line."""
    from minmo.training.stages import with_aux_losses

    sft = with_aux_losses(get_stage("s2t_sft"), ["ctc"])
    assert sft.losses == ("text", "ctc") and get_stage("s2t_sft").losses == ("text",)
    assert with_aux_losses(get_stage("s2t_ctc"), ["ctc"]).losses == ("ctc",)
    with pytest.raises(ValueError, match="does not train"):
        with_aux_losses(get_stage("t2s_full"), ["ctc"])
    with pytest.raises(ValueError, match="unknown loss"):
        with_aux_losses(get_stage("s2t_sft"), ["ctx"])

    torch.manual_seed(0)
    model = minmo_tiny()
    apply_stage(model, sft)
    cfg = TrainConfig(stage="s2t_sft", data=DataConfig(train=[str(corpus["asr"])], batch_size=2,
                                                       num_workers=0))
    batch, _ = next(build_manifest_source(cfg, model, 0, 1).batches(DataPosition()))
    with torch.no_grad():
        both = model(batch, losses=sft.losses)
        text = model(batch, losses=("text",)).loss
        answers = model({**batch, "tasks": ["s2t_chat"] * len(batch["tasks"])}, losses=sft.losses)
    assert both.metrics["ctc_loss"] > 0
    assert torch.allclose(both.loss, text + both.metrics["ctc_loss"] + both.metrics["ctc_norm"], rtol=1e-4)
    assert answers.metrics["ctc_loss"] == 0.0 and torch.allclose(answers.loss, text)

    bad = TrainConfig(stage="t2s_full", aux_losses=["ctc"], output_dir=str(tmp_path / "bad"),
                      data=DataConfig(train=[str(corpus["tts"])], batch_size=2, num_workers=0))
    with pytest.raises(ConfigError, match="aux_losses: 'ctc' trains input_projector"):
        train(bad)
