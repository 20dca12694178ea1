"""``minmo bench serve|modules|token2wav``: latency and throughput of the serving path.

* ``serve``: end of user speech -> first reply audio byte (p50/p95) through a real server and
  real-time clients, and how many concurrent sessions stay real time.
* ``modules``: per-module latency (encoder, listening stream, LLM, voice LM, predictor,
  speech decoder, VAD), one session and batched.
* ``token2wav``: the speech-generation benchmark (``benchmarks/bench_token2wav.py``).

``--write-docs FILE`` puts the figures in a section of a markdown file (``docs/benchmarks.md``
by default), replacing only that section.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

from minmo.cli import add_quantize_argument

DOCS = "docs/benchmarks.md"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="latency/throughput benchmarks: serve, modules, token2wav",
                       description=__doc__.split("\n\n")[0])
    bsub = p.add_subparsers(dest="bench", metavar="WHAT")
    s = bsub.add_parser("serve", help="end-of-speech -> first audio, concurrent real-time sessions")
    s.add_argument("--model", default="tiny", help="model directory or preset (default tiny)")
    s.add_argument("--levels", default="1,2,4,8", help="concurrent sessions to try")
    s.add_argument("--rounds", type=int, default=2, help="turns per session per level")
    s.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    s.add_argument("--device", default="cpu", help="the server's device: cpu, cuda, cuda:1, ...")
    add_quantize_argument(s, "auto")
    s.add_argument("--defer-listening", type=float, default=1.0, metavar="SECONDS",
                   help="the server's --defer-listening (0: listen every tick)")
    s.add_argument("--speculate", action=argparse.BooleanOptionalAction, default=True,
                   help="the server's --speculate (default on)")
    s.add_argument("--transcript-beam-size", type=int, default=1, metavar="N",
                   help="the server's --transcript-beam-size (default 1: greedy transcripts)")
    s.add_argument("--vocoder", choices=("auto", "token2wav", "placeholder"), default="auto",
                   help="the server's speech decoder (placeholder: tones, to time the rest)")
    s.add_argument("--max-text-tokens", type=int, default=24, help="reply cap (default 24)")
    s.add_argument("--max-speech-tokens", type=int, default=150,
                   help="reply speech cap, 25 per second (default 150)")
    s.add_argument("--write-docs", nargs="?", const=DOCS, default=None, metavar="FILE",
                   help=f"write the table into this markdown file's Serving section "
                   f"(default {DOCS})")
    s.add_argument("--json", default=None, help="also write the results as JSON here")
    s.set_defaults(func=run_serve)
    m = bsub.add_parser("modules", help="per-module latency of the serving path")
    m.add_argument("--model", default="tiny", help="model directory or preset (default tiny)")
    m.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    m.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (VAD stays on the CPU)")
    add_quantize_argument(m, "auto")
    m.add_argument("--vocoder", choices=("auto", "token2wav", "placeholder"), default="auto",
                   help="speech decoder to time (default: the model's)")
    m.add_argument("--repeats", type=int, default=20, help="timed runs per module (default 20)")
    m.add_argument("--write-docs", nargs="?", const=DOCS, default=None, metavar="FILE",
                   help=f"write the table into this markdown file (default {DOCS})")
    m.set_defaults(func=run_modules)
    t = bsub.add_parser("token2wav", help="streaming token2wav benchmark (speech generation)",
                        description="Runs benchmarks/bench_token2wav.py (the speech-generation "
                        "benchmark) with these options.")
    t.add_argument("--model", default="tiny",
                   help="model preset or YAML (default tiny; minmo-7b: CosyVoice 2 shapes)")
    t.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    t.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast dtype (default fp32)")
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    t.add_argument("--tokens", type=int, default=150,
                   help="speech tokens streamed, 25 per second (default 150)")
    t.add_argument("--chunk", type=int, default=15, help="tokens fed per step (default 15)")
    t.add_argument("--steps", type=int, default=10, help="Euler steps (default 10)")
    t.add_argument("--mask", default="chunk", choices=["chunk", "chunk2", "full_causal"],
                   help="flow attention mask (default chunk)")
    t.add_argument("--repeats", type=int, default=3, help="timed streams (default 3)")
    t.add_argument("--cuda-graphs", action="store_true",
                   help="replay the flow solve and the vocoder as CUDA graphs (CUDA only)")
    t.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions (CUDA fp32)")
    t.add_argument("--compile", action="store_true", help="torch.compile the flow estimator")
    t.add_argument("--verify", action="store_true", help="compare with a plain eager stream")
    t.add_argument("--count-kernels", action="store_true", help="count the first chunk's eager kernel launches")
    t.set_defaults(func=run_token2wav)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    return p


def _machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{platform.machine()}, {os.cpu_count()} cores{load}, {gpu}, torch {torch.__version__}"


def _weights(info: dict) -> str:
    """How the model's LLM weights were held, from its ``ModelInfo.to_dict()``."""
    return info.get("quantization") or "LLM weights as loaded"


def write_section(path: str | Path, heading: str, body: str) -> None:
    """Replace (or append) the ``## heading`` section of a markdown file; the rest stays."""
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == f"## {heading}"), None)
    block = [f"## {heading}", "", *body.rstrip().splitlines(), ""]
    if start is None:
        lines += ["", *block] if lines and lines[-1].strip() else block
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")),
                   len(lines))
        lines[start:end] = block
    path.write_text("\n".join(lines).rstrip() + "\n")


def _section_file(path: str, marker: str, body: str) -> None:
    """Keep several generated parts in one section, each between HTML comment markers."""
    p = Path(path)
    text = p.read_text() if p.is_file() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Serving"), None)
    section = []
    if start is not None:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")),
                   len(lines))
        section = lines[start + 1:end]
    begin, finish = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    new_part = [begin, *body.rstrip().splitlines(), finish]
    if begin in section and finish in section:
        a, b = section.index(begin), section.index(finish)
        section[a:b + 1] = new_part
    else:
        while section and not section[-1].strip():
            section.pop()
        section += ["", *new_part]
    write_section(p, "Serving", "\n".join(section).strip("\n"))


def run_serve(args: argparse.Namespace) -> int:
    from minmo.serving.bench import (counters, markdown_table, run_serve_benchmark, stage_means,
                                     summary)

    levels = tuple(int(x) for x in args.levels.split(","))
    print(f"minmo bench serve: model {args.model}, server threads {args.threads} on "
          f"{args.device}, levels {levels}, {args.rounds} round(s) each (clients stream in real "
          "time)", file=sys.stderr)
    results, facts = run_serve_benchmark(args.model, levels, args.rounds, args.max_text_tokens,
                                         args.max_speech_tokens, args.threads, args.vocoder,
                                         device=args.device, defer_listening=args.defer_listening,
                                         speculate=args.speculate,
                                         transcript_beam_size=args.transcript_beam_size,
                                         quantize=args.quantize)
    table = markdown_table(results)
    means = stage_means(facts["metrics"])
    stages = ", ".join(f"{k.replace('_', ' ')} {v * 1000:.0f} ms" for k, v in means.items()
                       if k in ("turn_encode", "first_text_token", "first_speech_chunk",
                                "first_audio", "tick"))
    info = facts["model"]
    print(table)
    print(summary(results))
    print(f"server stage means (all levels): {stages}")
    drafts = counters(facts["metrics"])
    if drafts.get("drafts_started"):
        print(f"speculative replies: {drafts.get('drafts_taken', 0)} taken, "
              f"{drafts.get('drafts_dropped', 0)} dropped (the user went on)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "levels": [{"sessions": r.sessions, "p50_s": r.pct(50), "p95_s": r.pct(95),
                        "real_time": r.real_time,
                        "turns": [vars(t) for t in r.turns]} for r in results],
            "facts": {k: v for k, v in facts.items() if k != "metrics"}}, indent=2, default=str))
    if args.write_docs:
        beam = (f" --transcript-beam-size {args.transcript_beam_size}"
                if args.transcript_beam_size > 1 else "")
        body = "\n".join([
            f"`minmo bench serve --model {args.model} --levels {args.levels} --rounds "
            f"{args.rounds} --threads {args.threads} --vocoder {args.vocoder} --device "
            f"{args.device} --defer-listening {args.defer_listening}"
            f"{'' if args.speculate else ' --no-speculate'}{beam} --quantize {args.quantize}` "
            f"({datetime.date.today()}, {_machine()}; model `{info['name']}` {info['source']}, "
            f"{'random weights' if info['random_weights'] else 'trained'}, speech decoder "
            f"{info['vocoder']}, {_weights(info)}).",
            "",
            f"Each client streams a {facts['turn_seconds']} s espeak-ng turn "
            f"({facts['speech_seconds']} s incl. lead-in to the end of speech, then silence) in "
            f"real time, 40 ms frames; replies are capped at {facts['max_text_tokens']} text / "
            f"{facts['max_speech_tokens']} speech tokens. Latency = end of speech (last speech "
            "sample sent) -> first `response.output_audio.delta` received; it includes the "
            "silence the server waits for before it answers (the VAD rule's "
            f"{facts['silence_duration_ms']} ms, or a trusted duplex predictor's shorter wait). "
            "Underrun = how long a player started at the first chunk runs dry in the reply; "
            "stall-free start = latency + that turn's worst underrun (when a player that "
            "buffers just enough would start). Real time = every reply arrived, no underrun "
            "over 100 ms, and p95 latency ≤ 1.5 s.",
            "", table, "", summary(results) + ".",
            "", f"Server stage means over the run: {stages}."])
        _section_file(args.write_docs, f"serve-{args.vocoder}", body)
        print(f"wrote the Serving section of {args.write_docs}", file=sys.stderr)
    return 0


def run_modules(args: argparse.Namespace) -> int:
    from minmo.serving.bench import modules_table, run_modules_benchmark

    rows, facts = run_modules_benchmark(args.model, args.vocoder, args.threads, args.repeats,
                                        args.device, args.quantize)
    table = modules_table(rows)
    print(table)
    if args.write_docs:
        info = facts["model"]
        body = (f"`minmo bench modules --model {args.model} --threads {args.threads} --vocoder "
                f"{args.vocoder} --device {args.device} --quantize {args.quantize}` "
                f"({datetime.date.today()}, {_machine()}; "
                f"model `{info['name']}`, "
                f"speech decoder {info['vocoder']}, {_weights(info)}):\n\n{table}")
        _section_file(args.write_docs, "modules", body)
        print(f"wrote the Serving section of {args.write_docs}", file=sys.stderr)
    return 0


def run_token2wav(args: argparse.Namespace) -> int:
    script = Path("benchmarks/bench_token2wav.py")
    if not script.is_file():
        print("minmo bench token2wav: benchmarks/bench_token2wav.py not found: run from the "
              "repository root of a build that has the speech-generation benchmark",
              file=sys.stderr)
        return 1
    spec = importlib.util.spec_from_file_location("bench_token2wav", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    argv = [f"--{k}={getattr(args, k)}" for k in ("model", "device", "dtype", "threads",
                                                   "tokens", "chunk", "steps", "mask", "repeats")]
    argv += [f"--{k.replace('_', '-')}" for k in ("cuda_graphs", "tf32", "compile", "verify", "count_kernels")
             if getattr(args, k)]
    for name in ("run", "main"):
        fn = getattr(module, name, None)
        if callable(fn):
            out = fn(argv)
            return out if isinstance(out, int) else 0
    print(f"minmo bench token2wav: {script} has no run()/main() to call", file=sys.stderr)
    return 1
