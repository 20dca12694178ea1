"""Streaming token2wav latency: first 15-token chunk -> audio, later chunks, RTF.

    python benchmarks/bench_token2wav.py --model tiny --threads 1
    python benchmarks/bench_token2wav.py --model minmo-7b --device cuda --dtype bf16

Random weights unless the model config names trained ``flow.path`` / ``vocoder.path``; timing
does not depend on the weights. Prints one JSON line and a markdown row.
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch

from minmo.config import load_model_config
from minmo.inference.token2wav import benchmark_token2wav, build_token2wav


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="model preset or YAML (default: tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--tokens", type=int, default=150, help="tokens per stream (25 per second)")
    parser.add_argument("--chunk", type=int, default=15, help="tokens fed per step")
    parser.add_argument("--steps", type=int, default=10, help="Euler steps")
    parser.add_argument("--mask", default="chunk", choices=["chunk", "chunk2", "full_causal"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_model_config(args.model, [f"flow.n_timesteps={args.steps}"])
    t2w = build_token2wav(cfg, args.device, args.mask)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device_type = torch.device(args.device).type
    ctx = torch.autocast(device_type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with ctx:
        result = benchmark_token2wav(t2w, args.tokens, args.chunk, args.repeats)
    result.update(model=args.model, device=str(args.device), dtype=args.dtype, steps=args.steps,
                  threads=torch.get_num_threads(), mask=args.mask)
    print(json.dumps(result))
    print(f"| {args.model} | {args.device} ({args.dtype}, {torch.get_num_threads()} thr) | {args.steps} | "
          f"{result['first_chunk_ms']:.1f} ({result['first_chunk_cpu_ms']:.1f} CPU) | {result['chunk_ms']:.1f} | "
          f"{result['rtf']:.3f} |")
    return result


if __name__ == "__main__":
    main()
