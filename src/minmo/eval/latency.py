"""Latency aggregation in the paper's terms.

Each measured turn gives a record ``{stage: milliseconds}``. The stages MinMo reports
(latency budget, measured on an NVIDIA L20) are *durations of successive stages*, whose sum
is the theoretical response latency:

==========================  ======================================================  ==========
key                         duration of                                              paper (ms)
==========================  ======================================================  ==========
``duplex_decision``         user stops talking -> duplex predictor says RESPOND      250
``first_text_token``        reply start -> first reply text token                    95
``five_text_tokens``        reply start -> 5th text token (first voice-LM block)     150
``fifteen_speech_tokens``   5th text token -> 15th speech token from the voice LM    70
``first_audio_chunk``       15th speech token -> first audio chunk out of token2wav  130
``end_to_end``              user stops talking -> first assistant audio (measured)   ~800
==========================  ======================================================  ==========

(The paper's theoretical sum 250 + 150 + 70 + 130 is ~600 ms; its measured end to end is
~800 ms.) Any other key in a record (per-module timings such as ``encoder``) is aggregated too
and listed after the paper's stages.

Statistics per stage: count, mean, min, max, and p50/p90/p95 computed with numpy's default
*linear* interpolation between order statistics (``np.percentile(values, q)``). Missing,
``None`` and non-finite values are skipped, so a stage's count may be smaller than the number
of records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

PAPER_STAGES: tuple[tuple[str, str, float], ...] = (
    ("duplex_decision", "duplex decision", 250.0),
    ("first_text_token", "first text token", 95.0),
    ("five_text_tokens", "5 text tokens", 150.0),
    ("fifteen_speech_tokens", "15 speech tokens", 70.0),
    ("first_audio_chunk", "first audio chunk (token2wav)", 130.0),
    ("end_to_end", "end to end (measured)", 800.0),
)
PAPER_THEORETICAL_TOTAL_MS = 600.0
STAGE_LABELS = {key: label for key, label, _ in PAPER_STAGES}
STAGE_LABELS.update({
    "duplex_frame_compute": "duplex predictor compute per frame",
    "asr": "ASR pass (cascade)",
})
PAPER_STAGE_MS = {key: ms for key, _, ms in PAPER_STAGES}


@dataclass
class LatencyStats:
    """Summary of one stage's latencies in milliseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p95: float
    min: float
    max: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict for ``results.json``."""
        return dict(self.__dict__)


def summarize(values: Iterable[float]) -> LatencyStats:
    """Count, mean, percentiles (linear interpolation), min and max of finite values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        nan = float("nan")
        return LatencyStats(0, nan, nan, nan, nan, nan, nan)
    p50, p90, p95 = (float(v) for v in np.percentile(x, [50, 90, 95]))
    return LatencyStats(int(x.size), float(x.mean()), p50, p90, p95, float(x.min()), float(x.max()))


def aggregate_latencies(records: Iterable[Mapping[str, float | None]]) -> dict[str, LatencyStats]:
    """Per-stage statistics over turn records.

    Args:
        records: one mapping ``{stage: ms}`` per measured turn.

    Returns:
        ``{stage: LatencyStats}``: the paper's stages first (those present), in paper order,
        then any other stage in first-seen order.
    """
    collected: dict[str, list[float]] = {}
    for n, record in enumerate(records):
        for stage, value in record.items():
            if value is not None and not isinstance(value, (int, float, np.floating, np.integer)):
                raise TypeError(
                    f"latency record {n}: stage {stage!r} has {type(value).__name__} "
                    f"{value!r}; expected milliseconds as a number"
                )
            collected.setdefault(stage, [])
            if value is not None:
                collected[stage].append(float(value))
    ordered = [k for k, _, _ in PAPER_STAGES if k in collected]
    ordered += [k for k in collected if k not in PAPER_STAGE_MS]
    return {stage: summarize(collected[stage]) for stage in ordered}


def reply_stage_latencies(
    first_token_s: float | None,
    five_tokens_s: float | None,
    fifteen_speech_tokens_s: float | None,
    first_audio_s: float | None,
    before_reply_s: float | None = None,
) -> dict[str, float]:
    """Paper stage durations (ms) from cumulative reply timestamps (seconds from reply start).

    Args:
        first_token_s: first text token.
        five_tokens_s: 5th text token.
        fifteen_speech_tokens_s: 15th speech token ready for token2wav.
        first_audio_s: first audio chunk out of token2wav.
        before_reply_s: time from the end of the user's speech to the reply start (encoding,
            and the duplex decision where measured); when given, ``end_to_end`` is filled.

    Returns:
        The stages that can be computed (a missing timestamp leaves its stages out).
    """
    out: dict[str, float] = {}
    if first_token_s is not None:
        out["first_text_token"] = 1000.0 * first_token_s
    if five_tokens_s is not None:
        out["five_text_tokens"] = 1000.0 * five_tokens_s
        if fifteen_speech_tokens_s is not None:
            out["fifteen_speech_tokens"] = 1000.0 * (fifteen_speech_tokens_s - five_tokens_s)
    if fifteen_speech_tokens_s is not None and first_audio_s is not None:
        out["first_audio_chunk"] = 1000.0 * (first_audio_s - fifteen_speech_tokens_s)
    if before_reply_s is not None and first_audio_s is not None:
        out["end_to_end"] = 1000.0 * (before_reply_s + first_audio_s)
    return out
