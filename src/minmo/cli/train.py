"""``minmo train CONFIG [key=value ...]``: run (or resume) one training stage.

Multi-process: ``torchrun --nproc_per_node N $(which minmo) train CONFIG`` (or
``python -m torch.distributed.run --nproc_per_node N -m minmo.cli.train CONFIG``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap

from minmo.checkpoints import CheckpointError
from minmo.config import ConfigError, load_train_config
from minmo.training.errors import TrainingError

HELP = ("train one stage (MinMo: s2t_prealign, s2t_fullalign, s2t_sft, t2s_projector, t2s_full, s2s, "
        "duplex; the CTC aid s2t_ctc; speech generation: speech_tokenizer, flow, vocoder, speaker)")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train`` on the ``minmo`` command line."""
    p = subparsers.add_parser(
        "train", help=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(HELP + ". Resumes automatically from the latest checkpoint "
                                  "in output_dir.", 88),
        epilog="fine-tune the shipped model on your own recordings (docs/training.md):\n"
               "  minmo data import folder my_clips/ --out my.jsonl --language en\n"
               "  minmo train configs/train/s2t_sft.yaml init=minmo-small data.train=[my.jsonl] \\\n"
               "      optim.max_steps=100 output_dir=runs/my_sft\n"
               "  minmo chat my_clips/a.wav --model runs/my_sft")
    p.add_argument("config", help="train YAML (e.g. configs/train/s2t_prealign.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. optim.max_steps=100 data.train=[a.jsonl]")
    p.set_defaults(func=run)
    return p


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(message)s" if rank == 0 else f"[rank {rank}] %(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def one_line(message: str) -> str:
    """Fold a multi-line message (e.g. a YAML parser's, with its caret art) into one line."""
    parts = [p.strip() for p in message.splitlines()]
    return " ".join(p for p in parts if p and set(p) != {"^"})


def run(args: argparse.Namespace) -> int:
    """Load the config, train, print the summary line. Known errors become one line on
    stderr and exit code 1 (set ``MINMO_DEBUG=1`` for the traceback)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _setup_logging()
    try:
        cfg = load_train_config(args.config, args.overrides)
        from minmo.training.loop import train

        result = train(cfg)
    except (ConfigError, TrainingError, CheckpointError, FileNotFoundError) as exc:
        if os.environ.get("MINMO_DEBUG"):
            raise
        print(f"minmo train: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(result.summary(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m minmo.cli.train CONFIG [overrides]`` (same as ``minmo train``)."""
    parser = argparse.ArgumentParser(prog="minmo train")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
