"""Speaker embeddings: the tiny encoder learns to tell voices apart; a CAM++-style ONNX model on
disk gives the same embedding through onnxruntime."""

import math

import pytest
import torch

from minmo.config import SpeakerEncoderConfig
from minmo.models.speaker import OnnxSpeakerEmbedder, SpeakerEncoder, build_speaker_embedder, speaker_features


def _voice(speaker: int, utt: int, seconds: float = 0.6, sr: int = 16000) -> torch.Tensor:
    """A toy 'voice': pitch and spectral tilt per speaker, a random melody per utterance."""
    gen = torch.Generator().manual_seed(1000 * speaker + utt)
    f0 = 110 + 45 * speaker + 15 * torch.rand(1, generator=gen)
    t = torch.arange(int(seconds * sr)) / sr
    vibrato = 1 + 0.05 * torch.sin(2 * math.pi * (2 + 3 * torch.rand(1, generator=gen)) * t)
    phase = 2 * math.pi * torch.cumsum(f0 * vibrato / sr, 0)
    tilt = 0.35 + 0.15 * speaker
    wave = sum((tilt**k) * torch.sin(k * phase) for k in range(1, 12))
    return 0.2 * wave / wave.abs().max() + 0.003 * torch.randn(len(t), generator=gen)


def _batch(speakers, utts):
    feats = [speaker_features(_voice(s, u)) for s in speakers for u in utts]
    return {"feats": torch.stack(feats), "feat_lens": torch.full((len(feats),), feats[0].shape[0]),
            "speaker_ids": torch.tensor([s for s in speakers for _ in utts])}


def test_features_are_mean_normalised_fbank():
    f = speaker_features(_voice(0, 0))
    assert f.shape == (58, 80)
    assert f.mean(dim=0).abs().max() < 1e-4


def test_tiny_encoder_learns_speakers():
    torch.manual_seed(0)
    cfg = SpeakerEncoderConfig(channels=32, num_layers=2, num_speakers=4)
    model = SpeakerEncoder(cfg)
    train, held_out = _batch(range(4), range(6)), _batch(range(4), range(6, 9))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        out = model(train)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.embed(held_out["feats"]), dim=-1)
        acc = model(held_out).metrics["speaker_acc"]
    ids = held_out["speaker_ids"]
    sim = emb @ emb.t()
    same = sim[ids[:, None] == ids[None, :]].mean()
    diff = sim[ids[:, None] != ids[None, :]].mean()
    assert emb.shape == (12, 192)
    assert acc >= 0.75 and same > diff + 0.2, (acc, float(same), float(diff))


def test_onnx_embedder_matches_the_exported_model(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(1)
    model = SpeakerEncoder(SpeakerEncoderConfig(channels=16, num_layers=2, num_speakers=3)).eval()

    class Export(torch.nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

        def forward(self, feats):
            return self.enc.embed(feats)

    path = tmp_path / "campplus_like.onnx"
    feats = speaker_features(_voice(1, 0))
    torch.onnx.export(Export(model).eval(), (feats[None],), str(path), dynamo=False, input_names=["feats"],
                      output_names=["embedding"], dynamic_axes={"feats": {1: "frames"}})
    onnx_model = build_speaker_embedder(SpeakerEncoderConfig(kind="onnx", onnx_path=str(path)))
    assert isinstance(onnx_model, OnnxSpeakerEmbedder)
    wave = _voice(2, 3, seconds=0.9)  # a different length than the export example
    torch.testing.assert_close(onnx_model.embed_wave(wave), model.embed_wave(wave), atol=1e-4, rtol=1e-4)


def test_onnx_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="onnx_path"):
        build_speaker_embedder(SpeakerEncoderConfig(kind="onnx"))
    with pytest.raises(FileNotFoundError, match="campplus.onnx"):
        OnnxSpeakerEmbedder(tmp_path / "missing.onnx")


def test_info_lists_the_tiny_speaker_encoder_without_its_training_head():
    from minmo.cli.info import _speech_modules
    from minmo.config import load_model_config

    tiny = load_model_config("tiny")
    modules = _speech_modules(tiny)
    enc = SpeakerEncoder(tiny.speaker)
    embedding = sum(p.numel() for n, p in enc.named_parameters() if n != "classifier")
    assert sum(p.numel() for p in modules["speaker"].parameters()) == embedding
    assert "speaker" not in _speech_modules(load_model_config("minmo-7b"))  # CAM++ runs as ONNX
