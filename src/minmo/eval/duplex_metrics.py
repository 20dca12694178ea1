"""Full-duplex metrics: positive-class F1@K, back-channel accuracy, turn-taking and barge-in
latency.

Everything works on integer *frame indices* on one grid (the runner states the frame length
in ms in its results). The decision classes are the ones of ``docs/architecture.md``:
``0 LISTEN``, ``1 RESPOND``, ``2 STOP``, ``3 CONTINUE``.

Events. From a per-frame label sequence, the events of a class are the *onsets* of its runs:
frame ``t`` is an event when ``labels[t] == c`` and ``labels[t-1] != c`` (or ``t == 0``). So a
RESPOND held for 5 frames is one event at its first frame.

F1@K matching rule (one-to-one). A predicted event ``p`` may match a true event ``t`` when
``|p - t| <= K``: **exactly K frames away counts, K + 1 does not**. Predictions are taken in
time order; each is matched to the earliest still-unmatched true event inside its window.
(For equal-width windows this greedy order gives a maximum matching.) Matched predictions are
true positives, unmatched predictions false positives, unmatched true events false negatives;
precision, recall and F1 follow, and over several dialogues the counts are summed (micro).
Assistant turn-taking uses RESPOND events, user turn-taking (barge-in) STOP events. The paper
reports K = 10.

Back-channel accuracy. For every user back-channel interval ``[start, end]`` (frames, while
the assistant speaks) the model is right when it predicts no STOP event in
``[start, end + K]``: it keeps talking. Accuracy = right / back-channels.

Turn-taking latency. For each true RESPOND event ``t`` (the user's turn ended), the first
predicted RESPOND event ``p`` with ``t - K <= p < t_next`` (``t_next``: the next true RESPOND
event, or the end) is the model's reaction; latency = ``(p - t) * frame_ms`` (negative when the
model answered up to K frames early). The mean is over true events that got a reaction; the
ones that did not are counted as ``missed``.

Barge-in latency. The same rule on STOP events: how long after the true STOP (where the
recorded assistant was cut; in the synthetic corpus 200 ms after the user's onset) the model
stopped. A rule that waits for enough overlapping speech scores well on F1@K (K frames of
tolerance) yet keeps talking over the user for longer: this is where that shows.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

LISTEN, RESPOND, STOP, CONTINUE = 0, 1, 2, 3
DECISION_NAMES = {LISTEN: "listen", RESPOND: "respond", STOP: "stop", CONTINUE: "continue"}


def event_onsets(labels: Sequence[int] | np.ndarray, positive: int) -> list[int]:
    """Frames where a run of ``positive`` starts in a per-frame label sequence.

    Example: ``event_onsets([0, 1, 1, 0, 1], 1)`` -> ``[1, 4]``.
    """
    x = np.asarray(labels).reshape(-1)
    hit = x == positive
    if hit.size == 0:
        return []
    starts = hit & np.concatenate([[True], ~hit[:-1]])
    return [int(i) for i in np.nonzero(starts)[0]]


def match_events(
    true_events: Sequence[int], predicted_events: Sequence[int], k: int = 10
) -> list[tuple[int, int]]:
    """One-to-one matching of predicted to true events within ``k`` frames (``|p-t| <= k``).

    Returns:
        ``(true_frame, predicted_frame)`` pairs in time order.
    """
    if k < 0:
        raise ValueError(f"match_events: tolerance k must be >= 0, got {k}")
    truth = sorted(int(t) for t in true_events)
    used = [False] * len(truth)
    pairs = []
    for p in sorted(int(p) for p in predicted_events):
        i = bisect.bisect_left(truth, p - k)
        while i < len(truth) and truth[i] <= p + k:
            if not used[i]:
                used[i] = True
                pairs.append((truth[i], p))
                break
            i += 1
    return pairs


@dataclass
class DetectionScore:
    """Event detection counts and the scores derived from them."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    @property
    def precision(self) -> float:
        """tp / (tp + fp); 0 when nothing was predicted."""
        d = self.true_positives + self.false_positives
        return self.true_positives / d if d else 0.0

    @property
    def recall(self) -> float:
        """tp / (tp + fn); 0 when there was nothing to find."""
        d = self.true_positives + self.false_negatives
        return self.true_positives / d if d else 0.0

    @property
    def f1(self) -> float:
        """2PR / (P + R); 0 when both are 0."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if (p + r) else 0.0

    def __add__(self, other: DetectionScore) -> DetectionScore:
        return DetectionScore(
            self.true_positives + other.true_positives,
            self.false_positives + other.false_positives,
            self.false_negatives + other.false_negatives,
        )

    def as_dict(self) -> dict[str, float]:
        """Plain dict for ``results.json``."""
        return {"f1": self.f1, "precision": self.precision, "recall": self.recall,
                "tp": self.true_positives, "fp": self.false_positives,
                "fn": self.false_negatives}


def f1_at_k(true_events: Sequence[int], predicted_events: Sequence[int], k: int = 10) -> DetectionScore:
    """Positive-class detection score with tolerance ``k`` frames (rule in the module doc)."""
    matched = len(match_events(true_events, predicted_events, k))
    return DetectionScore(matched, len(predicted_events) - matched, len(true_events) - matched)


def f1_at_k_from_labels(
    true_labels: Sequence[int] | np.ndarray,
    predicted_labels: Sequence[int] | np.ndarray,
    positive: int,
    k: int = 10,
) -> DetectionScore:
    """:func:`f1_at_k` on the onsets of ``positive`` in two per-frame label sequences."""
    return f1_at_k(event_onsets(true_labels, positive), event_onsets(predicted_labels, positive), k)


@dataclass
class BackchannelScore:
    """Back-channels the model talked through (``kept``) out of ``total``."""

    kept: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        """kept / total; NaN when there was no back-channel."""
        return self.kept / self.total if self.total else float("nan")

    def __add__(self, other: BackchannelScore) -> BackchannelScore:
        return BackchannelScore(self.kept + other.kept, self.total + other.total)

    def as_dict(self) -> dict[str, float]:
        """Plain dict for ``results.json``."""
        return {"accuracy": self.accuracy, "kept": self.kept, "total": self.total}


def _stopped_in(intervals: Sequence[tuple[int, int]], predicted_stop_events: Sequence[int],
                k: int, what: str) -> list[bool]:
    """For each user interval ``[start, end]``: a predicted STOP lies in ``[start, end + k]``."""
    stops = sorted(int(p) for p in predicted_stop_events)
    out = []
    for start, end in intervals:
        if end < start:
            raise ValueError(f"{what}: interval ({start}, {end}) ends before it starts")
        i = bisect.bisect_left(stops, start)
        out.append(i < len(stops) and stops[i] <= end + k)
    return out


def backchannel_accuracy(
    backchannels: Sequence[tuple[int, int]], predicted_stop_events: Sequence[int], k: int = 10
) -> BackchannelScore:
    """Count back-channels ``[start, end]`` with no predicted STOP in ``[start, end + k]``."""
    stopped = _stopped_in(backchannels, predicted_stop_events, k, "backchannel_accuracy")
    return BackchannelScore(stopped.count(False), len(stopped))


@dataclass
class CommandScore:
    """Short user commands ("stop", "wait") over the assistant that it stopped for."""

    obeyed: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        """obeyed / total; NaN when there was no command."""
        return self.obeyed / self.total if self.total else float("nan")

    def __add__(self, other: CommandScore) -> CommandScore:
        return CommandScore(self.obeyed + other.obeyed, self.total + other.total)

    def as_dict(self) -> dict[str, float]:
        """Plain dict for ``results.json``."""
        return {"accuracy": self.accuracy, "obeyed": self.obeyed, "total": self.total}


def command_accuracy(
    commands: Sequence[tuple[int, int]], predicted_stop_events: Sequence[int], k: int = 10
) -> CommandScore:
    """Count commands ``[start, end]`` with a predicted STOP in ``[start, end + k]``: the
    mirror of :func:`backchannel_accuracy` (a command must stop the assistant)."""
    stopped = _stopped_in(commands, predicted_stop_events, k, "command_accuracy")
    return CommandScore(stopped.count(True), len(stopped))


@dataclass
class TurnLatency:
    """Turn-taking reaction times in ms (``values``) and true turns with no reaction."""

    values: list[float] = field(default_factory=list)
    missed: int = 0

    @property
    def mean_ms(self) -> float:
        """Mean latency in ms; NaN when no turn got a reaction."""
        return float(np.mean(self.values)) if self.values else float("nan")

    def __add__(self, other: TurnLatency) -> TurnLatency:
        return TurnLatency(self.values + other.values, self.missed + other.missed)

    def as_dict(self) -> dict[str, float]:
        """Plain dict for ``results.json``."""
        return {"mean_ms": self.mean_ms, "count": len(self.values), "missed": self.missed}


def turn_taking_latency(
    true_events: Sequence[int], predicted_events: Sequence[int], frame_ms: float, k: int = 10
) -> TurnLatency:
    """Reaction time of the model to each true turn end (rule in the module docstring)."""
    truth = sorted(int(t) for t in true_events)
    preds = sorted(int(p) for p in predicted_events)
    out = TurnLatency()
    for n, t in enumerate(truth):
        upper = truth[n + 1] if n + 1 < len(truth) else None
        i = bisect.bisect_left(preds, t - k)
        if i < len(preds) and (upper is None or preds[i] < upper):
            out.values.append((preds[i] - t) * frame_ms)
        else:
            out.missed += 1
    return out


def seconds_to_frame(seconds: float, frame_ms: float) -> int:
    """Index of the frame that contains time ``seconds`` on a grid of ``frame_ms`` frames."""
    return int(np.floor(seconds * 1000.0 / frame_ms + 1e-9))


@dataclass
class DuplexScores:
    """All duplex numbers of a set of dialogues (summed over dialogues)."""

    assistant_turn: DetectionScore = field(default_factory=DetectionScore)
    user_turn: DetectionScore = field(default_factory=DetectionScore)
    backchannel: BackchannelScore = field(default_factory=BackchannelScore)
    latency: TurnLatency = field(default_factory=TurnLatency)
    dialogues: int = 0
    stop_latency: TurnLatency = field(default_factory=TurnLatency)
    commands: CommandScore = field(default_factory=CommandScore)

    def __add__(self, other: DuplexScores) -> DuplexScores:
        return DuplexScores(
            self.assistant_turn + other.assistant_turn,
            self.user_turn + other.user_turn,
            self.backchannel + other.backchannel,
            self.latency + other.latency,
            self.dialogues + other.dialogues,
            self.stop_latency + other.stop_latency,
            self.commands + other.commands,
        )

    def as_dict(self) -> dict[str, object]:
        """Plain dict for ``results.json``."""
        return {"assistant_turn_taking": self.assistant_turn.as_dict(),
                "user_turn_taking": self.user_turn.as_dict(),
                "backchannel": self.backchannel.as_dict(),
                "turn_taking_latency": self.latency.as_dict(),
                "barge_in_latency": self.stop_latency.as_dict(),
                "commands": self.commands.as_dict(),
                "dialogues": self.dialogues}


def score_dialogue(
    true_labels: Sequence[int] | np.ndarray,
    predicted_labels: Sequence[int] | np.ndarray,
    frame_ms: float,
    backchannels: Sequence[tuple[int, int]] = (),
    k: int = 10,
    commands: Sequence[tuple[int, int]] = (),
) -> DuplexScores:
    """All duplex metrics of one dialogue from per-frame true and predicted decisions.

    Args:
        true_labels: reference decisions per frame, shape ``(F,)``.
        predicted_labels: model decisions per frame on the same grid, shape ``(F',)``
            (lengths may differ by the model's lookahead; events are compared by index).
        frame_ms: frame length in ms (for the latency).
        backchannels: user back-channel intervals ``(start, end)`` in frames.
        k: tolerance in frames.
        commands: user command intervals ("stop", "wait") in frames.
    """
    true_respond = event_onsets(true_labels, RESPOND)
    pred_respond = event_onsets(predicted_labels, RESPOND)
    true_stop = event_onsets(true_labels, STOP)
    pred_stop = event_onsets(predicted_labels, STOP)
    return DuplexScores(
        assistant_turn=f1_at_k(true_respond, pred_respond, k),
        user_turn=f1_at_k(true_stop, pred_stop, k),
        backchannel=backchannel_accuracy(backchannels, pred_stop, k),
        latency=turn_taking_latency(true_respond, pred_respond, frame_ms, k),
        dialogues=1,
        stop_latency=turn_taking_latency(true_stop, pred_stop, frame_ms, k),
        commands=command_accuracy(commands, pred_stop, k),
    )
