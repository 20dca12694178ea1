"""Serving benchmark: end of user speech -> first reply audio byte (p50/p95), and how many
concurrent sessions stay real time. Same as ``minmo bench serve`` (see its --help)::

    python benchmarks/bench_serve.py --model tiny --levels 1,2,4,8 --vocoder placeholder
    python benchmarks/bench_serve.py --write-docs      # updates docs/benchmarks.md "Serving"
"""

import argparse
import sys

from minmo.cli.bench import add_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_serve")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["bench", "serve", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
