"""Text-level metrics: WER/CER (jiwer), BLEU (sacrebleu), classification, spoken-QA accuracy,
speaker similarity.

Conventions (also in ``docs/eval.md``):

* Error rates are corpus-level: the edit operations of every utterance are summed and divided
  by the total number of reference units (words for WER, characters for CER), after the
  language's normaliser from :mod:`minmo.eval.normalize`. They are returned as fractions;
  reports show them in percent.
* BLEU is sacrebleu's corpus BLEU (default smoothing ``exp``) with the tokenizer the target
  language needs: ``zh`` for Chinese, ``ja-mecab`` for Japanese when MeCab is installed
  (otherwise ``char``), ``ko-mecab`` for Korean when installed (otherwise ``char``), ``char``
  for Thai/Lao/Burmese/Khmer and ``13a`` for everything else. The tokenizer is recorded in the
  result next to sacrebleu's signature.
* Spoken-QA accuracy: a response is correct when, after English normalisation and removal of
  the articles "a", "an", "the", the word sequence of any accepted answer appears as a
  contiguous run of words in the response.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import jiwer
import numpy as np
from sacrebleu.metrics import BLEU

from minmo.eval.normalize import (
    canonical_language,
    normalize_english,
    normalize_for_language,
    uses_cer,
)

# ------------------------------------------------------------------------------------------
# WER / CER
# ------------------------------------------------------------------------------------------


@dataclass
class EditCounts:
    """Summed edit operations of an alignment between references and hypotheses.

    Attributes:
        substitutions: substituted units.
        deletions: reference units missing from the hypothesis.
        insertions: hypothesis units with no reference unit.
        hits: correctly recognised units.
        utterances: number of reference/hypothesis pairs summed.
    """

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0
    utterances: int = 0

    @property
    def reference_length(self) -> int:
        """Number of reference units (hits + substitutions + deletions)."""
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        """Substitutions + deletions + insertions."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """errors / reference units; ``inf`` if there are errors but no reference units."""
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference_length

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.hits + other.hits,
            self.utterances + other.utterances,
        )

    def as_dict(self) -> dict[str, float]:
        """Plain dict for ``results.json``."""
        return {
            "rate": self.rate,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "hits": self.hits,
            "reference_length": self.reference_length,
            "utterances": self.utterances,
        }


def error_unit(language: str | None) -> str:
    """``"cer"`` for unsegmented scripts (Chinese, Japanese, Thai, ...), else ``"wer"``."""
    return "cer" if uses_cer(language) else "wer"


def utterance_edits(reference: str, hypothesis: str, language: str | None = "en") -> EditCounts:
    """Edit counts of one utterance after normalisation for ``language``.

    Words are the unit for space-separated languages, characters for unsegmented ones.
    """
    ref = normalize_for_language(reference, language)
    hyp = normalize_for_language(hypothesis, language)
    if uses_cer(language):
        out = jiwer.process_characters(ref, hyp)
    else:
        out = jiwer.process_words(ref, hyp)
    return EditCounts(out.substitutions, out.deletions, out.insertions, out.hits, 1)


def corpus_edits(
    references: Sequence[str], hypotheses: Sequence[str], language: str | None = "en"
) -> EditCounts:
    """Summed edit counts over a corpus (see :func:`utterance_edits`)."""
    if len(references) != len(hypotheses):
        raise ValueError(
            f"corpus_edits: {len(references)} references but {len(hypotheses)} hypotheses"
        )
    total = EditCounts()
    for ref, hyp in zip(references, hypotheses):
        total = total + utterance_edits(ref, hyp, language)
    return total


def wer(references: Sequence[str], hypotheses: Sequence[str], language: str = "en") -> float:
    """Corpus word error rate (fraction) after the language's normaliser."""
    if uses_cer(language):
        raise ValueError(f"language {language!r} has no word boundaries: use cer()")
    return corpus_edits(references, hypotheses, language).rate


def cer(references: Sequence[str], hypotheses: Sequence[str], language: str = "zh") -> float:
    """Corpus character error rate (fraction) after the unsegmented-script normaliser."""
    if not uses_cer(language):
        raise ValueError(
            f"cer() scores unsegmented scripts (zh, ja, th, ...); {language!r} uses wer()"
        )
    return corpus_edits(references, hypotheses, language).rate


def per_speaker_edits(
    rows: Iterable[tuple[str, str, str]], language: str | None = "en"
) -> dict[str, EditCounts]:
    """Corpus error counts per speaker.

    Args:
        rows: ``(speaker, reference, hypothesis)`` triples.
        language: picks normaliser and unit (words or characters).

    Returns:
        ``{speaker: EditCounts}``, speakers in first-seen order; ``.rate`` is that speaker's
        corpus-level error rate.
    """
    out: dict[str, EditCounts] = {}
    for speaker, ref, hyp in rows:
        out[speaker] = out.get(speaker, EditCounts()) + utterance_edits(ref, hyp, language)
    return out


# ------------------------------------------------------------------------------------------
# BLEU
# ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _tokenizer_works(name: str) -> bool:
    try:
        BLEU(tokenize=name).corpus_score(["a"], [["a"]])
    except (RuntimeError, ImportError, ModuleNotFoundError):
        return False
    return True


def bleu_tokenizer(target_language: str | None) -> str:
    """The sacrebleu tokenizer for a target language (see module docstring)."""
    lang = canonical_language(target_language)
    if lang in ("zh", "yue"):
        return "zh"
    if lang == "ja":
        return "ja-mecab" if _tokenizer_works("ja-mecab") else "char"
    if lang == "ko":
        return "ko-mecab" if _tokenizer_works("ko-mecab") else "char"
    if lang in ("th", "lo", "my", "km"):
        return "char"
    return "13a"


@dataclass
class BleuScore:
    """Corpus BLEU with its ingredients.

    Attributes:
        score: BLEU in 0..100.
        precisions: 1- to 4-gram precisions in percent.
        brevity_penalty: BP in 0..1.
        hypothesis_length, reference_length: token counts sacrebleu used.
        tokenizer: the sacrebleu tokenizer name.
        signature: sacrebleu's reproducibility signature.
    """

    score: float
    precisions: list[float]
    brevity_penalty: float
    hypothesis_length: int
    reference_length: int
    tokenizer: str
    signature: str

    def as_dict(self) -> dict[str, object]:
        """Plain dict for ``results.json``."""
        return dict(self.__dict__)


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    target_language: str | None = "en",
    tokenizer: str | None = None,
) -> BleuScore:
    """sacrebleu corpus BLEU.

    Args:
        hypotheses: one system output per segment.
        references: either one reference string per segment, or several reference *streams*
            (sacrebleu layout: ``references[k][i]`` is the k-th reference of segment i).
        target_language: chooses the tokenizer when ``tokenizer`` is not given.
        tokenizer: explicit sacrebleu tokenizer name.
    """
    if references and isinstance(references[0], str):
        streams = [list(references)]  # type: ignore[arg-type]
    else:
        streams = [list(s) for s in references]  # type: ignore[union-attr]
    for k, stream in enumerate(streams):
        if len(stream) != len(hypotheses):
            raise ValueError(
                f"corpus_bleu: reference stream {k} has {len(stream)} segments, "
                f"hypotheses have {len(hypotheses)}"
            )
    name = tokenizer or bleu_tokenizer(target_language)
    metric = BLEU(tokenize=name)
    result = metric.corpus_score(list(hypotheses), streams)
    return BleuScore(
        score=float(result.score),
        precisions=[float(p) for p in result.precisions],
        brevity_penalty=float(result.bp),
        hypothesis_length=int(result.sys_len),
        reference_length=int(result.ref_len),
        tokenizer=name,
        signature=str(metric.get_signature()),
    )


# ------------------------------------------------------------------------------------------
# Classification (language ID, emotion, audio events, speaker attributes)
# ------------------------------------------------------------------------------------------


@dataclass
class ClassificationScore:
    """Accuracy and confusion matrix.

    Attributes:
        accuracy: fraction of exact label matches.
        labels: row/column order of ``matrix``: the given label set (or the true labels in
            first-seen order), then any predicted label outside it, in first-seen order.
        matrix: ``matrix[i][j]`` = items with true label ``labels[i]`` predicted as
            ``labels[j]``.
        count: number of items.
    """

    accuracy: float
    labels: list[str]
    matrix: list[list[int]]
    count: int

    def per_class_recall(self) -> dict[str, float]:
        """Recall of every label that occurs as a true label."""
        out = {}
        for i, label in enumerate(self.labels):
            row_total = sum(self.matrix[i])
            if row_total:
                out[label] = self.matrix[i][i] / row_total
        return out

    def as_dict(self) -> dict[str, object]:
        """Plain dict for ``results.json``."""
        return {"accuracy": self.accuracy, "labels": self.labels, "matrix": self.matrix,
                "count": self.count, "per_class_recall": self.per_class_recall()}


def classification_score(
    true_labels: Sequence[str], predicted_labels: Sequence[str], labels: Sequence[str] | None = None
) -> ClassificationScore:
    """Accuracy + confusion matrix. Labels compare exactly after ``strip()`` and lowercasing."""
    if len(true_labels) != len(predicted_labels):
        raise ValueError(
            f"classification_score: {len(true_labels)} true labels, "
            f"{len(predicted_labels)} predictions"
        )
    truth = [t.strip().lower() for t in true_labels]
    preds = [p.strip().lower() for p in predicted_labels]
    order: list[str] = [l.strip().lower() for l in labels] if labels else []
    for label in truth + preds:
        if label not in order:
            order.append(label)
    index = {label: i for i, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    for t, p in zip(truth, preds):
        matrix[index[t]][index[p]] += 1
    correct = sum(t == p for t, p in zip(truth, preds))
    return ClassificationScore(
        accuracy=correct / len(truth) if truth else 0.0, labels=order, matrix=matrix,
        count=len(truth),
    )


# ------------------------------------------------------------------------------------------
# Spoken question answering
# ------------------------------------------------------------------------------------------

_ARTICLES = frozenset({"a", "an", "the"})


def normalize_answer(text: str) -> list[str]:
    """English normalisation, then articles removed: the words compared in QA matching."""
    return [w for w in normalize_english(text).split() if w not in _ARTICLES]


def answer_is_correct(response: str, answers: str | Sequence[str]) -> bool:
    """True if any accepted answer occurs as a contiguous word run in the response."""
    candidates = [answers] if isinstance(answers, str) else list(answers)
    words = normalize_answer(response)
    for answer in candidates:
        target = normalize_answer(answer)
        if not target:
            continue
        n = len(target)
        if any(words[i : i + n] == target for i in range(len(words) - n + 1)):
            return True
    return False


def qa_accuracy(responses: Sequence[str], answers: Sequence[str | Sequence[str]]) -> float:
    """Fraction of responses judged correct by :func:`answer_is_correct`."""
    if len(responses) != len(answers):
        raise ValueError(f"qa_accuracy: {len(responses)} responses, {len(answers)} answer sets")
    if not responses:
        return 0.0
    return sum(answer_is_correct(r, a) for r, a in zip(responses, answers)) / len(responses)


# ------------------------------------------------------------------------------------------
# Speaker similarity
# ------------------------------------------------------------------------------------------


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two speaker embeddings of shape ``(D,)``; 0 when either is all zeros."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"cosine_similarity: embedding shapes differ {a.shape} vs {b.shape}")
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 0.0 if denom == 0.0 else float(np.dot(a, b) / denom)


@dataclass
class MeanScore:
    """Mean of per-item values with the count (and the values, for plots)."""

    mean: float
    count: int
    values: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """Plain dict for ``results.json``."""
        return {"mean": self.mean, "count": self.count}


def mean_speaker_similarity(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> MeanScore:
    """Mean cosine similarity over ``(generated_embedding, prompt_embedding)`` pairs."""
    values = [cosine_similarity(a, b) for a, b in pairs]
    return MeanScore(float(np.mean(values)) if values else float("nan"), len(values), values)


def equal_error_rate(scores: Sequence[float], same: Sequence[bool]) -> float:
    """Speaker-verification EER: the error rate at the threshold where the false-acceptance
    rate (different-speaker trials scored at or above it) equals the false-rejection rate
    (same-speaker trials below it); the mean of the two where they cross between thresholds.

    Args:
        scores: one similarity per trial (higher: more alike).
        same: whether each trial's two utterances share a speaker (both kinds needed).
    """
    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    if scores.shape != same.shape or same.all() or not same.any():
        raise ValueError("equal_error_rate needs one label per score and both same- and different-speaker trials")
    thresholds = np.unique(scores)
    far = np.array([(scores[~same] >= t).mean() for t in thresholds])
    frr = np.array([(scores[same] < t).mean() for t in thresholds])
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2)


def mean_or_nan(values: Iterable[float]) -> float:
    """Mean of finite values, NaN when there are none."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def as_plain(mapping: Mapping[str, EditCounts]) -> dict[str, dict[str, float]]:
    """``{key: EditCounts}`` -> ``{key: EditCounts.as_dict()}``."""
    return {k: v.as_dict() for k, v in mapping.items()}
