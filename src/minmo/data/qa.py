"""A spoken question-answering domain small enough for a tiny model to master.

:func:`qa_pairs` enumerates every question -> answer pair of the domain (arithmetic,
comparisons, counting, neighbours of numbers, parity, doubling/halving, days, months, unit
conversions, spelling and a small fact table), all in English, each question exactly once
with one answer. About 14,000 pairs; :func:`qa_pairs_by_split` holds a fixed hash-chosen
set out for validation and test.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from minmo.data.text_corpus import held_out_split

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
            "ninth", "tenth", "eleventh", "twelfth")

SPELL_WORDS = (
    "cat dog sun moon tree book fish bird milk cake door rain snow star ship road hand foot "
    "apple bread chair table house water green black white horse mouse train plane river "
    "music paper pencil window garden orange yellow purple flower summer winter spring autumn "
    "friend family school doctor kitchen bottle button candle carpet circle square animal "
    "banana cheese cookie dinner lemon pepper potato tomato butter coffee sugar honey salt "
    "desk lamp shoe sock coat hat ring bell drum song game ball kite boat bike bus car"
).split()

UNIT_FACTS = (  # (question unit, given unit, factor, max count)
    ("minutes", "hours", 60, 24), ("seconds", "minutes", 60, 30), ("hours", "days", 24, 14),
    ("days", "weeks", 7, 20), ("centimeters", "meters", 100, 20), ("grams", "kilograms", 1000, 10),
    ("months", "years", 12, 20), ("meters", "kilometers", 1000, 10),
)

FACTS = (
    ("What color is the sky on a clear day?", "The sky is blue."),
    ("What color is grass?", "Grass is green."),
    ("What color is snow?", "Snow is white."),
    ("What color is a banana?", "A ripe banana is yellow."),
    ("What color is a tomato?", "A ripe tomato is red."),
    ("What color is coal?", "Coal is black."),
    ("What sound does a dog make?", "A dog barks."),
    ("What sound does a cat make?", "A cat meows."),
    ("What sound does a cow make?", "A cow moos."),
    ("What sound does a duck make?", "A duck quacks."),
    ("What sound does a lion make?", "A lion roars."),
    ("How many legs does a spider have?", "A spider has 8 legs."),
    ("How many legs does a dog have?", "A dog has 4 legs."),
    ("How many legs does a bird have?", "A bird has 2 legs."),
    ("How many legs does an insect have?", "An insect has 6 legs."),
    ("How many wheels does a bicycle have?", "A bicycle has 2 wheels."),
    ("How many wheels does a car have?", "A car has 4 wheels."),
    ("How many days are in a week?", "There are 7 days in a week."),
    ("How many months are in a year?", "There are 12 months in a year."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("How many sides does a triangle have?", "A triangle has 3 sides."),
    ("How many sides does a square have?", "A square has 4 sides."),
    ("How many sides does a hexagon have?", "A hexagon has 6 sides."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Portugal?", "The capital of Portugal is Lisbon."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of England?", "The capital of England is London."),
    ("What is the capital of the Netherlands?", "The capital of the Netherlands is Amsterdam."),
    ("What is the capital of Austria?", "The capital of Austria is Vienna."),
    ("What is the capital of Greece?", "The capital of Greece is Athens."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What is the opposite of big?", "The opposite of big is small."),
    ("What is the opposite of up?", "The opposite of up is down."),
    ("What is the opposite of day?", "The opposite of day is night."),
    ("What is the opposite of fast?", "The opposite of fast is slow."),
    ("What is the opposite of open?", "The opposite of open is closed."),
    ("What is the opposite of left?", "The opposite of left is right."),
    ("What is the opposite of happy?", "The opposite of happy is sad."),
    ("What is the opposite of old?", "The opposite of old is new."),
    ("What is the opposite of light?", "The opposite of light is dark."),
    ("Which animal is the largest on land?", "The elephant is the largest land animal."),
    ("Which planet do we live on?", "We live on Earth."),
    ("What do bees make?", "Bees make honey."),
    ("What do cows give us?", "Cows give us milk."),
    ("At what temperature does water freeze?", "Water freezes at 0 degrees Celsius."),
    ("At what temperature does water boil?", "Water boils at 100 degrees Celsius."),
    ("What season comes after winter?", "Spring comes after winter."),
    ("What season comes after summer?", "Autumn comes after summer."),
    ("What season comes after spring?", "Summer comes after spring."),
    ("What season comes after autumn?", "Winter comes after autumn."),
)


@dataclass(frozen=True)
class QAPair:
    """One question with its answer and the category it comes from."""

    question: str
    answer: str
    category: str


def _arithmetic() -> list[QAPair]:
    out = []
    add_forms = ("What is {a} plus {b}?", "How much is {a} plus {b}?",
                 "Can you add {a} and {b}?", "What do you get if you add {a} and {b}?")
    for a in range(31):
        for b in range(31):
            for form in add_forms:
                out.append(QAPair(form.format(a=a, b=b), f"{a} plus {b} is {a + b}.", "add"))
    sub_forms = ("What is {a} minus {b}?", "How much is {a} minus {b}?",
                 "What do you get if you take {b} away from {a}?")
    for a in range(31):
        for b in range(a + 1):
            for form in sub_forms:
                out.append(QAPair(form.format(a=a, b=b), f"{a} minus {b} is {a - b}.", "sub"))
    mul_forms = ("What is {a} times {b}?", "How much is {a} times {b}?",
                 "What is {a} multiplied by {b}?")
    for a in range(1, 13):
        for b in range(1, 13):
            for form in mul_forms:
                out.append(QAPair(form.format(a=a, b=b), f"{a} times {b} is {a * b}.", "mul"))
    return out


def _comparisons() -> list[QAPair]:
    out = []
    for a in range(1, 51):
        for b in range(1, 51):
            if a == b:
                continue
            big, small = max(a, b), min(a, b)
            out.append(QAPair(f"Which is bigger, {a} or {b}?", f"{big} is bigger.", "compare"))
            out.append(QAPair(f"Which is smaller, {a} or {b}?", f"{small} is smaller.",
                              "compare"))
    return out


def _numbers() -> list[QAPair]:
    out = []
    for a in range(1, 41):
        for span in range(2, 7):
            nums = ", ".join(str(n) for n in range(a, a + span + 1))
            out.append(QAPair(f"Count from {a} to {a + span}.", f"{nums}.", "count"))
    for n in range(100):
        out.append(QAPair(f"What number comes after {n}?", f"{n + 1} comes after {n}.", "next"))
        if n > 0:
            out.append(QAPair(f"What number comes before {n}?", f"{n - 1} comes before {n}.",
                              "next"))
        parity = "even" if n % 2 == 0 else "odd"
        out.append(QAPair(f"Is {n} even or odd?", f"{n} is {parity}.", "parity"))
        out.append(QAPair(f"What is double {n}?", f"Double {n} is {2 * n}.", "double"))
        if n % 2 == 0:
            out.append(QAPair(f"What is half of {n}?", f"Half of {n} is {n // 2}.", "double"))
    return out


def _calendar() -> list[QAPair]:
    out = []
    for i, day in enumerate(DAYS):
        out.append(QAPair(f"What day comes after {day}?", f"{DAYS[(i + 1) % 7]} comes after "
                          f"{day}.", "days"))
        out.append(QAPair(f"What day comes before {day}?", f"{DAYS[(i - 1) % 7]} comes before "
                          f"{day}.", "days"))
        for k in range(2, 7):
            out.append(QAPair(f"What day is {k} days after {day}?",
                              f"{k} days after {day} is {DAYS[(i + k) % 7]}.", "days"))
    for i, month in enumerate(MONTHS):
        out.append(QAPair(f"What month comes after {month}?",
                          f"{MONTHS[(i + 1) % 12]} comes after {month}.", "months"))
        out.append(QAPair(f"What month comes before {month}?",
                          f"{MONTHS[(i - 1) % 12]} comes before {month}.", "months"))
        out.append(QAPair(f"What is the {ORDINALS[i]} month of the year?",
                          f"The {ORDINALS[i]} month is {month}.", "months"))
        out.append(QAPair(f"How many days does {month} have?",
                          f"{month} has {MONTH_DAYS[i]} days" +
                          (", or 29 in a leap year." if i == 1 else "."), "months"))
    return out


def _units() -> list[QAPair]:
    out = []
    for small, big, factor, max_n in UNIT_FACTS:
        for n in range(1, max_n + 1):
            big_name = big if n > 1 else big[:-1]
            out.append(QAPair(f"How many {small} are in {n} {big_name}?",
                              f"There are {n * factor} {small} in {n} {big_name}.", "units"))
    return out


def _spelling() -> list[QAPair]:
    out = []
    for word in SPELL_WORDS:
        letters = ", ".join(word.upper())
        out.append(QAPair(f"How do you spell {word}?", f"{word} is spelled {letters}.",
                          "spelling"))
        out.append(QAPair(f"How many letters are in the word {word}?",
                          f"The word {word} has {len(word)} letters.", "spelling"))
    return out


@lru_cache(maxsize=1)
def qa_pairs() -> tuple[QAPair, ...]:
    """Every QA pair of the domain, in a fixed order, questions unique."""
    pairs = (_arithmetic() + _comparisons() + _numbers() + _calendar() + _units() +
             _spelling() + [QAPair(q, a, "facts") for q, a in FACTS])
    seen: set[str] = set()
    unique = []
    for pair in pairs:
        if pair.question not in seen:
            seen.add(pair.question)
            unique.append(pair)
    return tuple(unique)


@lru_cache(maxsize=1)
def qa_pairs_by_split() -> dict[str, tuple[QAPair, ...]]:
    """QA pairs grouped by their fixed, hash-chosen split (train/valid/test)."""
    out: dict[str, list[QAPair]] = {"train": [], "valid": [], "test": []}
    for pair in qa_pairs():
        out[held_out_split("qa:" + pair.question)].append(pair)
    return {k: tuple(v) for k, v in out.items()}


BACKCHANNELS = ("uh-huh", "mm-hmm", "right", "yeah", "okay", "I see", "sure", "yes")
"""Short user back-channels that must not stop the assistant."""

COMMANDS = ("wait", "stop", "hold on", "no, no", "sorry", "excuse me", "one moment",
            "wait a second", "stop please", "actually")
"""Short user commands that open a barge-in: as short as a back-channel, yet they must stop
the assistant (``minmo.data.duplex``)."""
