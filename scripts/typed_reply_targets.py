"""Spoken questions with the answers the model gives to the same words typed: ``s2t_chat``
rows that teach speech-to-text to answer what it hears as the LLM answers text (behaviour
alignment, as in BLSP: the LLM's own reply is the target, so no answer is written by hand,
and what the speech path learns to reach is the LLM's knowledge, not a new one).

Two steps, because a reply depends only on the words:

    # 1. the model's typed reply to each line of a text file (greedy; N processes side by side
    #    with --shard I/N, then cat the outputs)
    .venv/bin/python scripts/typed_reply_targets.py answer questions.txt --out replies.jsonl \
        [--model minmo-small] [--max-tokens 60] [--shard 0/2]
    # 2. asr rows of those questions (e.g. `minmo data synth --kinds text --text-file
    #    questions.txt`) -> s2t_chat rows with the reply as target
    .venv/bin/python scripts/typed_reply_targets.py rows MANIFEST.jsonl --replies replies.jsonl \
        --out ROWS.jsonl

A reply that does not end within ``--max-tokens`` is not kept (a cut answer would teach
cutting). ``rows`` writes each ``asr`` row whose text has a reply as task ``s2t_chat`` with the
reply as ``target`` (id suffixed ``-typed``, audio path made absolute).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def answer(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from minmo.inference import pipeline as P
    from minmo.inference.loading import load_runtime

    torch.set_num_threads(args.threads)
    index, count = (int(x) for x in args.shard.split("/"))
    lines = [line.strip() for line in args.texts.read_text(encoding="utf-8").splitlines()]
    texts = list(dict.fromkeys(t for t in lines if t and not t.startswith("#")))[index::count]
    rt = load_runtime(args.model)
    if rt.info.warning:
        print(f"typed_reply_targets: model warning: {rt.info.warning}", file=sys.stderr)
    gen = P.GenerationConfig(max_text_tokens=args.max_tokens, max_speech_tokens=0)
    kept = 0
    with args.out.open("w", encoding="utf-8") as fh:
        for text in tqdm(texts, desc="typed replies", unit="text"):
            session = P.new_session(rt, P.SessionConfig(generation=gen))
            result = P.reply(rt, None, session, audio=False, text=text)
            if result.status == "completed" and result.text.strip():
                fh.write(json.dumps({"text": text, "reply": result.text.strip()}) + "\n")
                kept += 1
    print(f"typed_reply_targets: {kept} of {len(texts)} texts answered within "
          f"{args.max_tokens} tokens -> {args.out}")
    return 0


def rows(args: argparse.Namespace) -> int:
    replies = {}
    for path in args.replies:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                replies[obj["text"]] = obj["reply"]
    written = missing = 0
    with args.out.open("w", encoding="utf-8") as fh:
        for line in args.manifest.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else None
            if row is None or row.get("task") != "asr":
                continue
            reply = replies.get(row["text"])
            if reply is None:
                missing += 1
                continue
            audio = Path(row["audio"])
            if not audio.is_absolute():
                audio = (args.manifest.parent / audio).resolve()
            fh.write(json.dumps({**row, "id": f"{row['id']}-typed", "task": "s2t_chat",
                                 "audio": str(audio), "target": reply}) + "\n")
            written += 1
    print(f"typed_reply_targets: {written} s2t_chat rows -> {args.out} ({missing} asr rows "
          "had no reply)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("answer", help="the model's typed reply to each line of a text file")
    a.add_argument("texts", type=Path, help="one question per line (# lines skipped)")
    a.add_argument("--out", type=Path, required=True, help="jsonl of {text, reply}")
    a.add_argument("--model", default=None, help="model (default: minmo-small)")
    a.add_argument("--max-tokens", type=int, default=60, help="reply length limit")
    a.add_argument("--shard", default="0/1", help="I/N: every N-th text from the I-th")
    a.add_argument("--threads", type=int, default=1, help="torch threads")
    a.set_defaults(func=answer)
    r = sub.add_parser("rows", help="asr rows -> s2t_chat rows with the typed replies as targets")
    r.add_argument("manifest", type=Path, help="asr rows whose text is a question")
    r.add_argument("--replies", type=Path, nargs="+", required=True, help="answer's outputs")
    r.add_argument("--out", type=Path, required=True, help="s2t_chat rows to write")
    r.set_defaults(func=rows)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
