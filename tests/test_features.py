"""Front ends: kaldi fbank parity, LFR/CMVN semantics, Whisper log-mel parity, streaming."""

from __future__ import annotations

from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch

from minmo.audio.features import (
    FbankLfrFrontend,
    FrontendError,
    WhisperLogMelFrontend,
    apply_lfr,
    build_frontend,
    kaldi_fbank,
    load_cmvn,
)
from minmo.config import FrontendConfig


def _noise(seconds: float, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 16000)) * scale).astype(np.float32)


def _knf_fbank(wave: np.ndarray, window: str) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = window
    opts.mel_opts.num_bins = 80
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, (wave * 32768.0).tolist())
    fbank.input_finished()
    return np.stack([np.asarray(fbank.get_frame(i)) for i in range(fbank.num_frames_ready)])


@pytest.mark.parametrize("window", ["hamming", "povey"])
def test_fbank_matches_kaldi_native_fbank(window: str) -> None:
    wave = _noise(2.013, seed=1)
    ref = _knf_fbank(wave, window)
    mine = kaldi_fbank(torch.from_numpy(wave) * 32768.0, 80, window).numpy()
    assert mine.shape == ref.shape
    assert np.abs(mine - ref).max() < 1e-3


def test_fbank_batch_equals_single() -> None:
    waves = torch.from_numpy(np.stack([_noise(1.0, seed=s) for s in range(3)])) * 32768.0
    batch = kaldi_fbank(waves)
    for i in range(3):
        torch.testing.assert_close(batch[i], kaldi_fbank(waves[i]), atol=1e-4, rtol=0)


def _reference_lfr(feats: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """FunASR apply_lfr semantics written out frame by frame."""
    num_in = feats.shape[0]
    padded = torch.cat([feats[:1].repeat((m - 1) // 2, 1), feats])
    rows = []
    for i in range(-(-num_in // n)):
        window = list(padded[i * n : i * n + m])
        window += [feats[-1]] * (m - len(window))
        rows.append(torch.cat(window))
    return torch.stack(rows)


@pytest.mark.parametrize("num_in", [1, 5, 6, 7, 13, 61])
def test_lfr_matches_reference_semantics(num_in: int) -> None:
    feats = torch.randn(num_in, 4, generator=torch.Generator().manual_seed(num_in))
    out = apply_lfr(feats, 7, 6)
    assert out.shape == (-(-num_in // 6), 28)
    torch.testing.assert_close(out, _reference_lfr(feats, 7, 6), atol=0, rtol=0)


@pytest.mark.parametrize("num_samples", [0, 399, 400, 560, 1360, 16000, 16321])
def test_num_frames_is_exact(num_samples: int) -> None:
    wave = _noise(num_samples / 16000, seed=2)[:num_samples]
    for fe in (FbankLfrFrontend(), WhisperLogMelFrontend()):
        feats = fe(wave)
        assert feats.shape == (fe.num_frames(num_samples), fe.output_dim)


def test_sensevoice_frontend_shapes_and_rates() -> None:
    fe = build_frontend(FrontendConfig())
    assert fe.output_dim == 560
    assert fe.frame_shift_seconds == pytest.approx(0.06)
    feats = fe(_noise(1.0))
    assert feats.dtype == torch.float32
    assert feats.shape == (17, 560)  # 98 fbank frames -> ceil(98 / 6)
    whisper = build_frontend(FrontendConfig(kind="whisper"))
    assert whisper.output_dim == 80 and whisper.frame_shift_seconds == pytest.approx(0.01)
    assert whisper(_noise(1.0)).shape == (100, 80)


def _write_mvn(path: Path, shift: np.ndarray, scale: np.ndarray) -> None:
    def vec(v: np.ndarray) -> str:
        return " ".join(f"{x:.6f}" for x in v)

    dim = len(shift)
    path.write_text(
        "<Nnet>\n<Splice> {d} {d}\n[ 0 ]\n<AddShift> {d} {d}\n<LearnRateCoef> 0 [ {s} ]\n"
        "<Rescale> {d} {d}\n<LearnRateCoef> 0 [ {r} ]\n</Nnet>\n".format(
            d=dim, s=vec(shift), r=vec(scale))
    )


def test_cmvn_file_is_applied(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    shift = rng.uniform(-10, -5, 560).astype(np.float32)
    scale = rng.uniform(0.1, 0.5, 560).astype(np.float32)
    mvn = tmp_path / "am.mvn"
    _write_mvn(mvn, shift, scale)
    loaded_shift, loaded_scale = load_cmvn(mvn)
    np.testing.assert_allclose(loaded_shift.numpy(), shift, atol=1e-6)
    wave = _noise(0.7, seed=4)
    plain = FbankLfrFrontend()(wave)
    normed = build_frontend(FrontendConfig(cmvn_file=str(mvn)))(wave)
    expected = (plain + torch.from_numpy(shift)) * torch.from_numpy(scale)
    torch.testing.assert_close(normed, expected, atol=1e-4, rtol=1e-5)


def test_cmvn_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mvn"
    bad.write_text("<Nnet>\n<AddShift> 3 3\n<LearnRateCoef> 0 [ 1 2 3 ]\n</Nnet>\n")
    with pytest.raises(FrontendError, match="bad.mvn.*Rescale"):
        load_cmvn(bad)
    small = tmp_path / "small.mvn"
    _write_mvn(small, np.zeros(80, np.float32), np.ones(80, np.float32))
    with pytest.raises(FrontendError, match="small.mvn.*80 dims.*560"):
        build_frontend(FrontendConfig(cmvn_file=str(small)))
    with pytest.raises(FrontendError, match="not found"):
        build_frontend(FrontendConfig(cmvn_file=str(tmp_path / "missing.mvn")))


def test_whisper_log_mel_matches_transformers() -> None:
    from transformers import WhisperFeatureExtractor

    wave = _noise(3.3, seed=5)
    ref = WhisperFeatureExtractor(feature_size=80)(
        wave, sampling_rate=16000, return_tensors="np").input_features[0].T
    padded = np.concatenate([wave, np.zeros(480000 - len(wave), np.float32)])
    mine = WhisperLogMelFrontend()(padded).numpy()
    assert mine.shape == ref.shape == (3000, 80)
    assert np.abs(mine - ref).max() < 1e-4


def _stream(fe, wave: np.ndarray, chunk_sizes: list[int]) -> torch.Tensor:
    state = fe.init_state()
    outs, pos, i = [], 0, 0
    while pos < len(wave):
        size = chunk_sizes[i % len(chunk_sizes)]
        chunk = wave[pos : pos + size]
        pos += size
        i += 1
        out, state = fe.step(chunk, state, is_last=pos >= len(wave))
        outs.append(out)
    if not state.finished:
        out, state = fe.step(np.zeros(0, np.float32), state, is_last=True)
        outs.append(out)
    return torch.cat(outs)


@pytest.mark.parametrize("chunks", [[160], [1], [333, 7, 2000], [16000 * 5]])
def test_fbank_lfr_streaming_equals_offline(tmp_path: Path, chunks: list[int]) -> None:
    mvn = tmp_path / "am.mvn"
    rng = np.random.default_rng(6)
    _write_mvn(mvn, rng.uniform(-9, -6, 560).astype(np.float32),
               rng.uniform(0.1, 0.3, 560).astype(np.float32))
    fe = FbankLfrFrontend(cmvn_file=mvn)
    wave = _noise(1.237 if chunks != [1] else 0.2, seed=7)
    offline = fe(wave)
    streamed = _stream(fe, wave, chunks)
    assert streamed.shape == offline.shape
    torch.testing.assert_close(streamed, offline, atol=1e-4, rtol=1e-5)


def test_fbank_streaming_emits_early_and_keeps_small_buffers() -> None:
    fe = FbankLfrFrontend()
    state = fe.init_state()
    wave = _noise(3.0, seed=8)
    emitted = 0
    for pos in range(0, len(wave), 1600):
        out, state = fe.step(wave[pos : pos + 1600], state)
        emitted += out.shape[0]
        assert state.samples.shape[1] < 400 and state.frames.shape[1] <= 7
    # all but the frames whose right context is unknown are out before the end
    assert emitted >= fe.num_frames(len(wave)) - 1
    with pytest.raises(FrontendError, match="init_state"):
        _, state = fe.step(wave[:10], state, is_last=True)
        fe.step(wave[:10], state)


def test_whisper_streaming_equals_offline_when_peak_comes_first() -> None:
    fe = WhisperLogMelFrontend()
    wave = _noise(2.0, seed=9) * np.linspace(1.0, 0.01, 32000, dtype=np.float32)
    wave[:800] *= 5.0  # loudest part inside the first chunk
    offline = fe(wave)
    streamed = _stream(fe, wave, [1600, 517])
    assert streamed.shape == offline.shape
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunks", [[160], [1600, 517], [33]])
def test_whisper_streaming_equals_causal_offline_after_silence(chunks) -> None:
    """A live stream starts in silence: each frame is floored against the loudest frame so
    far, which ``causal=True`` computes offline, for any chunking; Whisper's global floor
    differs on the silent start."""
    fe = WhisperLogMelFrontend()
    wave = np.concatenate([np.zeros(8000, np.float32), 1e-4 * _noise(0.5, seed=3),
                           _noise(1.0, seed=4)])
    causal = fe(wave, causal=True)
    streamed = _stream(fe, wave, chunks)
    assert streamed.shape == causal.shape
    torch.testing.assert_close(streamed, causal, atol=1e-5, rtol=1e-5)
    assert (fe(wave) - causal)[:50].abs().max() > 0.3  # the silent start
    feats, _ = fe.batch([wave, wave[:20000]], causal=True)
    torch.testing.assert_close(feats[0], causal)


def test_batched_streams_and_batch_api() -> None:
    fe = FbankLfrFrontend()
    waves = np.stack([_noise(0.9, seed=s) for s in (10, 11)])
    state = fe.init_state(batch_size=2)
    out_a, state = fe.step(waves[:, :5000], state)
    out_b, state = fe.step(waves[:, 5000:], state, is_last=True)
    streamed = torch.cat([out_a, out_b], dim=1)
    feats, lens = fe.batch([waves[0], waves[1][:8000]])
    assert lens.tolist() == [fe.num_frames(len(waves[0])), fe.num_frames(8000)]
    torch.testing.assert_close(streamed[0], feats[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(feats[1, : lens[1]], fe(waves[1][:8000]), atol=1e-4, rtol=1e-5)
    assert feats[1, lens[1]:].abs().sum() == 0


def test_bad_inputs_have_clear_errors() -> None:
    fe = FbankLfrFrontend()
    with pytest.raises(FrontendError, match="float"):
        fe(np.zeros(1000, dtype=np.int16))
    with pytest.raises(FrontendError, match="sample_rate"):
        build_frontend(FrontendConfig(sample_rate=8000))
