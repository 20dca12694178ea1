"""Sentences people say to a voice assistant, drawn from Home Assistant's intent templates.

Every other text source of the synthetic corpus is written language: the phrase tables of
:mod:`minmo.data.text_corpus` and WordNet's example sentences. A model trained on them hears
a short spoken command ("Front center.") as the start of a gloss in their style. The
``home-assistant-intents`` package (Apache-2.0) holds, per language, the sentence templates
Home Assistant's voice pipeline understands: devices on and off, lights, covers, climate,
timers, media, lists, weather, time and date (42 intents, 862 English templates in
2026.12.1); ``hassil`` (Apache-2.0) parses their syntax. :func:`assistant_sentences` draws
random expansions of them: an intent, one of its templates, one branch of every
alternative and optional, one value of every list.

The package leaves the lists that name a home's own things (``area``, ``name``, ``floor``)
and the free-text ones (timer names, list items, search queries) to each home; the values
below fill them. They are everyday household words, written for this module. Numbers (timer
lengths, percentages, temperatures) come from the templates' own ranges, as digits, which
the scorers read as words (``minmo.eval.normalize``).

Sentences get a capital and a full stop, or a question mark where they start as a question
(``what``, ``is``, ``how``, ...). The same ``seed`` gives the same sentences for the pinned
package versions (the ``text`` extra).

    minmo data assistant-text --count 5000 --out assistant.txt
    minmo data synth --out DIR --hours 2 --languages en --kinds text --text-file assistant.txt
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

_MISSING = ("the assistant sentences need the Home Assistant intent templates and their "
            "parser: pip install -e '.[text]' (packages home-assistant-intents and hassil)")

# Values for the lists a home fills in itself. Plain household words; none is a word of the
# real-voice test sets' channel names (front, rear, left, right, center, side), so those
# clips stay a test of words heard elsewhere.
SLOT_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "area": ("kitchen", "living room", "bedroom", "bathroom", "office", "garage",
                 "hallway", "dining room", "basement", "attic", "guest room", "kids room",
                 "laundry room", "garden", "porch", "study", "nursery", "patio", "den",
                 "master bedroom", "back yard", "playroom", "pantry", "workshop"),
        "name": ("ceiling light", "desk lamp", "floor lamp", "fan", "heater", "tv",
                 "coffee maker", "porch light", "garage door", "kettle", "air purifier",
                 "reading lamp", "night light", "dishwasher", "washing machine", "speaker",
                 "thermostat", "window blinds", "curtains", "humidifier", "printer",
                 "string lights", "bedside lamp", "radio", "computer", "water heater",
                 "sprinklers", "dehumidifier", "doorbell camera", "christmas tree",
                 "aquarium light", "hallway light", "kitchen lights", "microwave"),
        "floor": ("first floor", "second floor", "ground floor", "upstairs", "downstairs",
                  "top floor", "third floor", "basement level"),
        "timer_name": ("pasta", "pizza", "laundry", "tea", "eggs", "bread", "rice", "nap",
                       "homework", "workout", "oven", "cookies", "meditation", "parking"),
        "timer_command": ("turn off the oven", "tell me to call mom", "remind me to stretch",
                          "turn on the porch light", "stop the music"),
        "shopping_list_item": ("milk", "eggs", "bread", "apples", "coffee", "butter",
                               "bananas", "rice", "toothpaste", "paper towels", "cheese",
                               "orange juice", "tomatoes", "chicken", "dish soap", "onions",
                               "cereal", "yogurt", "batteries", "flour"),
        "todo_list_item": ("call the dentist", "pay the bills", "water the plants",
                           "take out the trash", "book the flights", "clean the garage",
                           "walk the dog", "buy a birthday card", "renew the passport",
                           "send the email", "fix the bike", "mow the lawn"),
        "search_query": ("jazz", "the beatles", "classical music", "relaxing piano",
                         "the news", "rock music", "a podcast about history", "taylor swift",
                         "rain sounds", "country music", "my workout playlist", "lullabies"),
        "zone": ("home", "work", "school", "the gym", "the office", "the store"),
        "message": ("dinner is ready", "time to go", "the movie is starting",
                    "please come downstairs", "we are leaving in five minutes",
                    "bedtime in ten minutes"),
    },
}

# ``name`` is whatever entity an intent acts on; these intents act on one kind of thing.
NAMES_BY_INTENT: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "HassGetWeather": ("forecast", "weather", "home", "weather station"),
        "HassListAddItem": ("shopping list", "grocery list", "to do list", "chores list"),
        "HassListCompleteItem": ("shopping list", "grocery list", "to do list"),
        "HassListRemoveItem": ("shopping list", "grocery list", "to do list"),
        "HassVacuumStart": ("vacuum", "robot vacuum", "roomba"),
        "HassVacuumReturnToBase": ("vacuum", "robot vacuum", "roomba"),
        "HassVacuumCleanArea": ("vacuum", "robot vacuum", "roomba"),
        "HassLawnMowerStartMowing": ("lawn mower", "mower", "robot mower"),
        "HassLawnMowerDock": ("lawn mower", "mower", "robot mower"),
        "HassClimateGetTemperature": ("thermostat", "heater", "air conditioner"),
        "HassClimateSetTemperature": ("thermostat", "heater", "air conditioner"),
        "HassClimateSetFanMode": ("thermostat", "air conditioner"),
        "HassFanSetSpeed": ("fan", "ceiling fan", "desk fan"),
        "HassLightSet": ("ceiling light", "desk lamp", "floor lamp", "reading lamp",
                         "string lights", "bedside lamp", "hallway light", "night light"),
        "HassSetPosition": ("window blinds", "curtains", "garage door", "shades", "awning"),
        "HassMediaSearchAndPlay": ("kitchen speaker", "tv", "radio", "speaker"),
        "HassMediaNext": ("kitchen speaker", "tv", "radio", "speaker"),
        "HassMediaPrevious": ("kitchen speaker", "tv", "radio", "speaker"),
        "HassMediaPause": ("kitchen speaker", "tv", "radio", "speaker"),
        "HassMediaUnpause": ("kitchen speaker", "tv", "radio", "speaker"),
        "HassMediaPlayerMute": ("kitchen speaker", "tv", "radio", "speaker"),
        "HassMediaPlayerUnmute": ("kitchen speaker", "tv", "radio", "speaker"),
        "HassSetVolume": ("kitchen speaker", "tv", "radio", "speaker"),
        "HassSetVolumeRelative": ("kitchen speaker", "tv", "radio", "speaker"),
    },
}

QUESTION_WORDS = {"en": ("what", "what's", "whats", "is", "are", "how", "how's", "hows", "when",
                         "where", "which", "who", "do", "does", "did", "can", "could",
                         "will", "would", "should", "has", "have", "any")}
SYMBOL_WORDS = {"en": {"°": " degrees"}}
# Home Assistant's skip words, put in front of some commands as people do.
POLITE = {"en": (("please ", "."), ("can you ", "?"), ("could you ", "?"))}
POLITE_SHARE = 0.15


def _packages():
    """hassil's ``Intents`` and the template package's ``get_intents``, or a clear error."""
    try:
        from hassil import Intents
        from home_assistant_intents import get_intents
    except ImportError as exc:
        raise RuntimeError(_MISSING) from exc
    return Intents, get_intents


def load_templates(language: str = "en"):
    """``(intents, [(intent_name, sentence, rules), ...])``: hassil's parsed intents of
    ``language`` and every template whose lists have values (the package's own or
    :data:`SLOT_VALUES`)."""
    Intents, get_intents = _packages()
    data = get_intents(language)
    if data is None:
        raise ValueError(f"home-assistant-intents has no templates for {language!r}")
    if language not in SLOT_VALUES:
        raise ValueError(f"no slot values for {language!r}; have {sorted(SLOT_VALUES)}")
    intents = Intents.from_dict(data)
    known = set(SLOT_VALUES[language])
    from hassil.intents import WildcardSlotList

    known |= {name for name, slot in intents.slot_lists.items()
              if not isinstance(slot, WildcardSlotList)}
    templates = []
    for name in sorted(intents.intents):
        for data_block in intents.intents[name].data:
            rules = {**intents.expansion_rules, **(data_block.expansion_rules or {})}
            for sentence in data_block.sentences:
                if set(sentence.list_names(rules)) <= known:
                    templates.append((name, sentence, rules))
    return intents, templates


class _Expander:
    """One random expansion of a hassil expression tree."""

    def __init__(self, intents, language: str, rng: random.Random):
        self.lists = intents.slot_lists
        self.language = language
        self.values = SLOT_VALUES[language]
        self.rng = rng

    def sentence(self, intent: str, sentence, rules) -> str:
        """One expansion of ``sentence``, a template of ``intent``."""
        names = NAMES_BY_INTENT[self.language].get(intent)
        self.values = {**SLOT_VALUES[self.language], **({"name": names} if names else {})}
        return self.expand(sentence.expression, rules)

    def expand(self, expr, rules) -> str:
        from hassil.expression import (Alternative, ListReference, Permutation,
                                       RuleReference, Sequence, TextChunk)

        if isinstance(expr, TextChunk):
            return expr.original_text
        if isinstance(expr, Alternative):
            return self.expand(self.rng.choice(expr.items), rules)
        if isinstance(expr, Permutation):
            items = list(expr.items)
            self.rng.shuffle(items)
            return " ".join(self.expand(item, rules) for item in items)
        if isinstance(expr, Sequence):
            return "".join(self.expand(item, rules) for item in expr.items)
        if isinstance(expr, RuleReference):
            return self.expand(rules[expr.rule_name].expression, rules)
        if isinstance(expr, ListReference):
            return self._list_value(expr, rules)
        raise TypeError(f"unexpected template expression {type(expr).__name__}")

    def _list_value(self, ref, rules) -> str:
        from hassil.intents import RangeSlotList, TextSlotList

        if ref.is_inline_range:
            start, stop, step = ref.get_inline_range()
            return str(self.rng.randrange(start, stop + 1, step))
        if ref.list_name in self.values:
            return self.rng.choice(self.values[ref.list_name])
        slot = self.lists[ref.list_name]
        if isinstance(slot, TextSlotList):
            return self.expand(self.rng.choice(slot.values).text_in, rules)
        if isinstance(slot, RangeSlotList):
            number = self.rng.choice(list(slot.get_numbers()))
            return f"{number:g}" if isinstance(number, float) else str(number)
        raise KeyError(f"no values for the list {{{ref.list_name}}}")


def finish(text: str, language: str = "en") -> str:
    """A template expansion as a transcript: one space between words, a capital, and ``?``
    after a question word or ``.`` otherwise."""
    for symbol, words in SYMBOL_WORDS[language].items():
        text = text.replace(symbol, words)
    text = re.sub(r"\s+", " ", text).strip().strip(",")
    if not text:
        return ""
    first = text.split(" ", 1)[0].lower()
    end = "?" if first in QUESTION_WORDS[language] else "."
    return text[0].upper() + text[1:] + end


def assistant_sentences(count: int, seed: int = 0, language: str = "en",
                        exclude: Iterable[str] = ()) -> list[str]:
    """``count`` distinct sentences (fewer if the templates run out), each an intent drawn
    uniformly, one of its templates and a random expansion of it. ``exclude``: sentences
    never to give (compared without case and punctuation), e.g. a test set's."""
    return [text for _, text in assistant_utterances(count, seed, language, exclude)]


def assistant_utterances(count: int, seed: int = 0, language: str = "en",
                         exclude: Iterable[str] = ()) -> list[tuple[str, str]]:
    """:func:`assistant_sentences` with each sentence's intent: ``[(intent, text), ...]``."""
    intents, templates = load_templates(language)
    by_intent: dict[str, list] = {}
    for name, sentence, rules in templates:
        by_intent.setdefault(name, []).append((sentence, rules))
    names = sorted(by_intent)
    rng = random.Random(seed)
    expander = _Expander(intents, language, rng)
    seen = {_key(s) for s in exclude}
    out: list[tuple[str, str]] = []
    tries = 0
    while len(out) < count and tries < 50 * count:
        tries += 1
        intent = rng.choice(names)
        sentence, rules = rng.choice(by_intent[intent])
        text = expander.sentence(intent, sentence, rules)
        text = finish(text, language)
        if text.endswith(".") and rng.random() < POLITE_SHARE:
            prefix, end = rng.choice(POLITE[language])
            text = prefix.capitalize() + text[0].lower() + text[1:-1] + end
        key = _key(text)
        if text and key not in seen:
            seen.add(key)
            out.append((intent, text))
    return out


def _key(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())
