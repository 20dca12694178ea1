"""``minmo tts`` and ``minmo tokenize`` on a small manifest (random tiny weights)."""

import json

import numpy as np
import soundfile as sf

from minmo.cli.main import main


def test_tokenize_then_tts(tmp_path):
    sr = 16000
    t = np.arange(int(0.8 * sr)) / sr
    sf.write(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 180 * t), sr)
    rows = [
        {"id": "u1", "task": "tts", "text": "hello there", "target_audio": "a.wav"},
        {"id": "u2", "task": "tts", "text": "no audio yet", "speech_tokens": [5, 6, 7, 8, 9, 10, 11, 12]},
        {"id": "u3", "task": "asr", "audio": "a.wav", "text": "asr row"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    out = tmp_path / "m.tokens.jsonl"
    assert main(["tokenize", str(manifest), "--allow-random", "--out", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got[0]["speech_tokens"]) == 20  # 0.8 s at 25 tokens/s
    assert all(0 <= x < 6561 for x in got[0]["speech_tokens"])
    assert got[1]["speech_tokens"] == rows[1]["speech_tokens"] and "speech_tokens" not in got[2]

    wavs = tmp_path / "wavs"
    assert main(["tts", str(out), "--out-dir", str(wavs), "--set", "flow.n_timesteps=2", "--stream"]) == 0
    audio, rate = sf.read(wavs / "u1.wav")
    assert rate == 24000 and len(audio) == 20 * 960
    audio2, _ = sf.read(wavs / "u2.wav")
    assert len(audio2) == 8 * 960 and not (wavs / "u3.wav").exists()


def test_tokenize_without_weights_names_the_fix(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "x", "task": "tts", "text": "a", "speech_tokens": [1]}) + "\n")
    assert main(["tokenize", str(manifest)]) == 1
    assert "speech_tokenizer.path" in capsys.readouterr().err


def test_tts_reads_a_text_aloud_with_the_whole_model(tmp_path, capsys):
    out = tmp_path / "said.wav"
    assert main(["tts", "--text", "Hi.", "--model", "tiny", "--out", str(out)]) == 0
    audio, rate = sf.read(out)
    assert rate == 24000
    assert len(audio) == 2 * 25 * 960  # random weights never stop: the 2 s floor of the cap
    assert "random" in capsys.readouterr().err.lower()  # the random-weights warning
    assert main(["tts", "--text", "Hi.", "--model", "tiny"]) == 1
    assert "--out" in capsys.readouterr().err
    assert main(["tts", "--out", str(out)]) == 1
    assert "either --text" in capsys.readouterr().err


def test_tokenize_with_a_package_uses_the_tokenizer_it_carries(tmp_path, capsys):
    """``--model DIR``: a package's ``model.yaml`` and its ``speech_tokenizer.safetensors``
    give the same tokens as the tokenizer file named directly."""
    import torch

    from minmo.checkpoints import save_tensors
    from minmo.config import load_model_config, save_yaml
    from minmo.models.speech_tokenizer import SpeechTokenizer

    sr = 16000
    t = np.arange(int(0.8 * sr)) / sr
    sf.write(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 180 * t), sr)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "u1", "task": "tts", "text": "hi",
                                    "target_audio": "a.wav"}) + "\n")
    package = tmp_path / "pkg"
    package.mkdir()
    cfg = load_model_config("tiny")
    save_yaml(cfg, package / "model.yaml")
    assert main(["tokenize", str(manifest), "--model", str(package)]) == 1
    assert "carries no speech tokenizer" in capsys.readouterr().err
    torch.manual_seed(4)
    save_tensors(SpeechTokenizer(cfg.speech_tokenizer).state_dict(),
                 package / "speech_tokenizer.safetensors")
    tokens = {}
    for name, args in (("package", ["--model", str(package)]),
                       ("file", ["--set", f"speech_tokenizer.path={package}/speech_tokenizer.safetensors"])):
        out = tmp_path / f"{name}.tokens.jsonl"
        assert main(["tokenize", str(manifest), "--out", str(out), *args]) == 0
        tokens[name] = json.loads(out.read_text())["speech_tokens"]
    assert len(tokens["package"]) == 20 and tokens["package"] == tokens["file"]
