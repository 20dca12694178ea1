"""Refit a package's output projector so that its voice LM hears what it was trained on.

    .venv/bin/python scripts/realign_output_projector.py --teacher OLD_PKG --model NEW_PKG \\
        --data CORPUS/train/tts.jsonl CORPUS/train/s2s_chat.jsonl ... \\
        [--valid CORPUS/valid/tts.jsonl ...] [--limit N] [--ridge 1e-4] --out OUT_PKG

``--teacher`` is the package whose voice LM was trained on its LLM's states (e.g. the
previous minmo-small, ``git show``-ed out), ``--model`` the package whose speech-to-text parts
moved those states since. Both run teacher-forced over the rows with a spoken or read-aloud
reply (``tts``, ``instruct_tts``, ``s2s_chat``; no speech tokens needed), and the new output
projector is the least-squares map from the model's states to the teacher's semantic
vectors (``minmo.training.realign``). ``OUT_PKG`` is ``--model`` with that projector; its
``overlay.json`` records the fit (``1 - R^2`` before and after, on ``--data`` and
``--valid``). Then measure the speech with ``minmo eval --tasks tts,s2s_chat``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, type=Path,
                   help="package whose voice LM was trained on its LLM's states")
    p.add_argument("--model", required=True, type=Path, help="package to realign")
    p.add_argument("--data", required=True, type=Path, nargs="+",
                   help="manifests with tts / instruct_tts / s2s_chat rows to fit on")
    p.add_argument("--valid", type=Path, nargs="*", default=[],
                   help="held-out manifests: score the fit only")
    p.add_argument("--out", required=True, type=Path, help="new package directory")
    p.add_argument("--limit", type=int, help="fit on the first N rows only")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ridge", type=float, default=None,
                   help="ridge strength relative to the inputs' mean energy (default "
                        "minmo.training.realign.DEFAULT_RIDGE)")
    p.add_argument("--task-weight", action="append", default=[], metavar="TASK=W",
                   help="count a task's rows W times in the fit (e.g. s2s_chat=3); repeatable")
    p.add_argument("--cache", type=Path,
                   help="keep the accumulated equations here: a second run with the same "
                        "packages and manifests (other weights or ridge) reads them back")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"realign: {args.out} exists; choose a new --out")

    try:
        weights = {task: float(w) for task, _, w in (t.partition("=") for t in args.task_weight)}
    except ValueError:
        raise SystemExit(f"realign: --task-weight takes TASK=NUMBER, got {args.task_weight}")

    from tqdm import tqdm

    from minmo.inference.loading import load_runtime
    from minmo.training.realign import (DEFAULT_RIDGE, NormalEquations, accumulate,
                                        reply_batches, solve_realignment, write_realigned)

    ridge = DEFAULT_RIDGE if args.ridge is None else args.ridge

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    student = load_runtime(str(args.model)).model
    source = {"teacher": str(args.teacher), "model": str(args.model),
              "data": [str(d) for d in args.data], "valid": [str(d) for d in args.valid],
              "limit": args.limit}
    if args.cache is not None and args.cache.is_file():
        cached = torch.load(args.cache, weights_only=False)
        if cached["source"] != source:
            raise SystemExit(f"realign: {args.cache} holds equations of {cached['source']}, "
                             "not of these arguments; choose another --cache")
        equations = {split: {task: NormalEquations.from_state_dict(state)
                             for task, state in cached[split].items()}
                     for split in ("train", "valid")}
        print(f"realign: equations read from {args.cache}")
    else:
        teacher = load_runtime(str(args.teacher)).model
        bar = tqdm(desc="realign", unit="row")
        equations = {"train": accumulate(teacher, student, reply_batches(
                         student, args.data, args.batch_size, args.limit), bar.update),
                     "valid": accumulate(teacher, student, reply_batches(
                         student, args.valid, args.batch_size), bar.update) if args.valid else {}}
        bar.close()
        if args.cache is not None:
            torch.save({"source": source, **{split: {task: eq.state_dict() for task, eq in
                                                     per_task.items()}
                                             for split, per_task in equations.items()}},
                       args.cache)
    result = solve_realignment(student, equations["train"], equations["valid"], ridge, weights)
    record = {**source, "ridge": ridge, "task_weights": weights, **result.summary()}
    print(json.dumps(record, indent=2))
    path = write_realigned(args.model, args.out, result, record)
    print(f"realign: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
