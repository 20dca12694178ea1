"""``minmo`` commands (one module each) and the options several of them share."""

from __future__ import annotations

import argparse

QUANTIZE_CHOICES = ("auto", "none", "int8")  # as minmo.inference.quantize's (that imports torch)


def add_quantize_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--quantize auto|none|int8``: the LLM's weights as int8 (CPU) or as loaded."""
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=default,
                        help="int8: the LLM's linear weights as int8 rows with one scale each "
                        "(CPU only): minmo-small's decode step ran 2.8x faster on one thread "
                        "and scored within 2.1 WER points or two items of float on every "
                        "test measured (docs/benchmarks.md); none: as loaded; auto: int8 on a "
                        f"CPU, none on a GPU (default: {default})")
