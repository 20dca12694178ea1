"""``minmo``: one entry point; each sub-command lives in its own ``minmo.cli.<name>`` module
exposing ``add_parser(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# sub-command modules, in the order --help lists them
COMMANDS = ("serve", "chat", "data", "train", "tokenize", "tts", "eval", "compare", "bench",
            "convert", "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minmo",
        description="MinMo voice LLM: serve a full-duplex voice assistant, train the four "
        "alignment stages, evaluate, benchmark, convert checkpoints.",
    )
    parser.add_argument("--version", action=_PrintVersion, nargs=0,
                        help="show minmo's version and those of the libraries that decide "
                        "results, and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen = set()
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"minmo.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"minmo.cli.{name}":
                continue  # not built yet
            raise
        if id(module) in seen or not hasattr(module, "add_parser"):
            continue
        seen.add(id(module))
        before = set(sub.choices)
        module.add_parser(sub)
        for added in set(sub.choices) - before:
            if sub.choices[added].get_default("func") is None and hasattr(module, "run"):
                sub.choices[added].set_defaults(func=module.run)
    return parser


class _PrintVersion(argparse.Action):
    """``--version``, which reads the library versions only when asked (not at every start)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(_version())
        parser.exit()


def _version() -> str:
    from minmo import library_versions

    versions = library_versions()
    rest = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "minmo")
    return f"minmo {versions['minmo']} ({rest})"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from minmo.checkpoints.io import CheckpointError
    from minmo.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, CheckpointError, FileNotFoundError, KeyError, ValueError) as exc:
        if os.environ.get("MINMO_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"minmo {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"minmo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
