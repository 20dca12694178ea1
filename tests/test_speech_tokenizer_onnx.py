"""CosyVoice 2's ``speech_tokenizer_v2.onnx`` through onnxruntime: Whisper 128-bin log-mel in
the release's input layout, 25 Hz ids out, 30 s windows, and ``minmo tokenize`` with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from minmo.audio.features import WhisperLogMelFrontend
from minmo.cli.main import main
from minmo.config import SpeechTokenizerConfig
from minmo.models.speech_tokenizer import OnnxSpeechTokenizer, SpeechTokenizer, build_speech_tokenizer
from test_ckpt_cosyvoice2 import write_campplus_onnx, write_s3_tokenizer_onnx

pytest.importorskip("onnxruntime")


def _speech_like(seconds: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    f0 = 120 + 30 * torch.sin(2 * math.pi * 0.7 * t)
    wave = sum(0.5**k * torch.sin(2 * math.pi * k * torch.cumsum(f0, 0) / 16000) for k in range(1, 8))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t).abs()
    return 0.2 * wave * envelope + 0.01 * torch.randn(len(t), generator=gen)


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("cv2") / "speech_tokenizer_v2.onnx"
    return path, write_s3_tokenizer_onnx(path)


def test_ids_match_the_graph_run_on_whisper_128_bin_log_mel(s3) -> None:
    path, reference = s3
    tok = build_speech_tokenizer(SpeechTokenizerConfig(kind="onnx", onnx_path=str(path)))
    assert isinstance(tok, OnnxSpeechTokenizer)
    wave = _speech_like(1.3)
    ids = tok.tokenize_waves([wave])[0]
    assert ids.shape == (33,) and ids.dtype == torch.int64  # ceil(130 frames / 4): 25 Hz
    mel = WhisperLogMelFrontend(128).features(wave[None]).transpose(1, 2)  # the release's (1, 128, T)
    with torch.no_grad():
        expected = reference(mel, torch.tensor([mel.shape[2]], dtype=torch.int32))[0]
    agree = (ids == expected).float().mean().item()
    assert agree > 0.95, agree  # onnxruntime vs torch float rounding may flip a digit rarely
    assert len(set(ids.tolist())) > 3 and int(ids.max()) < 6561


def test_long_audio_is_cut_into_30_s_windows(s3) -> None:
    tok = OnnxSpeechTokenizer(s3[0])
    waves = [_speech_like(31.0, seed=1), _speech_like(0.5, seed=2)]
    ids = tok.tokenize_waves(waves)
    assert [len(x) for x in ids] == [775, 13]  # 750 + 25 tokens; ceil(50 / 4)
    first_window = tok.tokenize_waves([waves[0][: 30 * 16000]])[0]
    assert len(first_window) == 750


def test_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="onnx_path is not set"):
        build_speech_tokenizer(SpeechTokenizerConfig(kind="onnx"))
    with pytest.raises(FileNotFoundError, match="speech_tokenizer_v2.onnx"):
        OnnxSpeechTokenizer(tmp_path / "missing.onnx")
    bad = tmp_path / "speech_tokenizer_v2.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        OnnxSpeechTokenizer(bad)
    wrong = tmp_path / "campplus.onnx"  # one input: a speaker model, not a tokenizer
    write_campplus_onnx(wrong)
    with pytest.raises(ValueError, match=r"expected the S3 tokenizer's inputs .* found input"):
        OnnxSpeechTokenizer(wrong)
    with pytest.raises(ValueError, match="speech_tokenizer.path is not set"):
        build_speech_tokenizer(SpeechTokenizerConfig())
    assert isinstance(build_speech_tokenizer(SpeechTokenizerConfig(), allow_random=True), SpeechTokenizer)


def test_minmo_tokenize_with_the_onnx_tokenizer(tmp_path: Path, s3) -> None:
    rows = []
    for k, seconds in enumerate([0.8, 1.6]):
        sf.write(tmp_path / f"a{k}.wav", _speech_like(seconds, seed=k).numpy(), 16000)
        rows.append({"id": f"u{k}", "task": "tts", "text": "hello", "target_audio": str(tmp_path / f"a{k}.wav")})
    manifest = tmp_path / "tts.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "tts.tokens.jsonl"
    assert main(["tokenize", str(manifest), "--out", str(out), "--set", "speech_tokenizer.kind=onnx",
                 "--set", f"speech_tokenizer.onnx_path={s3[0]}"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    direct = OnnxSpeechTokenizer(s3[0]).tokenize_waves(
        [torch.from_numpy(sf.read(r["target_audio"], dtype="float32")[0]) for r in rows])
    assert [len(r["speech_tokens"]) for r in got] == [20, 40]
    assert [r["speech_tokens"] for r in got] == [d.tolist() for d in direct]
    assert np.all(np.array(got[1]["speech_tokens"]) < 6561)
