"""Turning a generated reply into a class label, for the classification tasks.

MinMo answers every understanding task in words ("The speaker sounds happy."), so language
ID, emotion/style, audio events and speaker attributes are scored by reading the label out of
the reply. A :class:`LabelSpace` lists, per label, the phrases that name it; the predicted
label is the one whose phrase occurs *earliest* in the normalised reply (English normaliser,
whole-word match, hyphens as spaces). A reply naming no label is predicted as ``"none"``,
which counts as wrong.

Reference labels come from the structured fields of a row where the set has them
(``language``; ``emotion``; the non-speech entry of ``events``; ``gender``, ``pitch_level``,
``rate_level``) and otherwise from the reference text itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from minmo.eval.normalize import canonical_language, normalize_english
from minmo.eval.readers import EvalItem

NO_LABEL = "none"

LANGUAGE_PHRASES: dict[str, tuple[str, ...]] = {
    "en": ("english",), "de": ("german",), "fr": ("french",), "es": ("spanish",),
    "it": ("italian",), "pt": ("portuguese",), "nl": ("dutch",),
    "zh": ("chinese", "mandarin"), "yue": ("cantonese",), "ja": ("japanese",),
    "ko": ("korean",), "ru": ("russian",), "pl": ("polish",), "sv": ("swedish",),
    "ar": ("arabic",), "hi": ("hindi",), "tr": ("turkish",), "vi": ("vietnamese",),
    "th": ("thai",), "id": ("indonesian",),
}
EMOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "neutral": ("neutral", "calm", "calmly"),
    "happy": ("happy", "happily", "cheerful", "cheerfully", "joyful"),
    "sad": ("sad", "sadly", "unhappy", "sorrowful"),
    "angry": ("angry", "angrily", "anger", "furious"),
    "whisper": ("whisper", "whispering", "whispers", "whispered"),
}
GENDER_PHRASES = {"female": ("female", "woman", "women"), "male": ("male", "man", "men")}
PITCH_PHRASES = {"low": ("low pitched", "low pitch", "deep"),
                 "medium": ("medium pitched", "medium pitch", "normal pitched"),
                 "high": ("high pitched", "high pitch")}
RATE_PHRASES = {"slow": ("slowly", "slow"), "normal": ("normal pace", "normal speed"),
                "fast": ("fast", "quickly", "quick")}


@dataclass
class LabelSpace:
    """Labels and the phrases that name each (phrases are normalised on creation)."""

    phrases: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        self.phrases = {
            label: tuple(dict.fromkeys(_words(p) for p in phrases if _words(p)))
            for label, phrases in self.phrases.items()
        }

    @property
    def labels(self) -> list[str]:
        """The labels, in the order given."""
        return list(self.phrases)

    def extract(self, reply: str) -> str:
        """The label named earliest in ``reply`` (longer phrase wins a tie), or ``"none"``."""
        words = _words(reply).split()
        best: tuple[int, int, str] | None = None
        for label, phrases in self.phrases.items():
            for phrase in phrases:
                target = phrase.split()
                n = len(target)
                for i in range(len(words) - n + 1):
                    if words[i : i + n] == target:
                        key = (i, -n, label)
                        if best is None or key < best:
                            best = key
                        break
        return best[2] if best else NO_LABEL


def _words(text: str) -> str:
    return normalize_english(text.replace("-", " ").replace("_", " "))


def _space_from(labels: Iterable[str], table: dict[str, tuple[str, ...]]) -> LabelSpace:
    """The labels of the set first, then every other label the table knows (a reply may
    name a label absent from this set: that is a wrong answer, not "none")."""
    ordered = list(dict.fromkeys(list(labels) + list(table)))
    return LabelSpace({label: table.get(label, (label,)) for label in ordered})


@dataclass
class LabelledTask:
    """One classification view of a set: a name, true labels, and how to read replies."""

    name: str
    truth: list[str]
    space: LabelSpace

    @property
    def matrix_labels(self) -> list[str]:
        """Confusion-matrix rows: the true labels of the set, sorted (other predicted labels
        are appended as they occur)."""
        return sorted(set(self.truth))


def _event_label(item: EvalItem) -> str | None:
    events = item.extra.get("events") or []
    others = [e for e in events if e != "speech"]
    return others[0] if others else (events[0] if events else None)


def classification_views(task: str, items: Sequence[EvalItem]) -> list[LabelledTask]:
    """The labelled views of a group of classification items.

    ``lid``: the language. ``ser``: the emotion/style. ``aed``: the event. ``sa``: three views,
    gender, pitch and speaking rate (where the rows carry those fields). Rows without the
    structured field fall back to their reference text as the label.
    """
    if task == "lid":
        truth = [canonical_language(i.reference) if len(i.reference) <= 3 and i.reference
                 else canonical_language(i.language) or i.reference for i in items]
        return [LabelledTask("accuracy", truth, _space_from(sorted(set(truth)), LANGUAGE_PHRASES))]
    if task == "ser":
        truth = [str(i.extra.get("emotion") or i.reference).lower() for i in items]
        return [LabelledTask("accuracy", truth, _space_from(sorted(set(truth)), EMOTION_PHRASES))]
    if task == "aed":
        truth = [(_event_label(i) or i.reference).lower() for i in items]
        return [LabelledTask("accuracy", truth, _space_from(sorted(set(truth)), {}))]
    if task == "sa":
        views = []
        for field_name, name, table in (("gender", "gender accuracy", GENDER_PHRASES),
                                        ("pitch_level", "pitch accuracy", PITCH_PHRASES),
                                        ("rate_level", "speaking-rate accuracy", RATE_PHRASES)):
            if all(i.extra.get(field_name) for i in items):
                truth = [str(i.extra[field_name]).lower() for i in items]
                views.append(LabelledTask(name, truth, _space_from(sorted(set(truth)), table)))
        if not views:
            truth = [i.reference for i in items]
            views.append(LabelledTask("accuracy", truth, _space_from(sorted(set(truth)), {})))
        return views
    raise ValueError(f"classification_views: {task!r} is not a classification task "
                     "(lid, ser, aed, sa)")
