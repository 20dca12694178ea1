"""The numbers the MinMo paper (arXiv 2501.06282) reports, for the column beside ours.

Only numbers stated in the project's paper summary (``/work/shared/MINMO.md``, "Headline
results" and "Latency budget") are listed. Each has the test set it was measured on; a report
marks a paper number as *same set* only when our run used that set, otherwise it is shown as
context with the paper's set named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PaperNumber:
    """One reported number.

    Attributes:
        task: our task key (``asr``, ``s2tt``, ``lid``, ``tts``, ``instruct_tts``,
            ``spoken_qa_s2t``, ``spoken_qa_s2s``, ``duplex``, ``latency``).
        metric: our metric name (``WER``, ``CER``, ``BLEU``, ``accuracy``, ...).
        dataset: the paper's test set, as written in reports.
        value: in ``unit``.
        unit: ``%``, ``BLEU``, ``F1`` (0..1) or ``ms``.
        matches: regular expression over our dataset names that denotes the same test set
            (empty: none of ours is the same set).
    """

    task: str
    metric: str
    dataset: str
    value: float
    unit: str
    matches: str = ""


PAPER_NUMBERS: tuple[PaperNumber, ...] = (
    PaperNumber("asr", "WER", "LibriSpeech test-clean", 1.74, "%", r"^librispeech/test-clean$"),
    PaperNumber("asr", "WER", "LibriSpeech test-other", 3.89, "%", r"^librispeech/test-other$"),
    PaperNumber("s2tt", "BLEU", "Fleurs zh->en", 24.71, "BLEU", r"^fleurs/cmn_hans_cn->en_us$"),
    PaperNumber("lid", "accuracy", "Fleurs-102", 85.3, "%"),
    PaperNumber("tts", "CER", "Seed-TTS-eval zh", 2.48, "%", r"^seed-tts-eval/zh$"),
    PaperNumber("tts", "WER", "Seed-TTS-eval en", 2.90, "%", r"^seed-tts-eval/en$"),
    PaperNumber("instruct_tts", "accuracy", "voice instruction following", 98.4, "%"),
    PaperNumber("spoken_qa_s2t", "S2T accuracy", "Llama Questions (S2T)", 78.9, "%",
                r"^llama-questions$"),
    PaperNumber("spoken_qa_s2s", "S2S accuracy", "Llama Questions (S2S)", 64.1, "%",
                r"^llama-questions$"),
    PaperNumber("duplex", "assistant turn-taking F1@10", "Alimeeting", 0.80, "F1"),
    PaperNumber("duplex", "assistant turn-taking F1@10", "Fisher", 0.88, "F1"),
    PaperNumber("duplex", "assistant turn-taking F1@10", "simulated", 0.99, "F1"),
    PaperNumber("duplex", "back-channel accuracy", "Alimeeting", 71.0, "%"),
    PaperNumber("duplex", "back-channel accuracy", "Fisher", 81.0, "%"),
    PaperNumber("duplex", "turn-taking latency", "Alimeeting", 449.0, "ms"),
    PaperNumber("duplex", "turn-taking latency", "Fisher", 189.0, "ms"),
    PaperNumber("duplex", "turn-taking latency", "simulated", 89.0, "ms"),
    PaperNumber("latency", "duplex decision", "NVIDIA L20", 250.0, "ms"),
    PaperNumber("latency", "first text token", "NVIDIA L20", 95.0, "ms"),
    PaperNumber("latency", "5 text tokens", "NVIDIA L20", 150.0, "ms"),
    PaperNumber("latency", "15 speech tokens", "NVIDIA L20", 70.0, "ms"),
    PaperNumber("latency", "first audio chunk (token2wav)", "NVIDIA L20", 130.0, "ms"),
    PaperNumber("latency", "end to end (measured)", "NVIDIA L20", 800.0, "ms"),
)


def paper_numbers_for(task: str, metric: str) -> list[PaperNumber]:
    """All paper numbers of ``(task, metric)``; metric names compare case-insensitively, and
    an ``F1@K`` metric matches the paper's ``F1@10`` only when K is 10."""
    return [p for p in PAPER_NUMBERS if p.task == task and p.metric.lower() == metric.lower()]


def same_set(number: PaperNumber, dataset: str) -> bool:
    """True when our ``dataset`` is the paper's test set of ``number``."""
    return bool(number.matches) and re.search(number.matches, dataset) is not None


def format_paper_cell(task: str, metric: str, dataset: str) -> str:
    """Markdown cell text: ``"1.74 (same set)"``, ``"0.99 (simulated)"``, ... or ``"–"``."""
    numbers = paper_numbers_for(task, metric)
    if not numbers:
        return "–"
    exact = [p for p in numbers if same_set(p, dataset)]
    if exact:
        return f"{_fmt(exact[0].value, exact[0].unit)} (same set)"
    return "; ".join(f"{_fmt(p.value, p.unit)} ({p.dataset})" for p in numbers)


def _fmt(value: float, unit: str) -> str:
    if unit == "F1":
        return f"{value:.2f}"
    if unit == "ms":
        return f"{value:.0f} ms"
    return f"{value:.2f}" if unit in ("%", "BLEU") else f"{value:g}"
