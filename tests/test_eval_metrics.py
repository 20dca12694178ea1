"""Text metrics against hand-computed cases and sacrebleu's published reference numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minmo.eval import metrics
from minmo.eval.normalize import (
    canonical_language,
    int_to_words,
    normalize_english,
    normalize_unsegmented,
    ordinal_words,
    year_words,
)

# ---------------------------------------------------------------- normaliser


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("Don't stop -- rock'n'roll.", "don't stop rock'n'roll"),
        ("\u2018Quoted\u2019 it\u2019s", "quoted it's"),
        ("twenty-one [noise] <unk> people", "twenty one people"),
        ("He paid $1,250 for 3.5 kg", "he paid one thousand two hundred fifty dollars for three point five kg"),
        ("In 1984 and 2005 and 1905 and 2024", "in nineteen eighty four and two thousand five and nineteen oh five and twenty twenty four"),
        ("the 21st and 2nd of 100", "the twenty first and second of one hundred"),
        ("50% & more", "fifty percent and more"),
    ],
)
def test_normalize_english(text: str, expected: str) -> None:
    assert normalize_english(text) == expected


def test_number_words() -> None:
    assert int_to_words(0) == "zero"
    assert int_to_words(115) == "one hundred fifteen"
    assert int_to_words(1_000_001) == "one million one"
    assert int_to_words(90_210) == "ninety thousand two hundred ten"
    assert ordinal_words(12) == "twelfth"
    assert ordinal_words(40) == "fortieth"
    assert ordinal_words(103) == "one hundred third"
    assert year_words(1900) == "nineteen hundred"
    assert year_words(2005) is None
    with pytest.raises(ValueError):
        int_to_words(-1)


def test_normalize_unsegmented_and_language_codes() -> None:
    assert normalize_unsegmented("你好，世界！ ＯＫ [笑]") == "你好世界ok"
    assert canonical_language("cmn_hans_cn") == "zh"
    assert canonical_language("en-US") == "en"
    assert canonical_language(None) == ""


# ---------------------------------------------------------------- WER / CER


def test_wer_known_edits() -> None:
    # ref 6 words; hyp: "cat" deleted (D), "on"->"in" (S), "today" inserted (I)
    refs = ["The cat sat on the mat."]
    hyps = ["the sat in the mat today"]
    edits = metrics.corpus_edits(refs, hyps, "en")
    assert (edits.substitutions, edits.deletions, edits.insertions) == (1, 1, 1)
    assert edits.hits == 4
    assert edits.reference_length == 6
    assert metrics.wer(refs, hyps) == pytest.approx(3 / 6)


def test_wer_is_corpus_level_not_mean_of_utterances() -> None:
    refs = ["a b c d e f g h i j", "k"]
    hyps = ["a b c d e f g h i j", "x"]
    # one error over 11 words (the mean of utterance rates would be 0.5)
    assert metrics.wer(refs, hyps) == pytest.approx(1 / 11)


def test_wer_normalisation_removes_format_differences() -> None:
    assert metrics.wer(["Twenty one people came."], ["21 people came"]) == 0.0
    assert metrics.wer(["HELLO WORLD"], [""]) == 1.0


def test_cer_known_edits_chinese() -> None:
    refs = ["今天天气很好。"]  # 6 characters after normalisation
    hyps = ["今天天汽很好啊"]  # 1 substitution, 1 insertion
    edits = metrics.corpus_edits(refs, hyps, "zh")
    assert (edits.substitutions, edits.deletions, edits.insertions) == (1, 0, 1)
    assert metrics.cer(refs, hyps) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="wer"):
        metrics.cer(refs, hyps, language="en")
    with pytest.raises(ValueError, match="cer"):
        metrics.wer(refs, hyps, language="zh")


def test_per_speaker_breakdown() -> None:
    rows = [
        ("spk1", "one two three", "one two three"),
        ("spk2", "four five", "four"),
        ("spk1", "six", "seven"),
    ]
    per = metrics.per_speaker_edits(rows, "en")
    assert list(per) == ["spk1", "spk2"]
    assert per["spk1"].rate == pytest.approx(1 / 4)
    assert per["spk2"].rate == pytest.approx(1 / 2)
    total = per["spk1"] + per["spk2"]
    assert total.rate == pytest.approx(2 / 6)
    assert total.utterances == 3


# ---------------------------------------------------------------- BLEU


def test_bleu_matches_sacrebleu_readme_reference() -> None:
    # sacrebleu README example: "BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ...)"
    refs = [
        ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
        ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
    ]
    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    score = metrics.corpus_bleu(hyps, refs, "en")
    assert score.score == pytest.approx(48.53, abs=0.005)
    assert score.precisions == pytest.approx([82.4, 50.0, 45.5, 37.5], abs=0.05)
    assert score.brevity_penalty == pytest.approx(0.943, abs=0.0005)
    assert score.tokenizer == "13a"
    assert "tok:13a" in score.signature


def test_bleu_hand_computed() -> None:
    # p1=5/6, p2=3/5, p3=2/4, p4=1/3, equal lengths -> BP=1
    score = metrics.corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"], "en")
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert score.score == pytest.approx(expected, abs=1e-6)
    assert score.brevity_penalty == 1.0


def test_bleu_chinese_tokenizer_and_brevity() -> None:
    # zh tokenizer splits Han characters: hyp 6 chars all matching, ref 7 chars
    score = metrics.corpus_bleu(["猫坐在垫子上"], ["猫坐在垫子上面"], "zh")
    assert score.tokenizer == "zh"
    assert score.precisions == pytest.approx([100.0] * 4)
    assert score.brevity_penalty == pytest.approx(math.exp(1 - 7 / 6))
    assert metrics.bleu_tokenizer("ja") in ("ja-mecab", "char")
    assert metrics.bleu_tokenizer("de") == "13a"


def test_bleu_rejects_misaligned_references() -> None:
    with pytest.raises(ValueError, match="reference stream 0"):
        metrics.corpus_bleu(["a", "b"], ["a"])


# ---------------------------------------------------------------- classification / QA / sim


def test_classification_accuracy_and_confusion() -> None:
    truth = ["en", "en", "zh", "zh", "ja"]
    preds = ["en", "zh", "zh", "zh", "ko"]
    out = metrics.classification_score(truth, preds, labels=["en", "zh", "ja"])
    assert out.accuracy == pytest.approx(3 / 5)
    assert out.labels == ["en", "zh", "ja", "ko"]
    assert out.matrix == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert out.per_class_recall() == {"en": 0.5, "zh": 1.0, "ja": 0.0}


@pytest.mark.parametrize(
    ("response", "answers", "correct"),
    [
        ("The capital of France is Paris.", ["Paris"], True),
        ("It is the Eiffel Tower!", "eiffel tower", True),
        ("There are 7 continents.", ["seven"], True),
        ("Parisian food is nice", ["Paris"], False),  # word match, not substring
        ("Tower of the Eiffel", ["Eiffel Tower"], False),  # order matters
        ("anything", [""], False),
    ],
)
def test_answer_matching(response: str, answers: list[str] | str, correct: bool) -> None:
    assert metrics.answer_is_correct(response, answers) is correct


def test_qa_accuracy() -> None:
    acc = metrics.qa_accuracy(["paris", "london", "rome"], [["Paris"], ["Berlin"], ["Rome", "Roma"]])
    assert acc == pytest.approx(2 / 3)


def test_cosine_similarity() -> None:
    a = np.array([1.0, 0.0, 1.0])
    assert metrics.cosine_similarity(a, a) == pytest.approx(1.0)
    assert metrics.cosine_similarity(a, -a) == pytest.approx(-1.0)
    assert metrics.cosine_similarity(a, np.array([0.0, 1.0, 0.0])) == pytest.approx(0.0)
    sim = metrics.mean_speaker_similarity([(a, a), (a, np.array([1.0, 0.0, 0.0]))])
    assert sim.mean == pytest.approx((1.0 + 1 / math.sqrt(2)) / 2)
    assert sim.count == 2
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.cosine_similarity(a, np.ones(2))


def test_equal_error_rate():
    from minmo.eval.metrics import equal_error_rate

    # separable: no threshold errs
    assert equal_error_rate([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 0.0
    # reversed: every threshold errs on half at best
    assert equal_error_rate([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 1.0
    # one impostor above one target of four each: FAR = FRR = 1/4 at the crossing
    scores = [0.9, 0.8, 0.7, 0.4, 0.5, 0.3, 0.2, 0.1]
    assert equal_error_rate(scores, [True] * 4 + [False] * 4) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="both"):
        equal_error_rate([0.5, 0.6], [True, True])
