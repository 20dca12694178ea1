"""Checkpoint files: atomic writes, strict loading, discovery, pruning, RNG, LR schedule,
the data source's exact positions."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from minmo.checkpoints import (CheckpointError, atomic_directory, load_file_into, load_tensors,
                               save_tensors)
from minmo.training import checkpointing as ckpt
from minmo.training.data_source import DataPosition, IndexedBatchSource, ListDataset
from minmo.training.optim import WarmupCosine


def test_save_load_roundtrip_and_shared_tensors(tmp_path):
    w = torch.randn(3, 4)
    tensors = {"a": w, "tied": w, "b": torch.arange(5)}
    save_tensors(tensors, tmp_path / "t.safetensors")
    back = load_tensors(tmp_path / "t.safetensors")
    assert set(back) == {"a", "tied", "b"} and torch.equal(back["tied"], w)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_strict_load_names_keys(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    good = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "m.safetensors"

    save_tensors({**good, "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*unexpected keys.*extra\.weight"):
        load_file_into(model, path)

    save_tensors({k: v for k, v in good.items() if k != "1.bias"}, path)
    with pytest.raises(CheckpointError, match=r"missing keys.*1\.bias"):
        load_file_into(model, path)
    assert load_file_into(model, path, allow_missing=True).missing == ["1.bias"]

    save_tensors({**good, "0.weight": torch.zeros(4, 2)}, path)
    with pytest.raises(CheckpointError, match=r"shape mismatch: 0\.weight \(file \(4, 2\), model \(3, 2\)\)"):
        load_file_into(model, path)


def test_corrupt_and_missing_files_are_refused_with_their_path(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(CheckpointError, match="broken.safetensors: not a readable safetensors"):
        load_tensors(bad)
    with pytest.raises(CheckpointError, match="nothere.safetensors: checkpoint file not found"):
        load_tensors(tmp_path / "nothere.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        ckpt.read_checkpoint(tmp_path)


def test_atomic_directory_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "checkpoints" / "step_00000001"
    with pytest.raises(ValueError):
        with atomic_directory(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise ValueError("crash while writing")
    assert not final.exists() and list((tmp_path / "checkpoints").iterdir()) == []
    with atomic_directory(final) as tmp:
        (tmp / "state.json").write_text("{}")
    assert (final / "state.json").is_file()
    with pytest.raises(CheckpointError, match="already exists"):
        with atomic_directory(final):
            pass


def test_discovery_ignores_temporaries_and_prunes(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (5, 10, 15):
        d = ckpt.checkpoint_dir(tmp_path, step)
        d.mkdir(parents=True)
        (d / ckpt.STATE_FILE).write_text("{}")
    (root / ".tmp-step_00000020-abcd").mkdir()  # a crash mid-write
    (root / "step_00000025").mkdir()  # no state.json: not a checkpoint
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000015"
    assert [p.name for p in ckpt.remove_temporaries(tmp_path)] == [".tmp-step_00000020-abcd"]
    ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000010", "step_00000015"]
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_00000015"


def test_rng_capture_restore():
    ckpt.seed_everything(3)
    state = ckpt.capture_rng()
    first = (random.random(), np.random.rand(), torch.rand(2))
    random.random(), np.random.rand(), torch.rand(5)  # move on
    ckpt.restore_rng(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_warmup_cosine_schedule():
    f = WarmupCosine(warmup_steps=4, max_steps=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))


def test_indexed_source_positions_resume_and_bad_rows():
    rows = [{"x": torch.tensor([float(i)])} for i in range(7)]
    rows[3] = None  # a bad row
    collate = lambda xs: {"x": torch.cat([r["x"] for r in xs])}  # noqa: E731

    def take(source, start, n):
        it = source.batches(start)
        return [next(it) for _ in range(n)]

    full = take(IndexedBatchSource(ListDataset(rows), collate, 2, seed=5), DataPosition(), 9)
    # 7 rows, batches of 2 -> 4 batches per epoch; positions count batches
    assert [p for _b, p in full[:5]] == [DataPosition(0, 1), DataPosition(0, 2),
                                        DataPosition(0, 3), DataPosition(1, 0),
                                        DataPosition(1, 1)]
    seen = sorted(int(v) for b, _p in full[:4] if b is not None for v in b["x"])
    assert seen == [0, 1, 2, 4, 5, 6]  # one epoch = every good row once
    again = IndexedBatchSource(ListDataset(rows), collate, 2, seed=5)
    resumed = take(again, full[5][1], 3)
    for (b1, p1), (b2, p2) in zip(full[6:], resumed):
        assert p1 == p2 and (b1 is None) == (b2 is None)
        assert b1 is None or torch.equal(b1["x"], b2["x"])

    # two ranks share each global batch: together they see what one process sees
    halves = [IndexedBatchSource(ListDataset(rows), collate, 1, seed=5, rank=r, world_size=2)
              for r in range(2)]
    one = IndexedBatchSource(ListDataset(rows), collate, 2, seed=5)
    for (b0, _), (b1, _), (b, _) in zip(take(halves[0], DataPosition(), 4),
                                        take(halves[1], DataPosition(), 4),
                                        take(one, DataPosition(), 4)):
        parts = [t["x"] for t in (b0, b1) if t is not None]
        expect = b["x"] if b is not None else torch.empty(0)
        assert torch.equal(torch.cat(parts) if parts else torch.empty(0), expect)
    assert one.skipped == 1 and one.bad_rows == {3}


def test_full_weights_merge_lora_and_load_into_a_plain_model(tmp_path):
    from minmo.checkpoints import load_file_into
    from minmo.config import DataConfig, OptimConfig, TrainConfig
    from minmo.models.builders import minmo_tiny
    from minmo.training.data_source import DataPosition
    from minmo.training.loop import train
    from minmo.training.manifest_data import build_manifest_source
    from minmo.training.toydata import write_toy_corpus

    corpus = write_toy_corpus(tmp_path / "data", num_examples=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(stage="s2t_sft", output_dir=str(tmp_path / "run"), progress=False,
                          save_full_weights=True, data=DataConfig(train=[str(corpus["asr"])],
                                                                  batch_size=2, num_workers=0),
                          optim=OptimConfig(lr=3e-2, warmup_steps=1, max_steps=3))
        train(cfg)
        step = ckpt.checkpoint_dir(tmp_path / "run", 3)
        torch.manual_seed(cfg.seed)  # the run's frozen weights come from this seed
        trained = minmo_tiny()
        trained.enable_lora()
        state = trained.state_dict()
        for k, v in load_tensors(step / ckpt.TRAINABLE_FILE).items():
            state[k].copy_(v)
        torch.manual_seed(0)  # any other init: every tensor must come from the file
        plain = minmo_tiny()
        report = load_file_into(plain, step / ckpt.FULL_FILE)  # strict: no LoRA keys left
        assert not report.missing and not any("lora_" in k for k in report.loaded)
        batch, _ = next(build_manifest_source(cfg, plain, 0, 1).batches(DataPosition()))
        trained.eval(), plain.eval()
        with torch.no_grad():
            a = trained(batch, losses=("text",)).loss
            b = plain(batch, losses=("text",)).loss
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        lora_b = [v for k, v in load_tensors(step / ckpt.TRAINABLE_FILE).items() if "lora_B" in k]
        assert any(float(v.abs().max()) > 0 for v in lora_b)  # the adapters did move
    finally:
        torch.set_num_threads(threads)


def test_stage_chain_carries_earlier_stages_weights(tmp_path):
    """init: <previous run> must hand on everything earlier stages trained, not only what
    the previous stage trained (s2t_sft -> t2s_projector -> duplex)."""
    from minmo.config import DataConfig, OptimConfig, TrainConfig
    from minmo.training.loop import train
    from minmo.training.toydata import write_toy_corpus

    corpus = write_toy_corpus(tmp_path / "data", num_examples=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(stage, manifest, init=None):
        train(TrainConfig(stage=stage, output_dir=str(tmp_path / stage), init=init,
                          progress=False, data=DataConfig(train=[str(corpus[manifest])],
                                                          batch_size=2, num_workers=0),
                          optim=OptimConfig(lr=1e-2, warmup_steps=1, max_steps=2)))
        return ckpt.latest_checkpoint(tmp_path / stage)

    try:
        sft = run("s2t_sft", "asr")
        proj = run("t2s_projector", "tts", init=str(tmp_path / "s2t_sft"))
        last = run("duplex", "duplex", init=str(tmp_path / "t2s_projector"))
    finally:
        torch.set_num_threads(threads)
    sft_trained = load_tensors(sft / ckpt.TRAINABLE_FILE)
    proj_trained = load_tensors(proj / ckpt.TRAINABLE_FILE)
    assert any("lora_" in k for k in sft_trained) and any("input_projector" in k for k in sft_trained)
    _, handed_on = ckpt.init_tensors(last)
    for name, value in {**sft_trained, **proj_trained}.items():
        assert name in handed_on, f"{name} lost along the stage chain"
        assert torch.equal(handed_on[name], value), name
    assert all(k.startswith("duplex.") for k in load_tensors(last / ckpt.TRAINABLE_FILE))


def test_lora_writer_goes_through_save_lora(tmp_path, one_thread):
    """``LLM.save_lora(dir, tensors)`` writes given tensors in its own format; the loop's
    FSDP writer (gathered tensors, trained or carried from init) gives the same files as the
    module's own ``save_lora``."""
    import json

    from minmo.models.builders import minmo_tiny
    from minmo.training.distributed import DistInfo
    from minmo.training.loop import _lora_writer

    torch.manual_seed(0)
    model = minmo_tiny()
    model.enable_lora()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p))
    gathered = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    model.llm.save_lora(tmp_path / "own")
    own = load_tensors(tmp_path / "own" / "adapter_model.safetensors")
    own_config = json.loads((tmp_path / "own" / "adapter_config.json").read_text())

    fsdp = DistInfo(mode="fsdp")
    for name, trained, carried in (("trained", gathered, {}), ("carried", {}, gathered)):
        _lora_writer(model, fsdp, trained, carried)(tmp_path / name)
        files = load_tensors(tmp_path / name / "adapter_model.safetensors")
        assert files.keys() == own.keys() and all(torch.equal(files[k], own[k]) for k in own)
        assert json.loads((tmp_path / name / "adapter_config.json").read_text()) == own_config
    with pytest.raises(CheckpointError, match="LoRA keys differ.*neither trained"):
        _lora_writer(model, fsdp, {}, {})(tmp_path / "none")

    doubled = {k: 2 * v for k, v in own.items()}
    model.llm.save_lora(tmp_path / "given", tensors=doubled)
    fresh = minmo_tiny()
    fresh.llm.load_lora(tmp_path / "given")
    params = dict(fresh.named_parameters())
    for name, value in gathered.items():
        torch.testing.assert_close(params[name].detach(), 2 * value, rtol=0, atol=0)
    short = dict(list(doubled.items())[1:])
    with pytest.raises(KeyError, match="missing"):
        model.llm.save_lora(tmp_path / "short", tensors=short)
    assert not (tmp_path / "short").exists()


def test_trainable_state_drops_aliases_of_frozen_tied_embeddings():
    from minmo.config import load_model_config
    from minmo.models.builders import build_model
    from minmo.training.distributed import gather_model_state
    from minmo.training.stages import apply_stage, get_stage

    model = build_model(load_model_config("tiny", ["llm.tie_word_embeddings=true"]))
    assert model.llm.model.lm_head.weight is model.llm.model.get_input_embeddings().weight
    trainable = apply_stage(model, get_stage("s2t_prealign"))
    state = gather_model_state(model, trainable_only=True)
    params = set(dict(model.named_parameters(remove_duplicate=False)))
    assert {k for k in state if k in params} == set(trainable)


def test_optimizer_state_resumes_with_a_trainable_parameter_that_never_had_a_gradient():
    """The voice LM body's one-row text embedding is trainable but bypassed (inputs_embeds):
    AdamW never steps it, so the saved state has none for it; resuming must still load the
    others exactly (strict loading failed here)."""
    from minmo.training.distributed import gather_optimizer_state, load_optimizer_state

    def build():
        torch.manual_seed(0)
        model = nn.ModuleDict({"used": nn.Linear(3, 2), "bypassed": nn.Linear(3, 2)})
        return model, torch.optim.AdamW(model.parameters(), lr=0.1)

    model, opt = build()
    for _ in range(2):
        opt.zero_grad()
        model["used"](torch.randn(4, 3)).square().sum().backward()
        opt.step()
    state = copy.deepcopy(gather_optimizer_state(model, opt))  # as read back from disk
    assert "bypassed.weight" not in state["state"] and "used.weight" in state["state"]

    model2, opt2 = build()
    model2.load_state_dict(model.state_dict())
    load_optimizer_state(model2, opt2, state)
    for name in ("weight", "bias"):
        want, got = opt.state[getattr(model["used"], name)], opt2.state[getattr(model2["used"], name)]
        assert torch.equal(want["exp_avg"], got["exp_avg"]) and torch.equal(want["exp_avg_sq"], got["exp_avg_sq"])
    # one more step from either optimizer gives the same weights; the bypassed one never moves
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m["used"](x).square().sum().backward()
        o.step()
    for (name, a), b in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), name
    assert torch.equal(model2["bypassed"].weight, build()[0]["bypassed"].weight)
