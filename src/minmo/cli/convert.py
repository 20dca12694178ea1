"""``minmo convert OUT --sensevoice DIR --llm-hf DIR --cosyvoice2 DIR ...``: import pretrained
parts from local release directories into one minmo checkpoint directory.

See :mod:`minmo.checkpoints.foreign_convert` for the output layout and docs/checkpoints.md
for where each release comes from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert",
        help="import Qwen2.5 / SmolLM2 GGUF / SenseVoice / Whisper / CosyVoice 2 checkpoints",
        description="Read pretrained parts from local directories (strictly: every missing, "
        "unexpected or mis-shaped key is named) and write a minmo checkpoint directory: "
        "config.yaml + model.safetensors (+ tokenizer/, am.mvn, convert.json). Train from it "
        "with model=OUT/config.yaml init=OUT/model.safetensors.",
    )
    p.add_argument("out", type=Path, help="output directory (must not exist)")
    p.add_argument("--base", default="minmo-7b",
                   help="model preset or YAML whose other sections (projector, duplex, ...) are "
                   "kept (default: minmo-7b)")
    p.add_argument("--name", help="model name written into config.yaml")
    enc = p.add_mutually_exclusive_group()
    enc.add_argument("--sensevoice", type=Path, metavar="DIR",
                     help="SenseVoice-Small FunASR folder (model.pt, config.yaml, am.mvn, ...)")
    enc.add_argument("--whisper-hf", type=Path, metavar="DIR", help="transformers Whisper folder")
    enc.add_argument("--whisper-ct2", type=Path, metavar="DIR",
                     help="CTranslate2 / faster-whisper folder (model.bin, config.json)")
    llm = p.add_mutually_exclusive_group()
    llm.add_argument("--llm-hf", type=Path, metavar="DIR",
                     help="Hugging Face causal LM folder (Qwen2.5-*-Instruct, ...)")
    llm.add_argument("--llm-gguf", type=Path, metavar="FILE",
                     help="GGUF causal LM file (dequantised; converted once to safetensors)")
    p.add_argument("--gguf-cache", type=Path, metavar="DIR",
                   help="where the GGUF's safetensors conversion is kept (default: FILE.hf)")
    p.add_argument("--llm-reference", action="store_true",
                   help="point llm.path at --llm-hf instead of copying the LLM weights (7B)")
    p.add_argument("--cosyvoice2", type=Path, metavar="DIR",
                   help="CosyVoice2-0.5B folder (llm.pt, cosyvoice2.yaml, campplus.onnx, ...)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from minmo.checkpoints.foreign_convert import ConvertSources, import_parts, write_minmo_checkpoint
    from minmo.checkpoints.io import CheckpointError
    from minmo.config import load_model_config

    if args.llm_reference and not args.llm_hf:
        print("minmo convert: error: --llm-reference needs --llm-hf", file=sys.stderr)
        return 2
    sources = ConvertSources(
        sensevoice=args.sensevoice, whisper_hf=args.whisper_hf, whisper_ct2=args.whisper_ct2,
        llm_hf=args.llm_hf, llm_gguf=args.llm_gguf, gguf_cache=args.gguf_cache,
        cosyvoice2=args.cosyvoice2, llm_reference=args.llm_reference)
    named = {k: str(v) for k, v in vars(args).items()
             if k in ("sensevoice", "whisper_hf", "whisper_ct2", "llm_hf", "llm_gguf", "cosyvoice2") and v}
    try:
        base = load_model_config(args.base)
        parts = import_parts(sources, base=base)
        write_minmo_checkpoint(args.out, base, parts, sources=named, name=args.name)
    except CheckpointError as exc:
        print(f"minmo convert: error: {exc}", file=sys.stderr)
        return 1
    return 0
