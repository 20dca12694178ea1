"""Duplex F1@K, back-channel accuracy, turn-taking latency and latency aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minmo.eval import duplex_metrics as dm
from minmo.eval.latency import PAPER_STAGES, aggregate_latencies, summarize


def test_event_onsets() -> None:
    assert dm.event_onsets([0, 1, 1, 0, 1, 2, 1], 1) == [1, 4, 6]
    assert dm.event_onsets([], 1) == []
    assert dm.event_onsets(np.array([2, 2, 0]), 2) == [0]


@pytest.mark.parametrize("k", [0, 1, 10])
def test_f1_boundary_exactly_k_counts_k_plus_one_does_not(k: int) -> None:
    on_boundary = dm.f1_at_k([100], [100 + k], k)
    assert (on_boundary.true_positives, on_boundary.false_positives) == (1, 0)
    early_boundary = dm.f1_at_k([100], [100 - k], k)
    assert early_boundary.true_positives == 1
    outside = dm.f1_at_k([100], [100 + k + 1], k)
    assert (outside.true_positives, outside.false_positives, outside.false_negatives) == (0, 1, 1)
    assert outside.f1 == 0.0
    assert dm.f1_at_k([100], [100 - k - 1], k).true_positives == 0


def test_f1_one_to_one_matching() -> None:
    # two predictions near one true event: only one may match
    score = dm.f1_at_k([50], [48, 52], k=10)
    assert (score.true_positives, score.false_positives, score.false_negatives) == (1, 1, 0)
    assert score.precision == pytest.approx(0.5)
    assert score.recall == pytest.approx(1.0)
    assert score.f1 == pytest.approx(2 / 3)


def test_f1_greedy_gives_maximum_matching() -> None:
    # p=15 could take t=10 or t=20; p=28 only t=20 (|28-20|=8), so p=15 must take t=10.
    pairs = dm.match_events([10, 20], [15, 28], k=8)
    assert pairs == [(10, 15), (20, 28)]
    # chain where a nearest-first rule would lose a match: t=[0, 9], p=[5, 14], k=5
    assert len(dm.match_events([0, 9], [5, 14], k=5)) == 2


def test_f1_from_hand_built_label_sequences() -> None:
    # true RESPOND onsets at 10, 40, 70; predicted onsets at 13 (ok), 52 (12 away: miss), 80 (=K)
    truth = np.zeros(100, dtype=int)
    pred = np.zeros(100, dtype=int)
    truth[[10, 40, 70]] = dm.RESPOND
    pred[13:16] = dm.RESPOND  # one event held for three frames
    pred[52] = dm.RESPOND
    pred[80] = dm.RESPOND
    score = dm.f1_at_k_from_labels(truth, pred, dm.RESPOND, k=10)
    assert (score.true_positives, score.false_positives, score.false_negatives) == (2, 1, 1)
    assert score.f1 == pytest.approx(2 / 3)
    summed = score + score
    assert summed.f1 == pytest.approx(2 / 3)
    assert summed.true_positives == 4


def test_backchannel_accuracy() -> None:
    backchannels = [(10, 20), (50, 55), (90, 95)]
    # STOP at 18 (inside first), at 66 (= 55 + 11: outside the K=10 window), none near third
    score = dm.backchannel_accuracy(backchannels, [18, 66], k=10)
    assert (score.kept, score.total) == (2, 3)
    assert score.accuracy == pytest.approx(2 / 3)
    # a STOP exactly at end + K is a failure
    assert dm.backchannel_accuracy([(50, 55)], [65], k=10).kept == 0
    assert math.isnan(dm.backchannel_accuracy([], [1]).accuracy)


def test_command_accuracy_is_the_mirror_of_back_channels() -> None:
    """A command ("stop") must be followed by a STOP within [start, end + K]."""
    commands = [(10, 20), (50, 55), (90, 95)]
    score = dm.command_accuracy(commands, [18, 66], k=10)
    assert (score.obeyed, score.total) == (1, 3)
    assert dm.command_accuracy([(50, 55)], [65], k=10).obeyed == 1  # at end + K: in time
    assert math.isnan(dm.command_accuracy([], [1]).accuracy)
    both = dm.score_dialogue([0] * 100, [0] * 18 + [2] + [0] * 81, 80.0, backchannels=[(90, 95)],
                             k=10, commands=[(10, 20)])
    assert (both.commands.obeyed, both.backchannel.kept) == (1, 1)
    assert (both + both).as_dict()["commands"] == {"accuracy": 1.0, "obeyed": 2, "total": 2}


def test_turn_taking_latency() -> None:
    # true turn ends at 10, 50, 90 (frames of 80 ms); reactions: 14 (+4), 47 (-3), none for 90
    lat = dm.turn_taking_latency([10, 50, 90], [14, 47, 30], frame_ms=80.0, k=5)
    # for t=10 the first prediction >= 5 and < 50 is 14; 30 is a false alarm, ignored
    assert lat.values == [4 * 80.0, -3 * 80.0]
    assert lat.missed == 1
    assert lat.mean_ms == pytest.approx(40.0)
    # a prediction earlier than t - K is not a reaction
    assert dm.turn_taking_latency([20], [14], frame_ms=10.0, k=5).missed == 1


def test_score_dialogue_combines_everything() -> None:
    truth = np.zeros(60, dtype=int)
    pred = np.zeros(60, dtype=int)
    truth[5], truth[30] = dm.RESPOND, dm.STOP
    pred[7], pred[33] = dm.RESPOND, dm.STOP
    scores = dm.score_dialogue(truth, pred, frame_ms=10.0, backchannels=[(45, 50)], k=10)
    assert scores.assistant_turn.f1 == 1.0
    assert scores.user_turn.f1 == 1.0
    assert scores.backchannel.accuracy == 1.0
    assert scores.latency.values == [20.0]
    total = scores + scores
    assert total.dialogues == 2
    assert total.as_dict()["turn_taking_latency"]["count"] == 2
    assert dm.seconds_to_frame(0.25, 10.0) == 25


# ---------------------------------------------------------------- latency aggregation


def test_summarize_hand_computed_percentiles() -> None:
    stats = summarize([10.0, 20.0, 30.0, 40.0, 100.0])
    assert stats.count == 5
    assert stats.mean == pytest.approx(40.0)
    assert stats.p50 == pytest.approx(30.0)
    # linear interpolation: position 0.9 * 4 = 3.6 -> 40 + 0.6 * 60 = 76
    assert stats.p90 == pytest.approx(76.0)
    # 0.95 * 4 = 3.8 -> 40 + 0.8 * 60 = 88
    assert stats.p95 == pytest.approx(88.0)
    assert (stats.min, stats.max) == (10.0, 100.0)
    assert math.isnan(summarize([]).mean)


def test_aggregate_latencies_orders_paper_stages_and_skips_missing() -> None:
    records = [
        {"encoder": 5.0, "end_to_end": 700.0, "duplex_decision": 200.0},
        {"end_to_end": 900.0, "duplex_decision": None, "first_text_token": 90.0},
        {"end_to_end": float("nan"), "duplex_decision": 300.0},
    ]
    out = aggregate_latencies(records)
    assert list(out) == ["duplex_decision", "first_text_token", "end_to_end", "encoder"]
    assert out["end_to_end"].count == 2
    assert out["end_to_end"].mean == pytest.approx(800.0)
    assert out["duplex_decision"].p50 == pytest.approx(250.0)
    assert out["first_text_token"].count == 1
    assert [k for k, _, _ in PAPER_STAGES][0] == "duplex_decision"
    with pytest.raises(TypeError, match="record 0"):
        aggregate_latencies([{"end_to_end": "fast"}])


def test_reply_stage_latencies_from_cumulative_timestamps() -> None:
    from minmo.eval.latency import reply_stage_latencies

    out = reply_stage_latencies(0.095, 0.150, 0.220, 0.350, before_reply_s=0.250)
    assert out == pytest.approx({"first_text_token": 95.0, "five_text_tokens": 150.0,
                                 "fifteen_speech_tokens": 70.0, "first_audio_chunk": 130.0,
                                 "end_to_end": 600.0})
    # a text-only reply has no speech stages
    assert reply_stage_latencies(0.1, 0.2, None, None) == pytest.approx(
        {"first_text_token": 100.0, "five_text_tokens": 200.0})


def test_barge_in_latency_is_measured_from_the_stop_label() -> None:
    truth = np.zeros(60, dtype=int)
    truth[20] = dm.STOP
    late = truth.copy()
    late[20], late[26] = dm.LISTEN, dm.STOP  # stopped 6 frames after the label
    scores = dm.score_dialogue(truth, late, frame_ms=80.0, k=10)
    assert scores.user_turn.f1 == 1.0 and scores.stop_latency.values == [480.0]
    assert dm.score_dialogue(truth, np.zeros(60, dtype=int), 80.0).stop_latency.missed == 1
    assert scores.as_dict()["barge_in_latency"]["count"] == 1
