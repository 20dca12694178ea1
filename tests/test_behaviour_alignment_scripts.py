"""The two scripts that make behaviour-alignment rows: questions about common nouns
(``scripts/wordnet_questions.py``) and spoken questions paired with the model's typed replies
(``scripts/typed_reply_targets.py``)."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_questions_take_each_nouns_forms_and_never_an_open_test_answer() -> None:
    script = _script("wordnet_questions")
    exclude = script.excluded_words(SCRIPTS / "open_questions_en.txt")
    assert {"giraffe", "moscow", "piano", "washington"} <= exclude
    nouns = {"rabbit": 5, "owl": 5, "bread": 13, "hammer": 6, "giraffe": 5}
    found = script.questions(nouns, exclude, random.Random(0))
    assert not any("giraffe" in q for q in found)
    assert "Where does a rabbit live?" in found and "What does an owl eat?" in found
    assert "What does bread taste like?" in found and "What is a hammer used for?" in found
    assert len(found) == sum(len(script.FORMS[k]) for n, k in nouns.items() if n != "giraffe")
    assert found == script.questions(nouns, exclude, random.Random(0))  # seeded order


def test_rows_pair_each_spoken_question_with_its_typed_reply(tmp_path) -> None:
    script = _script("typed_reply_targets")
    (tmp_path / "audio").mkdir()
    rows = [{"id": "a", "task": "asr", "audio": "audio/a.wav", "text": "What is a hammer?"},
            {"id": "b", "task": "asr", "audio": "audio/b.wav", "text": "What is an owl?"},
            {"id": "c", "task": "tts", "text": "What is a hammer?"}]
    manifest = tmp_path / "asr.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    replies = tmp_path / "replies.jsonl"
    replies.write_text(json.dumps({"text": "What is a hammer?", "reply": "A tool."}) + "\n")
    out = tmp_path / "chat.jsonl"
    assert script.main(["rows", str(manifest), "--replies", str(replies), "--out", str(out)]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == [{"id": "a-typed", "task": "s2t_chat", "text": "What is a hammer?",
                        "audio": str((tmp_path / "audio" / "a.wav").resolve()),
                        "target": "A tool."}]
