"""Text normalisers used before scoring, and language-code helpers.

Every error rate and answer match in ``minmo.eval`` scores *normalised* text, so a model is not
penalised for casing, punctuation or writing "21" where the reference says "twenty one". The
rules are deliberately simple and fully listed here (and in ``docs/eval.md``):

English (:func:`normalize_english`), applied in this order:

1. Unicode NFKC; curly quotes and apostrophes become ASCII ``'`` / ``"``.
2. Lowercase.
3. Annotations in square or angle brackets (``[noise]``, ``<unk>``) are removed.
4. Symbols spoken as words: ``%`` -> ``percent``, ``&`` -> ``and``, ``+`` -> ``plus``,
   ``@`` -> ``at``; a currency sign before a number is read after it
   (``$5`` -> ``5 dollars``, ``£``/``€`` -> ``pounds``/``euros``).
5. Numbers written with digits become words, so they match references that spell them out:
   a number with thousands separators is a cardinal (``1,250`` -> ``one thousand two hundred
   fifty``, never a year); ordinals (``21st`` -> ``twenty
   first``); decimals digit by digit (``3.14`` -> ``three point one four``); four-digit numbers
   from 1100 to 1999 and 2010 to 2099 are read as years in pairs (``1984`` -> ``nineteen eighty
   four``, ``1900`` -> ``nineteen hundred``, ``1905`` -> ``nineteen oh five``, ``2024`` ->
   ``twenty twenty four``); every other integer as a cardinal without "and" (``2005`` -> ``two
   thousand five``, ``105`` -> ``one hundred five``). Number *words* in the text are left alone.
6. Hyphens, slashes and every other punctuation character become spaces; an apostrophe is kept
   only between two letters (``don't``, ``o'clock``), otherwise dropped.
7. Whitespace is collapsed.

Chinese and other unsegmented scripts (:func:`normalize_unsegmented`): NFKC (full-width ->
half-width), lowercase, bracketed annotations removed, every Unicode punctuation (P*) and symbol (S*) character and all
whitespace removed. No traditional/simplified conversion and no number conversion is done.

Other languages (:func:`normalize_generic`): NFKC, lowercase, bracketed annotations removed,
punctuation and symbols become spaces (apostrophes between letters kept), whitespace collapsed.
"""

from __future__ import annotations

import re
import unicodedata

# Languages written without spaces between words: scored by CER after normalize_unsegmented.
CER_LANGUAGES = frozenset({"zh", "yue", "ja", "th", "lo", "my", "km"})

_ISO639_3_TO_1 = {
    "cmn": "zh", "zho": "zh", "chi": "zh", "yue": "yue", "eng": "en", "jpn": "ja", "kor": "ko",
    "fra": "fr", "fre": "fr", "deu": "de", "ger": "de", "spa": "es", "ita": "it", "por": "pt",
    "rus": "ru", "ara": "ar", "hin": "hi", "tha": "th", "vie": "vi", "nld": "nl", "dut": "nl",
    "tur": "tr", "pol": "pl", "ind": "id", "msa": "ms", "lao": "lo", "mya": "my", "khm": "km",
}

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand")]
_IRREGULAR_ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                       "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}
_CURRENCY_WORDS = {"$": "dollars", "£": "pounds", "€": "euros", "¥": "yen"}
_SYMBOL_WORDS = {"%": " percent ", "&": " and ", "+": " plus ", "@": " at "}

_BRACKETED = re.compile(r"\[[^\]]*\]|<[^>]*>")
_CURRENCY_NUMBER = re.compile(r"([$£€¥])\s*(\d[\d,]*(?:\.\d+)?)")
_GROUPED_NUMBER = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_DECIMAL = re.compile(r"\b(\d+)\.(\d+)\b")
_INTEGER = re.compile(r"\d+")
_APOSTROPHE_VARIANTS = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'",
                                      "\u201c": '"', "\u201d": '"'})


def canonical_language(code: str | None) -> str:
    """Reduce a language code to its lowercase base (ISO 639-1 where known).

    ``"en-US"``, ``"en_us"`` -> ``"en"``; ``"cmn_hans_cn"``, ``"zh-CN"`` -> ``"zh"``;
    ``None`` or ``""`` -> ``""``.
    """
    if not code:
        return ""
    base = re.split(r"[-_]", code.strip().lower())[0]
    return _ISO639_3_TO_1.get(base, base)


def uses_cer(language: str | None) -> bool:
    """True when ``language`` is scored by character error rate (no spaces between words)."""
    return canonical_language(language) in CER_LANGUAGES


def int_to_words(number: int) -> str:
    """Spell a non-negative integer as English cardinal words, without "and".

    Example: ``int_to_words(2105)`` -> ``"two thousand one hundred five"``.
    """
    if number < 0:
        raise ValueError(f"int_to_words takes a non-negative integer, got {number}")
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if number < 1000:
        hundreds, rest = divmod(number, 100)
        words = _ONES[hundreds] + " hundred"
        return words if rest == 0 else words + " " + int_to_words(rest)
    for scale, name in _SCALES:
        if number >= scale:
            head, rest = divmod(number, scale)
            words = int_to_words(head) + " " + name
            return words if rest == 0 else words + " " + int_to_words(rest)
    # Beyond the trillions: read digit by digit rather than invent scale names.
    return " ".join(_ONES[int(d)] for d in str(number))


def ordinal_words(number: int) -> str:
    """Spell a non-negative integer as English ordinal words: ``21`` -> ``"twenty first"``."""
    words = int_to_words(number).split(" ")
    last = words[-1]
    if last in _IRREGULAR_ORDINALS:
        words[-1] = _IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_words(number: int) -> str | None:
    """Read a year as English speakers do, or ``None`` outside 1100-1999 and 2010-2099.

    ``1984`` -> ``"nineteen eighty four"``, ``1900`` -> ``"nineteen hundred"``,
    ``1905`` -> ``"nineteen oh five"``, ``2024`` -> ``"twenty twenty four"``.
    """
    if not (1100 <= number <= 1999 or 2010 <= number <= 2099):
        return None
    head, tail = divmod(number, 100)
    if tail == 0:
        return int_to_words(head) + " hundred"
    if tail < 10:
        return int_to_words(head) + " oh " + _ONES[tail]
    return int_to_words(head) + " " + int_to_words(tail)


def _integer_words(digits: str) -> str:
    number = int(digits)
    if len(digits) == 4:
        as_year = year_words(number)
        if as_year is not None:
            return as_year
    return int_to_words(number)


def _spell_numbers(text: str) -> str:
    text = _GROUPED_NUMBER.sub(
        lambda m: " " + int_to_words(int(m.group(0).replace(",", ""))) + " ", text
    )
    text = _ORDINAL.sub(lambda m: " " + ordinal_words(int(m.group(1))) + " ", text)
    text = _DECIMAL.sub(
        lambda m: " " + int_to_words(int(m.group(1))) + " point "
        + " ".join(_ONES[int(d)] for d in m.group(2)) + " ",
        text,
    )
    return _INTEGER.sub(lambda m: " " + _integer_words(m.group(0)) + " ", text)


def _strip_punctuation_keep_apostrophes(text: str) -> str:
    chars = []
    for i, ch in enumerate(text):
        if ch == "'":
            keep = 0 < i < len(text) - 1 and text[i - 1].isalpha() and text[i + 1].isalpha()
            chars.append("'" if keep else " ")
        elif unicodedata.category(ch)[0] in ("P", "S"):
            chars.append(" ")
        else:
            chars.append(ch)
    return "".join(chars)


def normalize_english(text: str) -> str:
    """Normalise English text for WER and answer matching (rules in the module docstring).

    Example: ``"Dr. Smith's 2nd visit cost $1,250 in 1984!"`` ->
    ``"dr smith's second visit cost one thousand two hundred fifty dollars in nineteen eighty
    four"``.
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHE_VARIANTS).lower()
    text = _BRACKETED.sub(" ", text)
    text = _CURRENCY_NUMBER.sub(lambda m: f" {m.group(2)} {_CURRENCY_WORDS[m.group(1)]} ", text)
    for symbol, words in _SYMBOL_WORDS.items():
        text = text.replace(symbol, words)
    text = _spell_numbers(text)
    text = _strip_punctuation_keep_apostrophes(text)
    return " ".join(text.split())


def normalize_unsegmented(text: str) -> str:
    """Normalise Chinese (or another unsegmented script) for CER: one string, no spaces.

    Example: ``"你好，世界！ OK"`` -> ``"你好世界ok"``.
    """
    text = _BRACKETED.sub(" ", unicodedata.normalize("NFKC", text).lower())
    return "".join(
        ch for ch in text if not ch.isspace() and unicodedata.category(ch)[0] not in ("P", "S")
    )


def normalize_generic(text: str) -> str:
    """Normalise text of a space-separated language other than English for WER."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHE_VARIANTS).lower()
    text = _BRACKETED.sub(" ", text)
    return " ".join(_strip_punctuation_keep_apostrophes(text).split())


def normalize_for_language(text: str, language: str | None) -> str:
    """Pick the normaliser for ``language``: English, unsegmented (CER) or generic."""
    lang = canonical_language(language)
    if lang == "en" or lang == "":
        return normalize_english(text)
    if lang in CER_LANGUAGES:
        return normalize_unsegmented(text)
    return normalize_generic(text)
