"""``minmo`` commands (one module each) and the options several of them share."""

from __future__ import annotations

import argparse

QUANTIZE_CHOICES = ("none", "int8")  # as minmo.inference.quantize's (that one imports torch)


def add_quantize_argument(parser: argparse.ArgumentParser) -> None:
    """``--quantize none|int8``: the LLM's weights as loaded or as int8 (CPU)."""
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                        help="int8: store the LLM's linear weights as int8 rows with one scale "
                        "each (CPU only); a decode step of minmo-small ran 3.1x faster on one "
                        "thread with the same ASR WER (docs/benchmarks.md). none (default): "
                        "as loaded")
