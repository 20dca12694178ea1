"""Streaming token2wav latency: first 15-token chunk -> audio, later chunks, RTF.

    python benchmarks/bench_token2wav.py --model tiny --threads 1
    python benchmarks/bench_token2wav.py --model minmo-7b --device cuda --cuda-graphs --tf32 --verify

Random weights unless the model config names trained ``flow.path`` / ``vocoder.path``; timing
does not depend on the weights. Besides the stream figures it times the two halves of the
first chunk on their own (flow: token encoder + Euler solve; vocoder). ``--verify`` streams
the same tokens once more without CUDA graphs / compilation and reports the largest sample
difference; ``--count-kernels`` counts the first chunk's eager kernel launches (the time at
full shapes on a GPU follows that count). Prints one JSON line and a markdown row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from minmo.config import load_model_config
from minmo.inference.token2wav import Token2Wav, benchmark_token2wav, build_token2wav


def first_chunk_inputs(t2w: Token2Wav) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (seeded) tokens of a first flow chunk ``(1, M - L)``, their ``L`` lookahead
    tokens and a speaker embedding, on the model's device."""
    cfg = t2w.flow.cfg
    n = cfg.chunk_tokens - cfg.pre_lookahead_len
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (1, cfg.chunk_tokens), generator=gen).to(t2w.device)
    spk = torch.randn(1, cfg.spk_embed_dim, generator=gen).to(t2w.device)
    return tokens[:, :n], tokens[:, n:], spk


def first_chunk_parts(t2w: Token2Wav, repeats: int) -> dict[str, float]:
    """Median ms of the first chunk's flow step (12 tokens + 3 lookahead) and vocoder step."""
    device = t2w.device
    chunk, future, spk = first_chunk_inputs(t2w)
    flows, vocs = [], []
    for _ in range(repeats + 1):
        fstate = t2w.flow.init_state(1, spk, t2w.mask_mode)
        vstate = t2w.vocoder.init_state(1, device)
        sync(device)
        t0 = time.perf_counter()
        mel, _ = t2w.flow.step(chunk, fstate, future=future, n_timesteps=t2w.n_timesteps)
        sync(device)
        t1 = time.perf_counter()
        t2w.vocoder.step(mel, vstate)
        sync(device)
        flows.append(t1 - t0)
        vocs.append(time.perf_counter() - t1)
    return {"first_flow_ms": 1000 * statistics.median(flows[1:]),
            "first_vocoder_ms": 1000 * statistics.median(vocs[1:])}


class KernelCount:
    """Counts dispatched ATen operators that launch work: in eager mode about one kernel
    launch each (on a GPU at these sizes, launches rather than FLOPs set the time). Not
    counted: views, and operators whose result shares its first input's memory without
    writing it (``_unsafe_view`` after a 3-D matmul, ``dropout`` in eval mode): they
    launch nothing."""

    def __enter__(self) -> KernelCount:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                counter.count += not (func.is_view or _aliases_input(func, args, out))
                return out

        self.count, self._mode = 0, Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


def _aliases_input(func, args: tuple, out: object) -> bool:
    """An out-of-place operator whose result lives in its first input's memory."""
    if func._schema.is_mutable or not args or not isinstance(args[0], torch.Tensor) \
            or not isinstance(out, torch.Tensor) or out.device.type == "meta":
        return False
    return out.untyped_storage().data_ptr() == args[0].untyped_storage().data_ptr()


def first_chunk_kernels(t2w: Token2Wav) -> dict[str, float]:
    """Eager operator counts of the first chunk: flow step (token encoder + Euler solve), one
    Euler step, vocoder step."""
    chunk, future, spk = first_chunk_inputs(t2w)
    counts = {}
    for steps in (t2w.n_timesteps, 1):
        state = t2w.flow.init_state(1, spk, t2w.mask_mode)
        state.estimator = [None] * steps
        with KernelCount() as k:
            mel, _ = t2w.flow.step(chunk, state, future=future, n_timesteps=steps)
        counts[steps] = k.count
    with KernelCount() as k:
        t2w.vocoder.step(mel, t2w.vocoder.init_state(1, t2w.device))
    per_step = (counts[t2w.n_timesteps] - counts[1]) / max(t2w.n_timesteps - 1, 1)
    return {"kernels_flow": counts[t2w.n_timesteps], "kernels_per_euler_step": per_step,
            "kernels_vocoder": k.count}


def compile_estimator(t2w: Token2Wav, how: str) -> list[tuple[torch.nn.Module, object]]:
    """``torch.compile`` the flow's estimator whole (``estimator``) or block by block
    (``blocks``: every transformer and ResNet block; blocks of one shape share a compilation,
    so it compiles in a fraction of the whole estimator's time). Returns ``(module, eager
    forward)`` pairs to undo it."""
    from minmo.modules.flow_blocks import CausalResnetBlock1D, TransformerBlock

    estimator = t2w.flow.decoder.estimator
    modules = ([estimator] if how == "estimator" else
               [m for m in estimator.modules() if isinstance(m, (TransformerBlock, CausalResnetBlock1D))])
    undo = [(m, m.forward) for m in modules]
    for m, forward in undo:
        m.forward = torch.compile(forward, dynamic=True)
    return undo


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="model preset or YAML (default: tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="fp32, or autocast to bf16/fp16")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--tokens", type=int, default=150, help="tokens per stream (25 per second)")
    parser.add_argument("--chunk", type=int, default=15, help="tokens fed per step")
    parser.add_argument("--steps", type=int, default=10, help="Euler steps")
    parser.add_argument("--mask", default="chunk", choices=["chunk", "chunk2", "full_causal"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the flow solve and the vocoder as CUDA graphs (CUDA only)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions (CUDA fp32)")
    parser.add_argument("--compile", nargs="?", const="estimator", choices=["estimator", "blocks"],
                        help="torch.compile the flow estimator whole (estimator, the default) or each of its "
                             "transformer and ResNet blocks (blocks: one compilation shared by same-shaped blocks)")
    parser.add_argument("--verify", action="store_true",
                        help="compare the stream with a plain eager stream (max |sample difference|)")
    parser.add_argument("--count-kernels", action="store_true",
                        help="also count the first chunk's eager kernel launches (flow, per Euler step, vocoder)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = load_model_config(args.model, [f"flow.n_timesteps={args.steps}"])
    t2w = build_token2wav(cfg, args.device, args.mask, cuda_graphs=args.cuda_graphs)
    compiled = compile_estimator(t2w, args.compile) if args.compile else []
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device_type = torch.device(args.device).type
    # autocast's weight-cast cache must stay off while CUDA graphs record (the cached casts
    # would be freed under the graph)
    ctx = (torch.autocast(device_type, dtype=dtype, cache_enabled=not args.cuda_graphs)
           if dtype != torch.float32 else contextlib.nullcontext())
    with ctx:
        started = time.perf_counter()
        result = benchmark_token2wav(t2w, args.tokens, args.chunk, args.repeats)
        result["first_run_s"] = time.perf_counter() - started  # includes recording/compiling
        result.update(first_chunk_parts(t2w, args.repeats))
        if args.count_kernels:
            result.update(first_chunk_kernels(t2w))
        if args.verify:
            gen = torch.Generator().manual_seed(2)
            tokens = torch.randint(0, cfg.flow.vocab_size, (1, args.tokens), generator=gen).to(args.device)
            spk = torch.randn(1, cfg.flow.spk_embed_dim, generator=gen).to(args.device)
            fast = t2w.stream(tokens, spk, args.chunk)
            t2w.flow.use_cuda_graphs(False)
            t2w.vocoder.use_cuda_graphs(False)
            for module, forward in compiled:
                module.forward = forward
            plain = t2w.stream(tokens, spk, args.chunk)
            result["verify_max_abs_diff"] = float((fast.float() - plain.float()).abs().max())
            result["verify_peak"] = float(plain.float().abs().max())
    result.update(model=args.model, device=str(args.device), dtype=args.dtype, steps=args.steps,
                  threads=torch.get_num_threads(), mask=args.mask, cuda_graphs=args.cuda_graphs,
                  tf32=args.tf32, compile=args.compile)
    if torch.cuda.is_available() and device_type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
        result["torch"] = torch.__version__
    print(json.dumps(result))
    how = "+".join([args.dtype] + [k for k in ("cuda_graphs", "tf32") if getattr(args, k)]
                   + ([f"compile={args.compile}"] if args.compile else []))
    print(f"| {args.model} | {args.device} ({how}, {torch.get_num_threads()} thr) | {args.steps} | "
          f"{result['first_chunk_ms']:.1f} ({result['first_chunk_cpu_ms']:.1f} CPU) | {result['chunk_ms']:.1f} | "
          f"{result['rtf']:.3f} |")
    return result


if __name__ == "__main__":
    main()
