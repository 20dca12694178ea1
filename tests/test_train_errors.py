"""Acceptance 7: a broken config, a missing manifest file and manifest rows with missing audio
each give a one-line error naming the file/row and the fix; bad rows are skipped, counted in
the summary, and training of the other rows goes on."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minmo.cli.train import main as train_main
from minmo.training.toydata import write_toy_corpus

CONFIG = "configs/train/s2t_prealign.yaml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_toy_corpus(tmp_path_factory.mktemp("errors"), num_examples=3)


def _fast(out: Path) -> list[str]:
    return ["init=null", "optim.max_steps=2", "optim.warmup_steps=1", "data.batch_size=2",
            "data.num_workers=0", "progress=false", f"output_dir={out}"]


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1, err
    assert err.startswith("minmo train: error: ") and "Traceback" not in err
    return err


def test_unknown_key_names_file_key_and_choices(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("stage: s2t_prealign\noptim:\n  lr: 1.0e-3\n  warmup: 5\n")
    err = _one_line_error(capsys, train_main([str(bad)]))
    assert "broken.yaml" in err and "optim.warmup" in err and "warmup_steps" in err


def test_wrong_type_and_bad_yaml_and_missing_config(tmp_path, capsys):
    err = _one_line_error(capsys, train_main([CONFIG, "optim.max_steps=many"]))
    assert "s2t_prealign.yaml" in err and "optim.max_steps" in err and "int" in err

    bad = tmp_path / "syntax.yaml"
    bad.write_text("stage: [s2t_prealign\n")
    err = _one_line_error(capsys, train_main([str(bad)]))
    assert "syntax.yaml" in err and "not valid YAML" in err

    err = _one_line_error(capsys, train_main([str(tmp_path / "nope.yaml")]))
    assert "nope.yaml" in err and "not found" in err


def test_unknown_stage_lists_the_known_ones(tmp_path, capsys, corpus):
    err = _one_line_error(capsys, train_main([CONFIG, "stage=s2t_prealing",
                                              f"data.train=[{corpus['asr']}]",
                                              *_fast(tmp_path / "o")]))
    assert "s2t_prealing" in err and "s2t_prealign" in err and "duplex" in err


def test_missing_manifest_file(tmp_path, capsys):
    missing = tmp_path / "data" / "train.jsonl"
    err = _one_line_error(capsys, train_main([CONFIG, f"data.train=[{missing}]",
                                              *_fast(tmp_path / "o")]))
    assert str(missing) in err and "manifest file not found" in err and "minmo data synth" in err


def test_rows_with_missing_audio_are_skipped_and_counted(tmp_path, capsys, caplog, corpus):
    rows = [json.loads(x) for x in corpus["asr"].read_text().splitlines()]
    base = corpus["asr"].parent
    for r in rows:
        r["audio"] = str(base / r["audio"])
    gone_at_load = {**rows[0], "id": "gone-at-load", "audio": str(tmp_path / "gone1.wav")}
    gone_at_read = {k: v for k, v in rows[1].items() if k != "duration"}
    gone_at_read.update(id="gone-at-read", audio=str(tmp_path / "gone2.wav"))
    manifest = tmp_path / "with_bad.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in
                                [rows[0], gone_at_load, rows[1], gone_at_read, rows[2]]))
    caplog.set_level(logging.WARNING)
    rc = train_main([CONFIG, f"data.train=[{manifest}]", "log_every=1",
                     *_fast(tmp_path / "o"), "optim.max_steps=3"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "done: steps=3" in out and "skipped_rows=2" in out
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("gone-at-load" in w and "gone1.wav" in w and "minmo data check" in w
               for w in warnings), warnings
    assert any("gone-at-read" in w and "gone2.wav" in w for w in warnings), warnings
    # no init: the frozen parts stay random, and the warning says how to start from weights
    assert any("init is not set" in w and "llm" in w and "init=minmo-small" in w
               for w in warnings), warnings
    metrics = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["skipped_rows"] == 2


def test_without_a_progress_bar_each_logged_step_is_one_line(tmp_path, caplog, corpus):
    """stderr is not a terminal here (a log file, a batch job): no bar, so the loop says
    each log_every step in one line instead of nothing until the end."""
    caplog.set_level(logging.INFO)
    assert train_main([CONFIG, f"data.train=[{corpus['asr']}]", *_fast(tmp_path / "o"),
                       "log_every=1", "progress=true"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"], lines
    assert all(" loss " in line and " ex/s" in line for line in lines)


def test_init_that_is_nothing_names_what_init_takes(tmp_path, capsys, corpus):
    rc = train_main([CONFIG, f"data.train=[{corpus['asr']}]", *_fast(tmp_path / "o"),
                     f"init={tmp_path / 'nowhere'}"])
    err = _one_line_error(capsys, rc)
    assert "nowhere" in err and "overlay.json" in err and "minmo-small" in err


def test_all_rows_bad_is_one_line(tmp_path, capsys):
    manifest = tmp_path / "all_bad.jsonl"
    manifest.write_text(json.dumps({"id": "x", "task": "asr", "audio": str(tmp_path / "no.wav"),
                                    "text": "hi"}) + "\n")
    err = _one_line_error(capsys, train_main([CONFIG, f"data.train=[{manifest}]",
                                              *_fast(tmp_path / "o")]))
    assert "all_bad.jsonl" in err and "minmo data check" in err


def test_rows_all_bad_when_read_is_one_line_not_a_hang(tmp_path, capsys, corpus):
    """Rows that pass loading but whose audio is gone when read: a whole epoch without one
    good batch stops the run with the one-line error (it used to loop forever)."""
    row = json.loads(corpus["asr"].read_text().splitlines()[0])
    rows = [row | {"id": f"gone-{i}", "audio": str(tmp_path / f"gone{i}.wav")} for i in range(3)]
    manifest = tmp_path / "gone.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    err = _one_line_error(capsys, train_main([CONFIG, f"data.train=[{manifest}]",
                                              *_fast(tmp_path / "o")]))
    assert "every row is bad" in err


def test_console_script_exit_code_and_single_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("stage: s2t_prealign\nseed: not-a-number\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MINMO_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "minmo.cli.main", "train", str(bad)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "broken.yaml" in lines[0] and "seed" in lines[0]


def test_speech_stage_without_speech_tokens(tmp_path, capsys, corpus):
    rows = [json.loads(x) for x in corpus["tts"].read_text().splitlines()]
    manifest = tmp_path / "tts_no_tokens.jsonl"
    manifest.write_text("".join(
        json.dumps({**{k: v for k, v in r.items() if k != "speech_tokens"},
                    "target_audio": str(corpus["tts"].parent / "wavs" / "u0.wav")}) + "\n"
        for r in rows))
    err = _one_line_error(capsys, train_main(["configs/train/t2s_full.yaml",
                                              f"data.train=[{manifest}]",
                                              *_fast(tmp_path / "o")]))
    assert "tts_no_tokens.jsonl" in err and "speech_tokens" in err and "minmo tokenize" in err


def test_speech_stage_rows_without_speech_tokens_are_skipped_and_counted(tmp_path, capsys,
                                                                         caplog, corpus):
    from minmo.config import load_train_config
    from minmo.models.builders import minmo_tiny
    from minmo.training.data_source import DataPosition
    from minmo.training.manifest_data import build_manifest_source

    base = corpus["tts"].parent
    rows = [json.loads(x) for x in corpus["tts"].read_text().splitlines()]
    no_tokens = {k: v for k, v in rows[0].items() if k != "speech_tokens"}
    no_tokens.update(id="untokenized", target_audio=str(base / "wavs" / "u0.wav"))
    manifest = tmp_path / "some_tokens.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], no_tokens, *rows[1:]]))
    caplog.set_level(logging.WARNING)
    args = ["configs/train/t2s_full.yaml", f"data.train=[{manifest}]", "log_every=1",
            *_fast(tmp_path / "o")]
    assert train_main(args) == 0
    assert "done: steps=2" in capsys.readouterr().out.splitlines()[-1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    named = [w for w in warnings if "untokenized" in w]
    assert len(named) == 1 and "some_tokens.jsonl:2" in named[0], warnings
    assert "minmo tokenize" in named[0] and len(named[0].splitlines()) == 1
    metrics = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped_rows"] for m in metrics] == [1, 1]

    # the row never reaches a batch: one epoch holds exactly the tokenized rows
    source = build_manifest_source(load_train_config(args[0], args[1:]), minmo_tiny(), 0, 1)
    assert source.skipped == 1
    seen = []
    for batch, position in source.batches(DataPosition()):
        if position.epoch > 0:  # first batch of the next epoch
            break
        seen += batch["ids"]
    assert sorted(seen) == sorted(r["id"] for r in rows)
