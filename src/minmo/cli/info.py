"""``minmo info CONFIG``: parameter counts per module and trainable counts per stage.

The model is built on the meta device: shapes only, no weight memory, so the 7B config
prints in seconds on any machine.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

# paper figures (MINMO.md) to print beside ours
PAPER_PARAMS = {
    "encoder": 636e6,
    "input_projector": 170e6,
    "llm": 7.6e9,
    "output_projector": 6e6,
    "voice_lm": 370e6,
    "duplex": 18e6,
}


def _speech_modules(cfg, encoder: nn.Module | None = None) -> dict[str, nn.Module]:
    """The speech-output parts outside the MinMo graph, built on the meta device (ONNX parts,
    run by onnxruntime, have no PyTorch parameters and are left out). A tokenizer on a
    frozen Whisper encoder (``kind: whisper``) is counted with it: the voice ``encoder``'s
    shape when that is Whisper's too and no other Whisper is named, else the named one."""
    from dataclasses import replace

    from minmo.models.flow import ChunkFlowMatching
    from minmo.models.speaker import SpeakerEncoder
    from minmo.models.speech_tokenizer import SpeechTokenizer
    from minmo.models.vocoder import HiFTVocoder

    modules = {}
    with torch.device("meta"):
        tok = cfg.speech_tokenizer
        if (tok.kind == "whisper" and encoder is not None and cfg.encoder.kind == "whisper"
                and not tok.whisper_path):
            modules["speech_tokenizer"] = SpeechTokenizer(tok, whisper=encoder)
        elif tok.kind == "whisper":
            with torch.device("cpu"):  # reads the named Whisper's weights
                modules["speech_tokenizer"] = SpeechTokenizer(tok)
        elif tok.kind != "onnx":
            modules["speech_tokenizer"] = SpeechTokenizer(tok)
        modules |= {"flow": ChunkFlowMatching(cfg.flow), "vocoder": HiFTVocoder(cfg.vocoder)}
        if cfg.speaker.kind != "onnx":  # the embedding network; the classification head is training-only
            modules["speaker"] = SpeakerEncoder(replace(cfg.speaker, num_speakers=0))
    return modules


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "info",
        help="parameter counts per module and trainable parameters per training stage",
        description="Build a model config on the meta device (no memory) and print parameter "
        "counts per module, next to the paper's, and what each training stage trains.",
    )
    p.add_argument("config", help="model preset name (tiny, minmo-7b, ...), model YAML path, or "
                   "model package (minmo-small: the shipped one; a directory with overlay.json)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=run)
    return p


def _fmt(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def count(params: dict[str, nn.Parameter] | list[nn.Parameter]) -> int:
    values = params.values() if isinstance(params, dict) else params
    return sum(p.numel() for p in values)


def run(args: argparse.Namespace) -> int:
    from minmo.checkpoints.overlay import CONFIG_FILE, package_dir
    from minmo.config import load_model_config
    from minmo.models.builders import build_model
    from minmo.training.stages import STAGES, apply_stage

    start = time.perf_counter()
    package = package_dir(args.config)  # a model package, e.g. the shipped minmo-small
    cfg = load_model_config(package / CONFIG_FILE if package is not None else args.config,
                            args.overrides)
    if package is not None:
        print(f"{args.config}: the model package {package} (its {CONFIG_FILE})")
    with torch.device("meta"):
        model = build_model(cfg)
    groups = model.param_groups()
    print(f"model {cfg.name} ({args.config}), built on the meta device in "
          f"{time.perf_counter() - start:.1f}s\n")
    print(f"{'module':<18}{'params':>14}{'':>9}{'paper':>10}{'ratio':>8}")
    total = 0
    for name, params in groups.items():
        n = count(params)
        total += n
        paper = PAPER_PARAMS.get(name)
        ratio = f"{n / paper:.2f}" if paper else ""
        print(f"{name:<18}{n:>14}{_fmt(n):>9}{_fmt(paper) if paper else '':>10}{ratio:>8}")
    print(f"{'total':<18}{total:>14}{_fmt(total):>9}\n")
    print(f"{'speech output':<18}{'params':>14}")
    for name, module in _speech_modules(cfg, model.encoder).items():
        n = count(list(module.parameters()))
        print(f"{name:<18}{n:>14}{_fmt(n):>9}")
    print()
    print(f"{'stage':<16}{'trainable':>12}  groups")
    for stage in STAGES.values():
        if stage.build_model is not None:
            continue  # stages of other models (speech generation) are listed with them
        with torch.device("meta"):
            trainable = apply_stage(model, stage)
        print(f"{stage.name:<16}{_fmt(count(trainable)):>12}  {', '.join(stage.trains)}")
    return 0
