"""Refitting the output projector to a teacher's semantic vectors (``training/realign.py``)."""

from __future__ import annotations

import copy

import pytest
import torch

from minmo.models.builders import minmo_tiny
from minmo.training.realign import NormalEquations, realign_output_projector, reply_batches
from minmo.training.toydata import write_toy_corpus


def test_normal_equations_match_least_squares_and_score_the_fit():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=g)
    true_w, true_b = torch.randn(5, 12, generator=g), torch.randn(5, generator=g)
    y = x @ true_w.T + true_b + 0.1 * torch.randn(500, 5, generator=g)
    eq = NormalEquations(12, 5)
    for chunk in range(0, 500, 128):  # accumulated in pieces, as batches arrive
        eq.add(x[chunk:chunk + 128], y[chunk:chunk + 128])
    w, b = eq.solve(ridge=0.0)
    ref = torch.linalg.lstsq(torch.cat([x, torch.ones(500, 1)], 1).double(), y.double()).solution
    assert torch.allclose(w, ref[:-1].T, atol=1e-8) and torch.allclose(b, ref[-1], atol=1e-8)
    direct = ((x @ w.float().T + b.float() - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert eq.unexplained(w, b) == pytest.approx(float(direct), rel=1e-4)
    assert eq.unexplained(torch.zeros(5, 12), y.mean(0)) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="no rows"):
        NormalEquations(3, 2).solve()


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Toy reply rows (tts + spoken replies); four noise seeds give the spoken replies
    different audio, so the hidden states vary beyond the handful of texts."""
    root = tmp_path_factory.mktemp("realign")
    made = [write_toy_corpus(root / f"c{seed}", num_examples=8, seed=seed) for seed in range(5)]
    train = [made[0]["tts"]] + [m["s2s"] for m in made[:4]]
    return train, [made[4]["s2s"]]


def _vectors(model, batches):
    """The model's semantic vectors of every reply token in ``batches``, concatenated."""
    from minmo.training.realign import _read

    with torch.no_grad():
        return torch.cat([model.output_projector(h, e) for batch in batches
                          for h, e in _read(model, batch)])


def test_realign_recovers_the_teachers_projector_when_the_states_did_not_move(corpora):
    """Same LLM, scrambled output projector: the fit gives the teacher's vectors back, on
    held-out replies too, and leaves the student's own projector as it was."""
    train, valid = corpora
    torch.manual_seed(0)
    teacher = minmo_tiny().eval()
    student = copy.deepcopy(teacher)
    torch.nn.init.normal_(student.output_projector.proj.weight, std=0.05)
    scrambled = student.output_projector.proj.weight.clone()
    result = realign_output_projector(teacher, student, reply_batches(student, train, 4),
                                      reply_batches(student, valid, 4), ridge=1e-9)
    assert result.vectors > student.output_projector.proj.in_features
    assert result.unexplained_before > 0.5 and result.unexplained_valid_before > 0.5
    assert result.unexplained_train < 1e-6 and result.unexplained_valid < 1e-4
    assert torch.equal(student.output_projector.proj.weight, scrambled)
    student.output_projector.proj.weight.data.copy_(result.weight)
    student.output_projector.proj.bias.data.copy_(result.bias)
    held_t, held_s = _vectors(teacher, reply_batches(student, valid, 4)), _vectors(student, reply_batches(student, valid, 4))
    assert torch.allclose(held_s, held_t, atol=1e-3 * float(held_t.abs().max()))


def test_realign_follows_an_llm_whose_states_moved(corpora):
    """The student's LoRA moved its hidden states (as retraining speech to text does): the
    refitted projector brings its vectors back towards the teacher's, on held-out rows too."""
    train, valid = corpora
    torch.manual_seed(0)
    teacher = minmo_tiny().eval()
    student = copy.deepcopy(teacher)
    student.enable_lora()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    result = realign_output_projector(teacher, student, reply_batches(student, train, 4),
                                      reply_batches(student, valid, 4))
    assert result.unexplained_before > 0.05
    assert result.unexplained_train < 0.5 * result.unexplained_before
    assert result.unexplained_valid < 0.5 * result.unexplained_valid_before


def test_task_weights_choose_what_the_fit_favours(corpora):
    """Equations are kept per task: a weight of 0 fits the other tasks alone, and the summary
    scores every task before and after; state dicts round-trip (the script's cache)."""
    from minmo.training.realign import accumulate, solve_realignment

    train, valid = corpora
    torch.manual_seed(0)
    teacher = minmo_tiny().eval()
    student = copy.deepcopy(teacher)
    torch.nn.init.normal_(student.output_projector.proj.weight, std=0.05)
    per_task = accumulate(teacher, student, reply_batches(student, train, 4))
    assert sorted(per_task) == ["s2s_chat", "tts"]
    only_s2s = solve_realignment(student, per_task, task_weights={"tts": 0.0})
    w, b = per_task["s2s_chat"].solve()
    assert torch.allclose(only_s2s.weight, w.float()) and torch.allclose(only_s2s.bias, b.float())
    both = solve_realignment(student, per_task, accumulate(teacher, student,
                                                           reply_batches(student, valid, 4)))
    assert set(both.per_task) == {"s2s_chat", "tts"}
    assert both.per_task["s2s_chat"]["valid_after"] < both.per_task["s2s_chat"]["valid_before"]
    assert both.vectors == sum(eq.count for eq in per_task.values())
    back = NormalEquations.from_state_dict(per_task["tts"].state_dict())
    assert torch.equal(back.solve()[0], per_task["tts"].solve()[0])
