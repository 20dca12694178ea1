"""CTC in the LLM's embedding space (models/embedding_ctc.py): what a frame reads as."""

from __future__ import annotations

import pytest
import torch

from minmo.models.embedding_ctc import ctc_log_probs, ctc_loss, greedy_tokens, norm_gap


def _vocab(n=200, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # anisotropic like a real table: a shared offset plus spread
    return 0.6 * torch.randn(dim, generator=g) + torch.randn(n, dim, generator=g)


def test_a_frame_on_a_token_reads_that_token_and_a_far_frame_reads_blank():
    vocab = _vocab()
    radius = vocab.norm(dim=-1).mean()
    on = torch.nn.functional.normalize(vocab[[3, 77, 150]], dim=-1) * radius
    neutral = torch.nn.functional.normalize(vocab.mean(0), dim=-1)[None] * radius
    away = -neutral  # opposite the mean direction: far from every token
    lp = ctc_log_probs(torch.cat([on, neutral, away])[None], vocab)[0]
    assert lp.shape == (5, 1 + len(vocab))
    assert lp.argmax(-1).tolist() == [4, 78, 151, 0, 0]
    assert torch.allclose(lp.exp().sum(-1), torch.ones(5), atol=1e-5)


def test_scores_do_not_depend_on_the_embedding_scale_or_the_frame_norm():
    vocab = _vocab()
    speech = torch.randn(2, 7, 32)
    base = ctc_log_probs(speech, vocab)
    assert torch.allclose(ctc_log_probs(3.0 * speech, 10.0 * vocab), base, atol=1e-4)
    lengths = torch.tensor([7, 5])
    assert norm_gap(speech / speech.norm(dim=-1, keepdim=True) * vocab.norm(dim=-1).mean(),
                    lengths, vocab) < 1e-8
    assert norm_gap(2 * speech, lengths, vocab) > norm_gap(speech, lengths, vocab)


def test_greedy_reading_and_loss_of_a_spelled_out_path():
    vocab = _vocab()
    radius = vocab.norm(dim=-1).mean()
    at = lambda v: torch.nn.functional.normalize(vocab[v], dim=-1) * radius  # noqa: E731
    blank = -torch.nn.functional.normalize(vocab.mean(0), dim=-1) * radius
    # "5 5 _ 9 _ 9 9" -> [5, 9, 9]; the second row is shorter (padding ignored)
    frames = torch.stack([at(5), at(5), blank, at(9), blank, at(9), at(9)])
    speech = torch.stack([frames, torch.stack([at(12), blank, at(12)] + [at(40)] * 4)])
    lengths = torch.tensor([7, 3])
    assert greedy_tokens(speech, lengths, vocab) == [[5, 9, 9], [12, 12]]
    good, m = ctc_loss(speech, lengths, [torch.tensor([5, 9, 9]), torch.tensor([12, 12])], vocab)
    bad, _ = ctc_loss(speech, lengths, [torch.tensor([6, 9, 9]), torch.tensor([12, 13])], vocab)
    assert good < 1.0 < bad and m["ctc_blank"] == pytest.approx(3 / 10)


def test_scores_stay_float32_under_autocast():
    vocab = _vocab()
    speech = torch.randn(1, 4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ctc_log_probs(speech, vocab)
    assert inside.dtype == torch.float32
    assert torch.allclose(inside, ctc_log_probs(speech, vocab))
