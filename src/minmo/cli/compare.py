"""``minmo compare``: is run B better than run A? A paired bootstrap over their common items."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``compare`` on the main CLI."""
    parser = subparsers.add_parser(
        "compare", help="compare two `minmo eval` runs item by item (paired bootstrap)",
        description="Join two `minmo eval` runs of the same test items on their item ids, "
        "recompute every metric of both from predictions.jsonl and give B - A with a paired "
        "bootstrap interval: the same items are drawn for both runs, so the interval says "
        "whether these items show a difference at all. docs/eval.md, 'Comparing two runs'.",
    )
    parser.add_argument("run_a", metavar="A", help="`minmo eval --out` directory (or its "
                        "predictions.jsonl) of the reference run")
    parser.add_argument("run_b", metavar="B", help="the same for the run compared with A")
    parser.add_argument("--samples", type=int, default=10000,
                        help="bootstrap draws (default 10000; BLEU is recomputed by "
                        "sacrebleu for every draw, so fewer suit large translation sets)")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="coverage of the interval (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    parser.add_argument("--language", default="en",
                        help="language of rows whose prediction does not record one (runs "
                        "written before predictions carried it; default en)")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="also write the comparison as JSON to this file")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``minmo compare``; prints a markdown table."""
    from minmo.eval.compare import (compare_runs, format_comparison, read_predictions,
                                    read_settings, settings_differences)

    try:
        a, b = read_predictions(args.run_a), read_predictions(args.run_b)
        result = compare_runs(a, b, samples=args.samples, seed=args.seed,
                              confidence=args.confidence, language=args.language)
        result.settings_differ = settings_differences(read_settings(args.run_a),
                                                      read_settings(args.run_b))
    except (FileNotFoundError, ValueError) as exc:
        print(f"minmo compare: error: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(result, args.run_a, args.run_b))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result.as_dict(), indent=1) + "\n",
                                       encoding="utf-8")
    return 0
