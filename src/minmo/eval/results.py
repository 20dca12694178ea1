"""The result of an evaluation run: what ``results.json`` holds and the report is drawn from.

Units: error rates and accuracies are stored in percent, BLEU in 0..100, duplex F1 in 0..1,
latencies and turn-taking delays in milliseconds, speaker similarity as a cosine in -1..1.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class MetricRow:
    """One number in the report.

    Attributes:
        task: task key (``asr``, ``s2tt``, ``lid``, ``ser``, ``aed``, ``sa``,
            ``spoken_qa_s2t``, ``spoken_qa_s2s``, ``tts``, ``instruct_tts``, ``duplex``).
        dataset: test set name.
        system: ``minmo`` (the model under test) or a baseline such as ``cascade``.
        metric: ``WER``, ``CER``, ``BLEU``, ``accuracy``, ``assistant turn-taking F1@10``, ...
        value: the number, in ``unit``; NaN when it could not be computed.
        unit: ``%``, ``BLEU``, ``F1``, ``ms`` or ``cos``.
        higher_is_better: direction of the metric.
        count: items (or dialogues) it was computed on.
        details: metric ingredients (edit counts, per-speaker rates, confusion matrix, ...).
    """

    task: str
    dataset: str
    system: str
    metric: str
    value: float
    unit: str
    higher_is_better: bool
    count: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class SkippedTask:
    """A task that was not scored, and why (no fake numbers: the reason is reported)."""

    task: str
    dataset: str
    system: str
    reason: str
    count: int = 0


@dataclass
class DuplexExample:
    """One dialogue's timeline for the plot.

    Attributes:
        id: dialogue id.
        frame_ms: frame length of all sequences.
        user_active: ``(F,)`` 0/1 user speech activity.
        assistant_active: ``(F,)`` 0/1 assistant speech activity (reference).
        true_labels: ``(F,)`` reference decisions (0 listen, 1 respond, 2 stop, 3 continue).
        predicted_labels: ``(F',)`` model decisions.
    """

    id: str
    frame_ms: float
    user_active: list[int]
    assistant_active: list[int]
    true_labels: list[int]
    predicted_labels: list[int]


@dataclass
class EvalResults:
    """Everything an evaluation run produced."""

    model: str
    suite: str
    created: str
    settings: dict[str, Any] = field(default_factory=dict)
    rows: list[MetricRow] = field(default_factory=list)
    skipped: list[SkippedTask] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    latency: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    latency_samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    duplex_examples: list[DuplexExample] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def systems(self) -> list[str]:
        """Systems in first-seen order (the model under test first)."""
        seen: list[str] = []
        for row in self.rows:
            if row.system not in seen:
                seen.append(row.system)
        for name in self.latency:
            if name not in seen:
                seen.append(name)
        return seen

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (NaN and infinities become ``null``)."""
        return _json_safe(asdict(self))

    def write_json(self, path: str | Path) -> Path:
        """Write ``results.json`` (UTF-8, indented)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalResults:
        """Rebuild from :meth:`to_json` output (``null`` numbers come back as NaN)."""
        rows = [MetricRow(**{**r, "value": _nan_if_none(r["value"])}) for r in data.get("rows", [])]
        return cls(
            model=data["model"], suite=data["suite"], created=data["created"],
            settings=data.get("settings", {}), rows=rows,
            skipped=[SkippedTask(**s) for s in data.get("skipped", [])],
            problems=list(data.get("problems", [])),
            latency=data.get("latency", {}),
            latency_samples=data.get("latency_samples", {}),
            duplex_examples=[DuplexExample(**d) for d in data.get("duplex_examples", [])],
            schema_version=data.get("schema_version", SCHEMA_VERSION),
        )


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _json_safe(obj.item())
    return obj
