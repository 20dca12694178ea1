"""Paired comparison of two ``minmo eval`` runs of the same items (``minmo compare``).

Two models scored on 60 or 80 items differ by several points by chance alone: the item set
decides as much as the model. Here both runs' ``predictions.jsonl`` are joined on
(system, task, test set, item id), every metric is recomputed from the per-item outputs
exactly as ``minmo eval`` computes it (corpus WER is summed edits over summed reference
words; accuracies are means of per-item hits; BLEU is sacrebleu's corpus BLEU), and a paired
bootstrap draws the same items for both runs many times: the spread of B - A over the draws
is its confidence interval. A difference whose interval spans 0 is not shown by these items.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from minmo.eval import metrics
from minmo.eval.normalize import uses_cer

Key = tuple[str, str, str, str]  # system, task, dataset, item id

# accuracy names of the tasks whose predictions carry a ``correct`` flag (as the report names them)
_ACCURACY_NAMES = {"s2t_chat": "S2T accuracy", "s2s_chat": "S2S accuracy"}


@dataclass
class _Series:
    """One metric's per-item numbers for one run: the metric is sum(num) / sum(den), scaled."""

    num: np.ndarray
    den: np.ndarray


@dataclass
class PairedMetric:
    """One metric of both runs on their common items, and the bootstrap interval of B - A.

    ``delta`` and the interval are in the metric's unit (percentage points, BLEU points).
    ``b_better`` / ``a_better`` / ``ties`` count items by their own score (``None`` for
    corpus BLEU, which has no per-item score).
    """

    system: str
    task: str
    dataset: str
    metric: str
    higher_is_better: bool
    n: int
    a: float
    b: float
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    b_better: int | None
    a_better: int | None
    ties: int | None

    @property
    def verdict(self) -> str:
        """``B better``, ``A better`` or ``no difference shown`` (the interval spans 0)."""
        if self.ci_low > 0 or self.ci_high < 0:
            b_up = self.ci_low > 0
            return "B better" if b_up == self.higher_is_better else "A better"
        return "no difference shown"


@dataclass
class Comparison:
    """Every compared metric, the items that only one run has, and the groups whose speech
    the two runs' ASR judges heard differently (``judges_differ``: then a judged metric's
    B - A is the judges' difference as well as the models')."""

    metrics: list[PairedMetric]
    only_a: int
    only_b: int
    samples: int
    seed: int
    judges_differ: list[str] = field(default_factory=list)
    settings_differ: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "seed": self.seed, "only_a": self.only_a,
                "only_b": self.only_b, "judges_differ": self.judges_differ,
                "settings_differ": self.settings_differ,
                "metrics": [{**asdict(m), "verdict": m.verdict} for m in self.metrics]}


def read_predictions(path: str | Path) -> dict[Key, dict[str, Any]]:
    """A run's per-item outputs by key, from its output directory or its predictions.jsonl."""
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions.jsonl (give a `minmo eval --out` "
                                "directory or the file itself)")
    rows: dict[Key, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            p = json.loads(line)
            try:
                key = (p["system"], p["task"], p["dataset"], str(p["id"]))
            except KeyError as exc:
                raise ValueError(f"{path}:{line_no}: prediction without {exc}") from None
            rows[key] = p
    return rows


def read_settings(path: str | Path) -> dict[str, Any]:
    """A run's ``settings`` from the ``results.json`` beside its predictions (empty when the
    run has none, e.g. a bare predictions file)."""
    path = Path(path)
    results = (path if path.is_dir() else path.parent) / "results.json"
    if not results.is_file():
        return {}
    return json.loads(results.read_text(encoding="utf-8")).get("settings", {})


def settings_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two runs' settings that moves figures by itself: torch's thread
    count (sampled speech tokens are drawn from sums whose order it changes) and the library
    versions. Settings that only one run recorded are not compared."""
    notes = []
    if "torch_threads" in a and "torch_threads" in b and a["torch_threads"] != b["torch_threads"]:
        notes.append(f"torch threads: A {a['torch_threads']}, B {b['torch_threads']}")
    va, vb = a.get("versions") or {}, b.get("versions") or {}
    for name in sorted(set(va) & set(vb)):
        if va[name] != vb[name]:
            notes.append(f"{name}: A {va[name]}, B {vb[name]}")
    return notes


def _edit_series(pairs: list[tuple[str, str] | None], language: str) -> _Series:
    # None (an empty reply) adds nothing, as minmo eval leaves empty replies out of reply WER
    counts = [None if pair is None else metrics.utterance_edits(*pair, language)
              for pair in pairs]
    return _Series(np.array([c.errors if c else 0 for c in counts], float),
                   np.array([c.reference_length if c else 0 for c in counts], float))


def _hit_series(hits: list[bool]) -> _Series:
    return _Series(np.array(hits, float), np.ones(len(hits)))


def _metric_views(task: str, sample: dict[str, Any], language: str
                  ) -> list[tuple[str, bool, Callable[[dict[str, Any]], Any]]]:
    """The metrics a task's prediction carries: (name, higher is better, per-item reader)."""
    unit = "CER" if uses_cer(language) else "WER"
    views: list[tuple[str, bool, Callable[[dict[str, Any]], Any]]] = []
    if "hypothesis" in sample and task == "s2tt":
        views.append(("BLEU", True, lambda p: (p["reference"], p["hypothesis"])))
    elif "hypothesis" in sample:
        views.append((unit, False, lambda p: (p["reference"], p["hypothesis"])))
    if "text" in sample and "heard" in sample:
        views.append((unit, False, lambda p: (p["text"], p["heard"])))
    if "reply_text" in sample and "heard" in sample:
        views.append((f"reply speech {unit}", False, lambda p: (p["reply_text"], p["heard"])
                      if p["reply_text"].strip() else None))
    if "correct" in sample:
        views.append((_ACCURACY_NAMES.get(task, "accuracy"), True, lambda p: bool(p["correct"])))
    if "followed" in sample:
        views.append(("accuracy", True, lambda p: bool(p["followed"])))
    for name, value in sample.items():
        if isinstance(value, dict) and {"true", "predicted"} <= set(value):
            # as metrics.classification_score compares labels
            views.append((name, True, lambda p, name=name: str(p[name]["predicted"]).strip()
                          .lower() == str(p[name]["true"]).strip().lower()))
    return views


def _bleu(pairs: list[tuple[str, str]], index: np.ndarray, language: str) -> float:
    return metrics.corpus_bleu([pairs[i][1] for i in index], [pairs[i][0] for i in index],
                               language).score


def compare_runs(a: dict[Key, dict[str, Any]], b: dict[Key, dict[str, Any]], *,
                 samples: int = 10000, seed: int = 0, confidence: float = 0.95,
                 language: str = "en") -> Comparison:
    """Compare run B against run A on their common items (see the module docstring).

    Args:
        a, b: :func:`read_predictions` of the two runs.
        samples: bootstrap draws.
        seed: seed of the draws (the same seed gives the same interval).
        confidence: coverage of the percentile interval.
        language: language of rows whose prediction does not record one (older runs).

    Raises:
        ValueError: a common item's reference differs between the runs (not the same test
            set), or the runs share no item.
    """
    if samples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need samples >= 1 and 0 < confidence < 1, got {samples}, {confidence}")
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two runs share no item (system, task, test set, id)")
    for key in common:
        for column in ("reference", "text"):
            if a[key].get(column) != b[key].get(column):
                raise ValueError(f"item {key[3]!r} ({key[1]}, {key[2]}): the runs' {column}s "
                                 f"differ ({a[key].get(column)!r} / {b[key].get(column)!r}): "
                                 "not the same test set")
    groups: dict[tuple[str, str, str], list[Key]] = {}
    for key in common:
        groups.setdefault(key[:3], []).append(key)
    rng = np.random.default_rng(seed)
    alpha = (1 - confidence) / 2
    out, judges_differ = [], []
    for (system, task, dataset), keys in sorted(groups.items()):
        first = a[keys[0]]
        if "heard" in first:
            judge_a, judge_b = _judges(a, keys), _judges(b, keys)
            if judge_a != judge_b:
                judges_differ.append(f"{task} ({dataset}): A by {judge_a}, B by {judge_b}")
        lang = first.get("target_language" if task == "s2tt" else "language") or language
        draws = rng.integers(0, len(keys), size=(samples, len(keys)))
        for name, higher, read in _metric_views(task, first, lang):
            values_a = [read(a[k]) for k in keys]
            values_b = [read(b[k]) for k in keys]
            if name == "BLEU":
                full = np.arange(len(keys))
                score_a, score_b = _bleu(values_a, full, lang), _bleu(values_b, full, lang)
                deltas = np.array([_bleu(values_b, d, lang) - _bleu(values_a, d, lang)
                                   for d in draws])
                wins: tuple[int | None, int | None, int | None] = (None, None, None)
            else:
                make = _hit_series if isinstance(values_a[0], bool) else \
                    (lambda pairs: _edit_series(pairs, lang))
                sa, sb = make(values_a), make(values_b)
                score_a, score_b = _ratio(sa), _ratio(sb)
                deltas = _ratio(sb, draws) - _ratio(sa, draws)
                wins = _item_wins(sa, sb, higher)
            low, high = np.nanquantile(deltas, [alpha, 1 - alpha])
            out.append(PairedMetric(system, task, dataset, name, higher, len(keys), score_a,
                                    score_b, score_b - score_a, float(low), float(high),
                                    confidence, *wins))
    return Comparison(out, len(set(a) - set(b)), len(set(b) - set(a)), samples, seed,
                      judges_differ)


def _judges(run: dict[Key, dict[str, Any]], keys: list[Key]) -> str:
    """The ASR judge(s) that heard a group's speech, as its predictions record them."""
    names = sorted({run[k].get("judge") or "an unrecorded judge (a run before judges were "
                    "recorded; faster-whisper then sampled)" for k in keys})
    return " and ".join(names)


def _ratio(series: _Series, draws: np.ndarray | None = None) -> Any:
    """100 * sum(num) / sum(den) over all items, or per row of ``draws`` (NaN where den is 0)."""
    if draws is None:
        den = series.den.sum()
        return 100 * series.num.sum() / den if den else float("nan")
    num, den = series.num[draws].sum(axis=1), series.den[draws].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 100 * num / np.where(den > 0, den, 1), np.nan)


def _item_wins(a: _Series, b: _Series, higher_is_better: bool) -> tuple[int, int, int]:
    """Items where B scores better, worse, the same (items either run leaves out: not counted)."""
    both = (a.den > 0) & (b.den > 0)
    ra, rb = a.num[both] / a.den[both], b.num[both] / b.den[both]
    up, down = int((rb > ra).sum()), int((rb < ra).sum())
    return (up, down, int(both.sum()) - up - down) if higher_is_better else \
        (down, up, int(both.sum()) - up - down)


def format_comparison(result: Comparison, label_a: str = "A", label_b: str = "B") -> str:
    """Markdown table of a :class:`Comparison`."""
    pct = f"{100 * result.metrics[0].confidence:g} %" if result.metrics else "95 %"
    lines = [f"A = {label_a}", f"B = {label_b}", "",
             f"| task | test set | metric | n | A | B | B - A | {pct} interval | items B better "
             "/ worse / same | verdict |",
             "|---|---|---|---:|---:|---:|---:|---|---|---|"]
    for m in result.metrics:
        wins = "–" if m.b_better is None else f"{m.b_better} / {m.a_better} / {m.ties}"
        arrow = "↑" if m.higher_is_better else "↓"
        lines.append(f"| {m.task} | {m.dataset} | {m.metric} {arrow} | {m.n} | {m.a:.2f} | "
                     f"{m.b:.2f} | {m.delta:+.2f} | [{m.ci_low:+.2f}, {m.ci_high:+.2f}] | "
                     f"{wins} | {m.verdict} |")
    lines.append("")
    lines.append(f"paired bootstrap: {result.samples} draws of the common items, seed "
                 f"{result.seed}" + (f"; not compared: {result.only_a} item(s) only in A, "
                                     f"{result.only_b} only in B"
                                     if result.only_a or result.only_b else ""))
    for note in result.judges_differ:
        lines.append(f"warning: the runs' ASR judges differ, so B - A here is partly the "
                     f"judges': {note}")
    if result.settings_differ:
        lines.append("warning: the runs were made with different settings, which alone can "
                     "move figures (spoken ones most: their speech tokens are sampled): "
                     + "; ".join(result.settings_differ))
    return "\n".join(lines)
