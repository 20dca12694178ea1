"""Everyday questions about common things, for training speech-to-text to answer what it
hears as the LLM answers the same words typed (``scripts/typed_reply_targets.py``).

    .venv/bin/python scripts/wordnet_questions.py --out questions.txt [--count 3000]
        [--exclude scripts/open_questions_en.txt] [--seed 0]

The nouns are WordNet's (Debian ``wordnet-base``, read from ``/usr/share/wordnet``): lemmas
whose first sense is an animal, food, plant, artifact, body part, substance, place or natural
object, used in WordNet's sense-tagged corpus at least ``--min-count`` times (so common words,
"dog", "bread", "hammer"), each put into a few question forms of its kind ("What does a
rabbit eat?", "What is a hammer used for?"). Any question holding a word of an excluded
file's questions' accepted answers (``question<TAB>answer|answer`` lines) is dropped, so an
open test's answers are never in the training text. Output: one question per line, in a
seeded order.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

WORDNET = Path("/usr/share/wordnet")
FORMS = {
    5: ("What is a {a}?", "Where does a {a} live?", "What does a {a} eat?",
        "Tell me something about the {a}."),  # noun.animal
    13: ("What is {m}?", "What does {m} taste like?", "How do you make {m}?",
         "Is {m} good for you?"),  # noun.food
    20: ("What is a {a}?", "Where does a {a} grow?", "What does a {a} look like?"),  # noun.plant
    6: ("What is a {a}?", "What is a {a} used for?", "How does a {a} work?",
        "Can you explain what a {a} is?"),  # noun.artifact
    8: ("What does the {a} do?", "Where in the body is the {a}?"),  # noun.body
    27: ("What is {m}?", "What is {m} made of?", "What is {m} used for?"),  # noun.substance
    15: ("What is a {a}?", "Can you describe a {a}?"),  # noun.location
    17: ("What is a {a}?", "Where would you find a {a}?"),  # noun.object
}
"""WordNet lexicographer file number of the noun's first sense -> question forms; ``{a}``
takes the noun as a countable thing, ``{m}`` as a mass noun."""
DEFAULT_EXCLUDE = Path(__file__).resolve().parent / "open_questions_en.txt"


def common_nouns(min_count: int) -> dict[str, int]:
    """``{lemma: lexicographer file}`` of single-word lowercase nouns whose first sense is in
    :data:`FORMS` and is tagged at least ``min_count`` times (``cntlist.rev``)."""
    path = WORDNET / "cntlist.rev"
    if not path.is_file():
        raise SystemExit(f"{path} not found: install WordNet (apt-get install wordnet-base)")
    nouns = {}
    for line in path.read_text().splitlines():
        key, sense, count = line.split()
        lemma, _, rest = key.partition("%")
        ss_type, lexfile = rest.split(":")[:2]
        if (ss_type == "1" and sense == "1" and int(count) >= min_count
                and int(lexfile) in FORMS and re.fullmatch(r"[a-z]+", lemma)):
            nouns[lemma] = int(lexfile)
    return nouns


def excluded_words(path: Path) -> set[str]:
    """The lower-case words of the accepted answers in a questions file."""
    words: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            words |= set(re.findall(r"[a-z]+", line.partition("\t")[2].lower()))
    return words


def questions(nouns: dict[str, int], exclude: set[str], rng: random.Random) -> list[str]:
    out = []
    for lemma, lexfile in sorted(nouns.items()):
        if lemma in exclude:
            continue
        article = "an" if lemma[0] in "aeiou" else "a"
        for form in FORMS[lexfile]:
            out.append(form.replace("a {a}", f"{article} {lemma}").replace("{a}", lemma)
                       .replace("{m}", lemma))
    rng.shuffle(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output text file")
    parser.add_argument("--count", type=int, default=3000, help="questions to write (at most)")
    parser.add_argument("--min-count", type=int, default=3,
                        help="least sense-tagged uses of a noun's first sense")
    parser.add_argument("--exclude", type=Path, nargs="*", default=[DEFAULT_EXCLUDE],
                        help="questions files whose answers' words no question may hold")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    exclude = set().union(*(excluded_words(p) for p in args.exclude)) if args.exclude else set()
    found = questions(common_nouns(args.min_count), exclude, random.Random(args.seed))
    written = found[:args.count]
    args.out.write_text("".join(q + "\n" for q in written), encoding="utf-8")
    print(f"wordnet_questions: {len(written)} of {len(found)} questions -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
