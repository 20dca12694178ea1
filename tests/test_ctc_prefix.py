"""Joint CTC/attention decoding: the prefix scores are the CTC probabilities they claim."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from minmo.inference.ctc_prefix import CtcPrefixScorer


def _collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    out, prev = [], None
    for c in path:
        if c != prev and c != 0:
            out.append(c - 1)
        prev = c
    return tuple(out)


def _brute(x: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Probability of every labelling: the sum over the frame paths that collapse to it."""
    probs: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(x.shape[1]), repeat=x.shape[0]):
        p = math.exp(sum(float(x[t, c]) for t, c in enumerate(path)))
        key = _collapse(path)
        probs[key] = probs.get(key, 0.0) + p
    return probs


def _prefix(probs: dict[tuple[int, ...], float], g: tuple[int, ...]) -> float:
    return sum(p for lab, p in probs.items() if lab[: len(g)] == g)


def test_prefix_and_full_scores_match_a_brute_force_sum_over_paths():
    torch.manual_seed(0)
    x = torch.log_softmax(torch.randn(5, 4), -1)  # 5 frames, blank + 3 tokens
    probs = _brute(x)
    for prefix in [(), (1,), (1, 1), (2, 0), (0, 2, 2)]:  # repeats need a blank between
        scorer = CtcPrefixScorer(x, weight=1.0)
        for tok in prefix:
            psi, r_n, r_b = scorer._extend([tok])
            scorer.r_n, scorer.r_b, scorer.last = r_n[:, 0], r_b[:, 0], tok
            scorer.prefix_score = float(psi[0])
        assert math.exp(scorer.full_score()) == pytest.approx(probs.get(prefix, 0.0), rel=1e-5)
        psi, _, _ = scorer._extend([0, 1, 2])
        for tok, score in zip([0, 1, 2], psi.tolist()):
            assert math.exp(score) == pytest.approx(_prefix(probs, prefix + (tok,)), rel=1e-5)


def test_choose_weighs_the_llm_against_the_frames():
    frames = torch.full((6, 4), -9.0)
    frames[:, 0] = 0.0  # mostly blank ...
    frames[2, 0], frames[2, 2] = -9.0, 0.0  # ... and token 1 said in frame 2
    x = torch.log_softmax(frames, -1)
    stop = frozenset({3})
    llm = torch.tensor([2.0, 1.0, 0.0, -5.0])  # the LLM prefers token 0, then token 1
    assert CtcPrefixScorer(x, weight=0.0).choose(llm, stop) == 0
    scorer = CtcPrefixScorer(x, weight=0.5)
    assert scorer.choose(llm, stop) == 1  # the frames hold token 1, not 0
    assert scorer.last == 1 and math.exp(scorer.prefix_score) == pytest.approx(1.0, abs=1e-3)
    # after it, the frames hold nothing more: stopping beats any further token
    assert scorer.choose(torch.tensor([2.0, 1.0, 0.0, 1.5]), stop) == 3
    with pytest.raises(ValueError, match="CTC weight"):
        CtcPrefixScorer(x, weight=1.5)


def test_the_joint_score_mixes_the_two_log_probabilities_by_the_weight():
    torch.manual_seed(1)
    x = torch.log_softmax(torch.randn(6, 5), -1)
    logits = torch.randn(6) * 2
    logp = torch.log_softmax(logits, -1)
    stop = frozenset({5})
    picks = set()
    for weight in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
        scorer = CtcPrefixScorer(x, weight=weight, top_k=6)
        psi, _, _ = scorer._extend([0, 1, 2, 3])
        gains = {c: float(psi[c]) for c in range(4)} | {5: scorer.full_score()}
        expect = max(gains, key=lambda c: (1 - weight) * float(logp[c]) + weight * gains[c])
        assert scorer.choose(logits, stop) == expect
        picks.add(expect)
    assert len(picks) > 1  # the weight moves the choice
