"""Voice encoders: SenseVoice SAN-M (layout, FunASR parity, padding, chunked streaming) and the
native Whisper encoder (transformers parity, variable length, padding)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minmo.config import EncoderConfig
from minmo.models.encoder import (
    EncoderError,
    SenseVoiceEncoder,
    build_encoder,
    convert_sensevoice_state_dict,
    count_parameters,
)
from minmo.models.whisper_encoder import WhisperEncoderWrapper, convert_hf_whisper_state_dict


def tiny_cfg(**overrides) -> EncoderConfig:
    base = dict(input_dim=560, d_model=64, num_heads=4, ffn_dim=128, num_blocks=3, tp_blocks=2,
                ctc_vocab=40)
    base.update(overrides)
    return EncoderConfig(**base)


def tiny_encoder(seed: int = 0, **overrides) -> SenseVoiceEncoder:
    torch.manual_seed(seed)
    enc = SenseVoiceEncoder(tiny_cfg(**overrides)).eval()
    with torch.no_grad():  # move norms and FSMN kernels off their trivial init
        for name, param in enc.named_parameters():
            if "norm" in name or "fsmn" in name:
                param.add_(0.2 * torch.randn_like(param))
    return enc


# ---- layout and sizes ---------------------------------------------------------------------


def _sanm_block_params(in_dim: int, d: int, ffn: int, kernel: int) -> int:
    qkv = in_dim * 3 * d + 3 * d
    out = d * d + d
    fsmn = d * kernel
    ffn_params = d * ffn + ffn + ffn * d + d
    norms = 2 * in_dim + 2 * d
    return qkv + out + fsmn + ffn_params + norms


def test_parameter_names_follow_funasr() -> None:
    names = set(tiny_encoder().state_dict())
    for key in ("encoders0.0.self_attn.linear_q_k_v.weight", "encoders0.0.norm1.weight",
                "encoders.1.self_attn.fsmn_block.weight", "encoders.1.self_attn.linear_out.bias",
                "encoders.1.feed_forward.w_1.weight", "encoders.1.feed_forward.w_2.bias",
                "encoders.0.norm2.bias", "after_norm.weight", "tp_encoders.1.norm1.weight",
                "tp_norm.bias", "query_embed.weight", "ctc_lo.weight", "ctc_lo.bias"):
        assert key in names, key
    assert not any(k.startswith("encoders.2.") for k in names)  # num_blocks - 1 = 2


def test_sensevoice_small_and_7b_sizes_on_meta() -> None:
    with torch.device("meta"):
        small = build_encoder(EncoderConfig(d_model=512, num_heads=4, ffn_dim=2048,
                                            num_blocks=50, tp_blocks=20, ctc_vocab=25055))
        large = build_encoder(EncoderConfig(d_model=1024, num_heads=16, ffn_dim=4096,
                                            num_blocks=31, tp_blocks=20))
    expected_small = (_sanm_block_params(560, 512, 2048, 11)
                      + 69 * _sanm_block_params(512, 512, 2048, 11)
                      + 2 * 2 * 512 + 16 * 560 + 512 * 25055 + 25055)
    assert count_parameters(small) == expected_small == 233_999_167
    assert abs(count_parameters(large) / 636e6 - 1.0) < 0.03
    assert next(large.parameters()).is_meta


# ---- FunASR semantics ---------------------------------------------------------------------


def _reference_sanm_layer(layer, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """EncoderLayerSANM written out: explicit -inf softmax and zero-padded FSMN conv."""
    attn = layer.self_attn
    h = F.layer_norm(x, layer.norm1.normalized_shape, layer.norm1.weight, layer.norm1.bias, 1e-5)
    q, k, v = attn.linear_q_k_v(h).chunk(3, dim=-1)
    b, t, d = v.shape
    mask = valid[:, :, None].float()
    vm = v * mask
    kern = attn.fsmn_block.weight.shape[-1]
    memory = F.conv1d(F.pad(vm.transpose(1, 2), ((kern - 1) // 2, (kern - 1) // 2)),
                      attn.fsmn_block.weight, groups=d).transpose(1, 2)
    memory = (memory + vm) * mask
    heads = attn.num_heads

    def split(z: torch.Tensor) -> torch.Tensor:
        return z.reshape(b, t, heads, d // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    ctx = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, t, d)
    att = attn.linear_out(ctx) + memory
    x = x + att if x.shape[-1] == d else att
    h = F.layer_norm(x, layer.norm2.normalized_shape, layer.norm2.weight, layer.norm2.bias, 1e-5)
    return x + layer.feed_forward.w_2(torch.relu(layer.feed_forward.w_1(h)))


def _reference_encoder(enc: SenseVoiceEncoder, feats: torch.Tensor, lens: torch.Tensor,
                       query_ids: torch.Tensor) -> torch.Tensor:
    x = torch.cat([enc.query_embed(query_ids), feats], dim=1)
    t, dim = x.shape[1], x.shape[2]
    pos = torch.arange(1, t + 1, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(dim // 2) * -(math.log(10000.0) / (dim / 2 - 1)))[None, :]
    x = x * math.sqrt(enc.output_dim) + torch.cat([torch.sin(pos * inv), torch.cos(pos * inv)], 1)
    valid = torch.arange(t)[None, :] < (lens + 4)[:, None]
    for layer in [*enc.encoders0, *enc.encoders]:
        x = _reference_sanm_layer(layer, x, valid)
    x = enc.after_norm(x)
    for layer in enc.tp_encoders:
        x = _reference_sanm_layer(layer, x, valid)
    return enc.tp_norm(x)


def test_matches_written_out_reference_with_queries() -> None:
    enc = tiny_encoder(seed=1)
    feats = torch.randn(2, 19, 560)
    lens = torch.tensor([19, 11])
    queries = torch.tensor([[0, 1, 2, 15], [4, 1, 2, 14]])
    with torch.no_grad():
        out, out_lens = enc(feats, lens, query_ids=queries)
        ref = _reference_encoder(enc, feats, lens, queries)
        default, _ = enc(feats, lens)
    assert out.shape == (2, 23, 64) and out_lens.tolist() == [23, 15]
    for b, n in enumerate(out_lens.tolist()):
        torch.testing.assert_close(out[b, :n], ref[b, :n], atol=1e-5, rtol=1e-5)
        assert out[b, n:].abs().sum() == 0
    torch.testing.assert_close(default[0], out[0])  # defaults are [0, 1, 2, 15]
    assert (default[1, :15] - out[1, :15]).abs().max() > 1e-3  # queries matter
    assert enc.ctc_logits(out).shape == (2, 23, 40)


def test_funasr_state_dict_maps_one_to_one() -> None:
    enc = tiny_encoder(seed=2)
    funasr_like = {}
    for key, value in enc.state_dict().items():
        if key == "query_embed.weight":
            funasr_like["embed.weight"] = value
        elif key.startswith("ctc_lo."):
            funasr_like["ctc." + key] = value
        else:
            funasr_like["encoder." + key] = value
    other = SenseVoiceEncoder(tiny_cfg())
    other.load_state_dict(convert_sensevoice_state_dict(funasr_like), strict=True)
    with pytest.raises(EncoderError, match="decoder.weight"):
        convert_sensevoice_state_dict({**funasr_like, "decoder.weight": torch.zeros(1)}, "x.pt")


def test_matches_funasr_when_installed() -> None:
    model_mod = pytest.importorskip("funasr.models.sense_voice.model")
    torch.manual_seed(3)
    ref = model_mod.SenseVoiceEncoderSmall(
        input_size=560, output_size=64, attention_heads=4, linear_units=128, num_blocks=3,
        tp_blocks=2, kernel_size=11, sanm_shfit=0).eval()
    enc = SenseVoiceEncoder(tiny_cfg(ctc_vocab=0, num_queries=0)).eval()
    enc.load_state_dict(convert_sensevoice_state_dict(
        {"encoder." + k: v for k, v in ref.state_dict().items()}))
    feats, lens = torch.randn(2, 17, 560), torch.tensor([17, 9])
    with torch.no_grad():
        expected, _ = ref(feats.clone(), lens)
        out, _ = enc(feats, lens)
    torch.testing.assert_close(out[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, :9], expected[1, :9], atol=1e-5, rtol=1e-5)


# ---- padding, chunked streaming, training -----------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_padding_does_not_change_valid_outputs(chunk_size: int | None) -> None:
    enc = tiny_encoder(seed=4)
    feats = torch.randn(3, 25, 560)
    lens = torch.tensor([25, 13, 1])
    noisy = feats.clone()
    for b, n in enumerate(lens.tolist()):
        noisy[b, n:] = 100.0 * torch.randn_like(noisy[b, n:])
    with torch.no_grad():
        out, out_lens = enc(noisy, lens, chunk_size=chunk_size)
        for b, n in enumerate(lens.tolist()):
            alone, _ = enc(feats[b:b + 1, :n], lens[b:b + 1], chunk_size=chunk_size)
            torch.testing.assert_close(out[b, : n + 4], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_streaming_step_equals_chunked_forward(chunk_size: int) -> None:
    enc = tiny_encoder(seed=5)
    feats = torch.randn(2, 22, 560)
    queries = torch.tensor([[4, 1, 2, 14], [0, 1, 2, 15]])
    with torch.no_grad():
        offline, _ = enc(feats, query_ids=queries, chunk_size=chunk_size)
        full, _ = enc(feats, query_ids=queries)
        state = enc.init_state(2, query_ids=queries)
        outs = []
        for start in range(0, 22, chunk_size):
            out, state = enc.step(feats[:, start:start + chunk_size], state)
            outs.append(out)
    streamed = torch.cat(outs, dim=1)
    assert outs[0].shape[1] == 4 + min(chunk_size, 22)
    assert state.num_positions == 26
    torch.testing.assert_close(streamed, offline, atol=2e-5, rtol=1e-5)
    assert (full - offline).abs().max() > 1e-3  # the chunked regime really is different


def test_chunked_outputs_do_not_depend_on_future_chunks() -> None:
    enc = tiny_encoder(seed=6)
    feats = torch.randn(1, 20, 560)
    changed = feats.clone()
    changed[:, 12:] = torch.randn(1, 8, 560)
    with torch.no_grad():
        a, _ = enc(feats, chunk_size=6)
        b, _ = enc(changed, chunk_size=6)
    torch.testing.assert_close(a[:, : 4 + 12], b[:, : 4 + 12])  # chunks 0..1 unchanged
    assert (a[:, 16:] - b[:, 16:]).abs().max() > 1e-3


def test_backward_with_padding_is_finite() -> None:
    enc = tiny_encoder(seed=7, dropout=0.1).train()
    feats = torch.randn(2, 10, 560)
    out, lens = enc(feats, torch.tensor([10, 3]))
    enc.ctc_logits(out).logsumexp(-1).sum().backward()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_bad_inputs_have_clear_errors() -> None:
    enc = tiny_encoder()
    with pytest.raises(EncoderError, match=r"\(B, T, 560\).*lfr_m"):
        enc(torch.randn(1, 5, 80))
    with pytest.raises(EncoderError, match="query_ids"):
        enc(torch.randn(1, 5, 560), query_ids=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(EncoderError, match="ctc_vocab"):
        tiny_encoder(ctc_vocab=0).ctc_logits(torch.randn(1, 2, 64))
    with pytest.raises(EncoderError, match="encoder.num_blocks"):
        SenseVoiceEncoder(tiny_cfg(num_blocks=0))


# ---- Whisper ------------------------------------------------------------------------------


def whisper_cfg(**overrides) -> EncoderConfig:
    base = dict(kind="whisper", input_dim=80, d_model=64, num_heads=4, ffn_dim=128,
                num_blocks=2, max_positions=1500)
    base.update(overrides)
    return EncoderConfig(**base)


def test_whisper_matches_transformers_on_3000_frames() -> None:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(8)
    hf_cfg = WhisperConfig(num_mel_bins=80, d_model=64, encoder_layers=2,
                           encoder_attention_heads=4, encoder_ffn_dim=128,
                           max_source_positions=1500)
    hf = WhisperEncoder(hf_cfg).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    mine = build_encoder(whisper_cfg()).eval()
    assert isinstance(mine, WhisperEncoderWrapper)
    mine.load_state_dict(convert_hf_whisper_state_dict(
        {"model.encoder." + k: v for k, v in hf.state_dict().items()}), strict=True)
    torch.testing.assert_close(mine.embed_positions.weight, hf.embed_positions.weight)
    mel = torch.randn(1, 80, 3000)
    with torch.no_grad():
        expected = hf(mel).last_hidden_state
        out, out_lens = mine(mel.transpose(1, 2), torch.tensor([3000]))
    assert out.shape == expected.shape == (1, 1500, 64) and out_lens.tolist() == [1500]
    assert (out - expected).abs().max() <= 1e-5


def test_whisper_variable_length_and_padding() -> None:
    torch.manual_seed(9)
    enc = build_encoder(whisper_cfg()).eval()
    feats = torch.randn(3, 41, 80)
    lens = torch.tensor([41, 20, 7])
    noisy = feats.clone()
    for b, n in enumerate(lens.tolist()):
        noisy[b, n:] = 50.0
    with torch.no_grad():
        out, out_lens = enc(noisy, lens)
        assert out.shape == (3, 21, 64) and out_lens.tolist() == [21, 10, 4]
        for b, n in enumerate(lens.tolist()):
            alone, _ = enc(feats[b:b + 1, :n])
            torch.testing.assert_close(out[b, : out_lens[b]], alone[0], atol=1e-5, rtol=1e-5)
            assert out[b, out_lens[b]:].abs().sum() == 0
    with pytest.raises(ValueError, match="max_positions"):  # chunked: the stream's business
        enc(torch.randn(1, 3002, 80), chunk_size=4)


def test_whisper_reads_inputs_over_one_window_as_consecutive_windows() -> None:
    """Over 30 s (2 * max_positions frames) the encoder reads window after window, as Whisper
    reads long audio, instead of refusing: a 47 s `minmo chat` file, a 30 s server turn with
    its 300 ms of prefix padding."""
    torch.manual_seed(10)
    enc = build_encoder(whisper_cfg(max_positions=20)).eval()  # windows of 40 frames
    feats = torch.randn(2, 95, 80)
    lens = torch.tensor([95, 43])
    with torch.no_grad():
        out, out_lens = enc(feats, lens)
        assert out_lens.tolist() == [48, 22] == enc.output_lengths(lens).tolist()
        for b, n in enumerate(lens.tolist()):
            windows = [enc(feats[b:b + 1, s:min(s + 40, n)])[0][0] for s in range(0, n, 40)]
            torch.testing.assert_close(out[b, :out_lens[b]], torch.cat(windows))
            assert out[b, out_lens[b]:].abs().sum() == 0
        # within one window nothing changes
        short, _ = enc(feats[:1, :40])
        torch.testing.assert_close(out[0, :20], short[0])


@pytest.mark.parametrize("chunk_size,piece", [(1, 1), (4, 7), (5, 33)])
def test_whisper_streaming_step_equals_chunked_forward(chunk_size: int, piece: int) -> None:
    torch.manual_seed(10)
    enc = build_encoder(whisper_cfg()).eval()
    feats = torch.randn(2, 97, 80)
    with torch.no_grad():
        offline, _ = enc(feats, chunk_size=chunk_size)
        full, _ = enc(feats)
        state = enc.init_state(2, chunk_size=chunk_size)
        outs = []
        for start in range(0, 97, piece):  # mel frames arrive in arbitrary pieces
            out, state = enc.step(feats[:, start:start + piece], state)
            assert out.shape[1] % chunk_size == 0
            outs.append(out)
    streamed = torch.cat(outs, dim=1)
    # every frame whose chunk is complete and whose conv inputs (2 mel frames ahead) arrived
    assert streamed.shape[1] == (97 - 3) // 2 + 1 - ((97 - 3) // 2 + 1) % chunk_size
    torch.testing.assert_close(streamed, offline[:, :streamed.shape[1]], atol=2e-5, rtol=1e-5)
    assert (full - offline).abs().max() > 1e-3  # the chunked regime really is different


def test_whisper_chunked_outputs_do_not_depend_on_future_chunks() -> None:
    torch.manual_seed(11)
    enc = build_encoder(whisper_cfg()).eval()
    feats = torch.randn(1, 60, 80)
    changed = feats.clone()
    changed[:, 27:] = torch.randn(1, 33, 80)  # mel 27 is seen by output frame 12 (conv stem)
    with torch.no_grad():
        a, _ = enc(feats, chunk_size=4)
        b, _ = enc(changed, chunk_size=4)
    torch.testing.assert_close(a[:, :12], b[:, :12])  # chunks 0..2 unchanged
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-3


def test_whisper_stream_restarts_past_its_positions_with_left_context() -> None:
    torch.manual_seed(12)
    enc = build_encoder(whisper_cfg(max_positions=24)).eval()
    feats = torch.randn(1, 130, 80)  # 64 encoder frames: past 24 positions twice
    with torch.no_grad():
        state = enc.init_state(1, chunk_size=4, context_frames=9)  # rounded down to 8
        assert state.context_frames == 8
        outs = []
        for start in range(0, 130, 10):
            out, state = enc.step(feats[:, start:start + 10], state)
            outs.append(out)
        streamed = torch.cat(outs, dim=1)
        # segments of 24 positions: frames 0..23; then each restart re-encodes 8 frames
        # (16 mel frames) of left context and emits 16 new ones: 24..39, 40..55, 56..63
        # (the same weights with more positions: offline, frame 23 of 24 could only see zero
        # padding after it, while the stream's frame 23 waits for mel 48)
        ref = build_encoder(whisper_cfg(max_positions=48)).eval()
        weights = {k: v for k, v in enc.state_dict().items() if k != "embed_positions.weight"}
        assert ref.load_state_dict(weights, strict=False).missing_keys == ["embed_positions.weight"]
        segments = [ref(feats[:, 2 * first:2 * first + 50], chunk_size=4)[0]
                    for first in (0, 16, 32, 48)]
    assert streamed.shape[1] == 64  # no frame lost or repeated: every frame of mel 0..129
    torch.testing.assert_close(streamed[:, :24], segments[0][:, :24], atol=2e-5, rtol=1e-5)
    for i, first in enumerate((24, 40, 56), start=1):
        got = streamed[:, first:first + 16]
        torch.testing.assert_close(got, segments[i][:, 8:8 + got.shape[1]], atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="chunk_size"):
        enc.init_state(1, chunk_size=13)


def test_whisper_builds_on_meta_and_converts_full_model_keys() -> None:
    with torch.device("meta"):
        enc = build_encoder(whisper_cfg(d_model=384, num_heads=6, ffn_dim=1536, num_blocks=4))
    assert count_parameters(enc) == 8_208_384  # Whisper tiny's encoder
    state = {"model.encoder.conv1.weight": torch.zeros(1), "model.decoder.layers.0.fc1.weight":
             torch.zeros(1), "proj_out.weight": torch.zeros(1)}
    assert list(convert_hf_whisper_state_dict(state)) == ["conv1.weight"]
    with pytest.raises(ValueError, match="ckpt.bin"):
        convert_hf_whisper_state_dict({"proj_out.weight": torch.zeros(1)}, "ckpt.bin")


def test_build_encoder_rejects_unknown_kind() -> None:
    cfg = tiny_cfg()
    cfg.kind = "conformer"  # type: ignore[assignment]
    with pytest.raises(EncoderError, match="sensevoice or whisper"):
        build_encoder(cfg)
