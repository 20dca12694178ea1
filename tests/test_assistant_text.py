"""Assistant sentences from Home Assistant's intent templates (minmo.data.assistant_text)."""

from __future__ import annotations

import itertools
import random

import pytest

pytest.importorskip("hassil")
pytest.importorskip("home_assistant_intents")

from minmo.data import assistant_text as at  # noqa: E402


def test_draws_are_distinct_deterministic_and_cover_the_intents():
    first = at.assistant_utterances(600, seed=4)
    assert len(first) == 600
    assert first == at.assistant_utterances(600, seed=4)
    assert first != at.assistant_utterances(600, seed=5)
    texts = [t for _, t in first]
    assert len({at._key(t) for t in texts}) == len(texts)
    _, templates = at.load_templates("en")
    intents = {name for name, _, _ in templates}
    assert len(intents) >= 40  # 42 in home-assistant-intents 2026.12.1
    assert {name for name, _ in first} == intents  # drawn uniformly by intent
    for text in texts:
        assert not text[0].islower() and text[-1] in ".?", text
        assert not set(text) & set("{}<>[]()|°"), text


def test_every_expansion_is_one_the_template_grammar_allows():
    """Our random expander against hassil's own exhaustive sampler, template by template,
    with the same list values: each random draw must be one of the sampler's sentences."""
    from hassil.intents import TextSlotList
    from hassil.sample import sample_sentence

    intents, templates = at.load_templates("en")
    rng = random.Random(0)
    expander = at._Expander(intents, "en", rng)
    checked, varied = 0, []
    for intent, sentence, rules in templates:
        names = at.NAMES_BY_INTENT["en"].get(intent)
        values = {**at.SLOT_VALUES["en"], **({"name": names} if names else {})}
        lists = {**intents.slot_lists,
                 **{k: TextSlotList.from_strings(v) for k, v in values.items()}}
        expansions = list(itertools.islice(
            sample_sentence(sentence, lists, rules, language="en"), 20001))
        if len(expansions) > 20000:
            continue  # too many to list; the smaller templates use the same code paths
        allowed = {" ".join(a.split()) for a in expansions}
        drawn = set()
        for _ in range(8):
            text = " ".join(expander.sentence(intent, sentence, rules).split())
            assert text in allowed, (intent, sentence.text, text)
            drawn.add(text)
        checked += 1
        if len(allowed) > 1:
            varied.append(len(drawn) > 1)
    assert checked > 300
    # every alternative, optional and list is drawn, not its first branch
    assert sum(varied) >= 0.95 * len(varied)


def test_finish_punctuates_questions_and_commands():
    assert at.finish("  what time is  it ") == "What time is it?"
    assert at.finish("turn on the kitchen light") == "Turn on the kitchen light."
    assert at.finish("set the heater to 21.5 °") == "Set the heater to 21.5 degrees."
    assert at.finish("") == ""


def test_exclude_keeps_sentences_out():
    drawn = at.assistant_sentences(200, seed=9)
    kept_out = [s.upper().rstrip(".?") for s in drawn[:50]]
    again = at.assistant_sentences(200, seed=9, exclude=kept_out)
    assert not {at._key(s) for s in again} & {at._key(s) for s in drawn[:50]}
    assert len(again) == 200


def test_slot_values_avoid_the_channel_name_test_words():
    words = {w for values in at.SLOT_VALUES["en"].values() for v in values for w in v.split()}
    words |= {w for values in at.NAMES_BY_INTENT["en"].values() for v in values
              for w in v.split()}
    assert not words & {"front", "rear", "left", "right", "center", "side"}


def test_cli_writes_the_sentences_and_honours_exclude(tmp_path):
    import json

    from minmo.cli.data import main

    test_set = tmp_path / "test.jsonl"
    first = at.assistant_sentences(5, seed=1)
    test_set.write_text("".join(
        json.dumps({"id": f"t{i}", "task": "asr", "audio": "a.wav", "text": s}) + "\n"
        for i, s in enumerate(first[:2])))
    out = tmp_path / "a.txt"
    assert main(["assistant-text", "--out", str(out), "--count", "30", "--seed", "1",
                 "--exclude", str(test_set)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 30 and not set(lines) & set(first[:2])
    assert lines[:3] == first[2:5]


def test_missing_packages_say_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_hassil(name, *args, **kwargs):
        if name.startswith("hassil") or name.startswith("home_assistant_intents"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hassil)
    with pytest.raises(RuntimeError, match=r"\.\[text\]"):
        at.assistant_sentences(3)
