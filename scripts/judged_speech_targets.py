"""The voice LM's own speech, judged by an ASR, as its next training targets (best of K).

    .venv/bin/python scripts/judged_speech_targets.py --model PKG \\
        --data CORPUS/train/tts.jsonl [CORPUS/train/s2s_chat.jsonl ...] \\
        --samples 3 [--max-wer 0] [--limit N] [--shard 0/2] --out OUT.tokens.jsonl

Rejection sampling with an ASR reward (``minmo.training.asr_reward``): the package speaks each
``tts`` row's text / ``s2s_chat`` row's answer ``K`` times (take 0 as it always speaks, the
others sampled), Whisper tiny.en (the ``eval`` extra) transcribes each take, and the best take
becomes the row's ``speech_tokens`` when its WER is at most ``--max-wer`` (against the
reference answer, or with ``--own-answers`` against the answer the model wrote). Then train the
voice LM on ``OUT``:

    python scripts/train_minmo_small.py --out RUN --stages s2s --init-package PKG \\
        --set "s2s:data.train=[OUT]" --set "s2s:data.tasks=[s2s_chat,tts]" ... --export DIR

(no speech tokenizer needed: the tokens are the package's own). ``--pairs PAIRS.tokens.jsonl``
also writes, from every row of the report, preference pairs (the best take and one heard with
at least ``--min-gap`` more word errors) for stage ``s2s_dpo``:

    python scripts/train_minmo_small.py --out RUN --stages s2s_dpo --init-package PKG \
        --set "s2s_dpo:data.train=[PAIRS]" ... --export DIR

Rows are shuffled with seed
0 before ``--limit``; rows already in the report (``OUT`` with ``.report.jsonl`` in place of
``.tokens.jsonl``, every take's tokens, transcript and WER) are skipped, so a stopped run resumes and a
larger ``--limit`` extends it. ``--shard i/n`` in ``n`` processes splits the rows;
concatenate the outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def speak_and_judge(args: argparse.Namespace, todo: list, report: Path) -> None:
    """Speak and judge each ``(manifest folder, row)`` of ``todo``; append the kept rows to
    ``args.out`` and every row to ``report``."""
    from tqdm import tqdm

    from minmo.eval.adapters import load_eval_model, make_judge
    from minmo.training.asr_reward import judge_row, report_row, target_row

    model = load_eval_model(args.model)
    judge = make_judge(args.asr_judge, model)
    if judge is None:
        raise SystemExit(f"judged_speech_targets: --asr-judge {args.asr_judge}: no judge")
    kept = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as out, open(report, "a", encoding="utf-8") as rep:
        for base, row in tqdm(todo, disable=args.no_progress, unit="row"):
            takes, best = judge_row(model.rt, judge, row, base, args.samples, args.max_wer,
                                    args.top_k, args.max_seconds, args.own_answers)
            if best is not None:
                kept += 1
                out.write(json.dumps(target_row(row, base, best)) + "\n")
                out.flush()
            rep.write(json.dumps(report_row(row, takes, best)) + "\n")
            rep.flush()
    print(f"judged_speech_targets: kept {kept} of {len(todo)} rows -> {args.out}")


def write_pairs(report: Path, rows: list, path: Path, min_gap: float) -> int:
    """Preference pairs of every report row whose takes a judge told apart
    (``asr_reward.preference_pair``) -> ``path`` (rewritten); returns their number."""
    from minmo.training.asr_reward import pair_row, report_takes, row_pair

    by_id = {row["id"]: (base, row) for base, row in rows}
    pairs = 0
    with open(report, encoding="utf-8") as f, open(path, "w", encoding="utf-8") as out:
        for entry in map(json.loads, filter(str.strip, f)):
            if entry["id"] not in by_id:
                continue
            base, row = by_id[entry["id"]]
            pair = row_pair(row, report_takes(entry), min_gap)
            if pair is not None:
                pairs += 1
                out.write(json.dumps(pair_row(row, base, *pair)) + "\n")
    return pairs


def main(argv: list[str] | None = None) -> int:
    from minmo.training.asr_reward import DEFAULT_TOP_K

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="package (or model spec) that speaks")
    p.add_argument("--data", required=True, type=Path, nargs="+",
                   help="manifests; their tts and s2s_chat rows are spoken")
    p.add_argument("--out", required=True, type=Path,
                   help="kept rows with speech_tokens (*.tokens.jsonl; appended to)")
    p.add_argument("--samples", type=int, default=3, help="takes per row (K)")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                   help="takes 1..K-1 sample from this many likeliest speech tokens")
    p.add_argument("--max-wer", type=float, default=0.0,
                   help="keep the best take only if its WER is at most this (a fraction)")
    p.add_argument("--asr-judge", default="faster-whisper:tiny.en",
                   help="faster-whisper:DIR, faster-whisper:tiny.en (the installed copy) or self")
    p.add_argument("--own-answers", action="store_true",
                   help="s2s_chat: judge takes against the answer the model wrote and keep it "
                        "as the row's target (on-policy for the voice LM), not only rows it "
                        "answered as the reference does")
    p.add_argument("--pairs", type=Path,
                   help="also write preference pairs from the whole report to this "
                        "*.tokens.jsonl (rewritten; stage s2s_dpo trains on it)")
    p.add_argument("--min-gap", type=float, default=0.2,
                   help="a pair's rejected take has at least this much more WER (a fraction)")
    p.add_argument("--max-seconds", type=float, default=12.0, help="speech length cap per take")
    p.add_argument("--limit", type=int, help="the first N (shuffled) rows only, before sharding")
    p.add_argument("--shard", default="0/1", help="i/n: this process speaks rows i, i+n, ...")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for flag, path in (("--out", args.out), ("--pairs", args.pairs)):
        if path is not None and not path.name.endswith(".tokens.jsonl"):
            raise SystemExit(f"judged_speech_targets: {flag} {path}: name it *.tokens.jsonl "
                             "(the training scripts read speech tokens from such manifests)")
    try:
        shard, shards = (int(x) for x in args.shard.split("/"))
    except ValueError:
        shard, shards = -1, 0
    if not 0 <= shard < shards:
        raise SystemExit(f"judged_speech_targets: --shard {args.shard}: expected i/n, 0 <= i < n")

    import torch

    from minmo.training.asr_reward import read_reply_rows

    torch.set_num_threads(args.threads)
    rows = read_reply_rows(args.data)[:args.limit][shard::shards]
    report = args.out.with_name(args.out.name.removesuffix(".tokens.jsonl") + ".report.jsonl")
    done = set()
    if report.is_file():
        with open(report, encoding="utf-8") as f:
            done = {json.loads(line)["id"] for line in f if line.strip()}
    todo = [(base, row) for base, row in rows if row["id"] not in done]
    print(f"judged_speech_targets: {len(todo)} rows to speak ({len(rows) - len(todo)} done), "
          f"up to {args.samples} takes each")
    if todo:
        speak_and_judge(args, todo, report)
    if args.pairs is not None:
        if not report.is_file():
            raise SystemExit(f"judged_speech_targets: --pairs: no report {report} (no row judged)")
        pairs = write_pairs(report, rows, args.pairs, args.min_gap)
        print(f"judged_speech_targets: {pairs} preference pairs (WER gap >= {args.min_gap}) "
              f"from {report} -> {args.pairs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
