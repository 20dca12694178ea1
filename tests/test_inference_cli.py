"""Model selection (presets, model directories) and ``minmo chat`` / ``minmo bench`` plumbing."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from minmo.cli.main import main
from minmo.inference.loading import ModelLoadError, load_runtime


@pytest.fixture(autouse=True)
def no_embedded_model(monkeypatch, tmp_path):
    """These tests exercise the random-weights fallback: hide the shipped minmo-small package
    (its selection is tested in test_minmo_small_recipe.py)."""
    import minmo.inference.loading as loading

    monkeypatch.setattr(loading, "EMBEDDED_DIR", tmp_path / "no-embedded-models")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A minmo model directory written from a seeded tiny model."""
    from safetensors.torch import save_model

    from minmo.config import save_yaml

    rt = load_runtime("tiny", seed=7, vocoder="placeholder")
    d = tmp_path_factory.mktemp("model")
    save_yaml(rt.model.cfg, d / "model.yaml")
    save_model(rt.model, str(d / "model.safetensors"))
    return d, rt


def test_default_model_is_tiny_on_random_weights_and_says_so():
    rt = load_runtime(None, vocoder="placeholder")
    assert rt.info.random_weights and rt.info.name == "tiny"
    assert "random weights — not a trained model" in rt.info.warning
    assert "minmo-small" in rt.info.warning


def test_model_directory_loads_strictly(model_dir):
    d, ref = model_dir
    rt = load_runtime(str(d), seed=0, vocoder="placeholder")
    assert rt.info.random_weights is False and rt.info.source == str(d)
    for (name, a), (_, b) in zip(ref.model.state_dict().items(), rt.model.state_dict().items()):
        assert torch.equal(a, b), name
    # a run directory resolves to its latest checkpoint with full weights
    step = d.parent / "run" / "checkpoints" / "step_00000010"
    step.mkdir(parents=True)
    for f in ("model.yaml", "model.safetensors"):
        (step / f).write_bytes((d / f).read_bytes())
    assert load_runtime(str(d.parent / "run"), vocoder="placeholder").info.source == str(step)
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_runtime(str(d.parent), vocoder="placeholder")


def test_minmo_chat_writes_reply_speech(tmp_path, capsys):
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "in.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
    out = tmp_path / "out.wav"
    rc = main(["chat", str(tmp_path / "in.wav"), "--out", str(out), "--json", "--vocoder",
               "placeholder", "--max-text-tokens", "5", "--max-speech-tokens", "30", "--threads", "1",
               "--no-vad"])  # a tone: no speech, answered anyway
    captured = capsys.readouterr()
    assert rc == 0
    assert "WARNING" in captured.err and "random weights" in captured.err
    result = json.loads(captured.out)
    assert result["reply"] and result["transcript"] is not None
    wave, rate = sf.read(out)
    assert rate == 24000 and wave.shape == (30 * 960,)
    assert result["model"]["random_weights"] is True


def test_minmo_chat_beam_size_decodes_transcript_and_reply_by_beam_search(tmp_path, capsys):
    from minmo.inference import pipeline as P
    from minmo.inference.loading import load_runtime

    t = np.arange(16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    sf.write(tmp_path / "in.wav", wave, 16000)
    args = ["chat", str(tmp_path / "in.wav"), "--model", "tiny", "--json", "--text-only",
            "--max-text-tokens", "3", "--threads", "1", "--no-vad"]
    assert main(args + ["--beam-size", "3"]) == 0
    said = json.loads(capsys.readouterr().out)
    wave, _ = sf.read(tmp_path / "in.wav", dtype="float32")  # as chat reads it (16-bit)
    rt = load_runtime("tiny", vocoder="placeholder", quantize="int8")  # chat's CPU default
    gen = P.GenerationConfig(max_text_tokens=3, beam_size=3)
    expected = P.reply(rt, wave, P.new_session(rt, P.SessionConfig(generation=gen)), audio=False)
    assert (said["transcript"], said["reply"]) == (expected.transcript, expected.text)
    assert said["transcript"] == P.transcribe(rt, wave, gen=gen)
    assert main(args + ["--beam-size", "0"]) == 1
    assert "--beam-size must be >= 1" in capsys.readouterr().err
    assert main(args + ["--beam-size", "2", "--temperature", "0.7"]) == 1
    assert "use one" in capsys.readouterr().err


def test_minmo_chat_errors_name_the_path(tmp_path, capsys):
    rc = main(["chat", str(tmp_path / "missing.wav")])
    assert rc == 1 and "missing.wav" in capsys.readouterr().err
    sf.write(tmp_path / "in.wav", np.zeros(1600, np.float32), 16000)
    rc = main(["chat", str(tmp_path / "in.wav"), "--model", str(tmp_path / "nodir"), "--no-vad"])
    assert rc == 1 and "nodir" in capsys.readouterr().err


def test_minmo_chat_refuses_input_without_speech(tmp_path, capsys):
    """Silence or a tone is not a turn: the server's VAD would never start one, and a model
    asked anyway invents words ("Unsure of what to do." from 2 s of silence)."""
    import shutil
    import subprocess

    from minmo.audio.io import load_audio
    from minmo.cli.chat import heard_speech

    t = np.arange(32000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    assert not heard_speech(np.zeros(32000, np.float32)) and not heard_speech(tone)
    sf.write(tmp_path / "silence.wav", np.zeros(32000, np.float32), 16000)
    rc = main(["chat", str(tmp_path / "silence.wav"), "--vocoder", "placeholder"])
    err = capsys.readouterr().err
    assert rc == 1 and "no speech heard in" in err and "--no-vad" in err
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/install.sh installs it)")
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "said.wav"), "what time is it"], check=True)
    assert heard_speech(load_audio(tmp_path / "said.wav", 16000))


def test_bench_writes_only_its_section(tmp_path):
    from minmo.cli.bench import _section_file

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Data loading\n\nkeep me\n\n## Training\n\nme too\n")
    _section_file(str(doc), "serve-placeholder", "| a |\n|---|")
    _section_file(str(doc), "modules", "table two")
    _section_file(str(doc), "serve-placeholder", "| b |\n|---|")
    text = doc.read_text()
    assert "keep me" in text and "me too" in text
    assert text.count("## Serving") == 1 and "| a |" not in text and "| b |" in text
    assert text.index("table two") > text.index("| b |")


def test_serve_chat_bench_are_registered(capsys):
    for argv in (["serve", "--help"], ["chat", "--help"], ["bench", "serve", "--help"],
                 ["bench", "modules", "--help"], ["bench", "token2wav", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--api-key" in out and "--turn-policy" in out and "--out" in out
    assert "--barge-in-ms" in out and "--predictor-stop" in out


def test_modules_benchmark_runs_every_row_on_the_named_device():
    from minmo.serving.bench import modules_table, run_modules_benchmark

    rows, facts = run_modules_benchmark("tiny", "placeholder", threads=1, repeats=1, device="cpu")
    assert facts["device"] == "cpu"
    modules = {r[0] for r in rows}
    assert {"encoder + projector", "listening stream", "LLM", "voice LM", "duplex predictor",
            "silero VAD", "reply (one turn)"} <= modules
    assert all(r[2] > 0 for r in rows)
    assert modules_table(rows).count("\n") == len(rows) + 1


def test_every_cli_option_explains_itself():
    """`minmo ... --help` gives every option a line of help (what it does, its default)."""
    import argparse

    from minmo.cli.main import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])
            elif not action.help:
                missing.append(" ".join(path + (action.option_strings[-1:] or [action.dest])))

    walk(build_parser(), ["minmo"])
    assert not missing, f"options without help: {missing}"


def test_serve_on_a_busy_port_fails_at_once_with_the_fix(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(["serve", "--model", "tiny", "--port", str(port)])
    assert rc == 2
    assert f"127.0.0.1:{port} is in use" in capsys.readouterr().err


def test_serve_refuses_a_bad_transcript_beam_before_loading(capsys, monkeypatch):
    import minmo.inference.loading as loading

    monkeypatch.setattr(loading, "load_runtime", lambda *a, **k: pytest.fail("loaded"))
    assert main(["serve", "--model", "tiny", "--port", "0", "--transcript-beam-size", "0"]) == 2
    assert "--transcript-beam-size must be >= 1" in capsys.readouterr().err


def test_version_names_the_libraries_that_decide_results(capsys):
    import peft
    import transformers

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the line
    assert out.startswith("minmo 0.1.0 (python ")
    assert f"torch {torch.__version__}" in out and f"peft {peft.__version__}" in out
    assert f"transformers {transformers.__version__}" in out
