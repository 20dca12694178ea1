"""HiFT vocoder: shapes, exact and default streaming, excitation phase carry, GAN step with two
optimisers, overfitting one utterance, CosyVoice 2 parameter count."""

import math

import pytest
import torch

from minmo.audio.mel import estimate_f0, mel_spectrogram
from minmo.config import HiFTConfig, load_model_config
from minmo.models.vocoder import HiFTVocoder, VocoderGAN
from minmo.modules.hift_blocks import SineSource


@pytest.fixture(scope="module")
def vocoder():
    torch.manual_seed(0)
    return HiFTVocoder(HiFTConfig()).eval()


def _voiced_wave(frames: int = 16, f_start: float = 150.0, f_end: float = 220.0) -> torch.Tensor:
    sr = 24000
    t = torch.arange(480 * frames) / sr
    f0 = f_start + (f_end - f_start) * t / t[-1]
    phase = 2 * math.pi * torch.cumsum(f0 / sr, 0)
    env = torch.sin(math.pi * t / t[-1]).clamp(min=0).sqrt()
    return ((0.4 * torch.sin(phase) + 0.2 * torch.sin(2 * phase) + 0.1 * torch.sin(3 * phase)) * env)[None]


def _stream(voc, mel, cuts, **kw):
    state, outs = voc.init_state(mel.shape[0]), []
    for a, b in zip(cuts[:-1], cuts[1:]):
        out, state = voc.step(mel[:, :, a:b], state, final=b == cuts[-1], **kw)
        outs.append(out)
    return torch.cat(outs, dim=1), [o.shape[1] for o in outs]


def test_offline_shapes(vocoder):
    mel = torch.randn(2, 80, 30) - 4
    with torch.no_grad():
        audio, f0 = vocoder(mel)
    assert audio.shape == (2, 30 * 480) and f0.shape == (2, 30)
    assert audio.abs().max() <= 0.99


def test_streaming_with_receptive_field_context_is_exact(vocoder):
    torch.manual_seed(1)
    mel = torch.randn(2, 80, 100) - 4
    with torch.no_grad():
        offline, _ = vocoder(mel)
    rf = vocoder.receptive_field()
    streamed, sizes = _stream(vocoder, mel, [0, 24, 54, 84, 100], context_frames=rf, lookahead_frames=rf,
                              crossfade_frames=2)
    assert sum(sizes) == 100 * 480
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=0)


def test_receptive_field_bound_holds(vocoder):
    mel = torch.randn(1, 80, 80) - 4
    with torch.no_grad():
        base, _ = vocoder(mel)
        mel[:, :, 40] += 2.0
        moved, _ = vocoder(mel)
    changed = ((moved - base).abs() > 0).nonzero()[:, 1]
    reach = max(40 * 480 - int(changed.min()), int(changed.max()) - 41 * 480) / 480
    assert 1 <= reach <= vocoder.receptive_field()


def test_default_streaming_is_close_and_click_free(vocoder):
    torch.manual_seed(2)
    mel = torch.randn(1, 80, 120) - 4
    with torch.no_grad():
        offline, _ = vocoder(mel)
    cuts = [0, 24, 54, 84, 114, 120]
    streamed, sizes = _stream(vocoder, mel, cuts)
    assert sizes[0] == (24 - vocoder.cfg.stream_lookahead_frames) * 480  # lookahead held back
    rms = offline.pow(2).mean().sqrt()
    assert (streamed - offline).abs().max() < 0.05 * rms
    # no jump at a join larger than the largest sample-to-sample step of the offline audio
    joins = torch.tensor(sizes[:-1]).cumsum(0)
    steps = (offline[0, 1:] - offline[0, :-1]).abs()
    assert (streamed[0, joins] - streamed[0, joins - 1]).abs().max() <= steps.max()


def test_sine_source_phase_carry_matches_one_pass():
    src = SineSource(24000, 480).eval()
    f0 = torch.cat([torch.full((1, 7), 180.0), torch.zeros(1, 3), torch.linspace(100, 300, 10)[None]], dim=1)
    whole, _ = src(f0)
    a, phase = src(f0[:, :6])
    b, _ = src(f0[:, 6:], phase, sample_offset=6 * 480)
    torch.testing.assert_close(torch.cat([a, b], dim=2), whole, atol=1e-5, rtol=0)


def test_gan_step_uses_two_optimisers():
    torch.manual_seed(3)
    gan = VocoderGAN(HiFTConfig(disc_channels=4))
    groups = gan.param_groups()
    groups = {k: list(v.values()) for k, v in groups.items()}
    assert {id(p) for p in groups["generator"]}.isdisjoint({id(p) for p in groups["discriminator"]})
    assert len(groups["generator"]) + len(groups["discriminator"]) == len(list(gan.parameters()))
    opt_g = torch.optim.AdamW(groups["generator"], lr=2e-4)
    opt_d = torch.optim.AdamW(groups["discriminator"], lr=2e-4)
    wave = _voiced_wave(12)
    batch = {"wave": wave, "f0": estimate_f0(wave)}
    d_before = [p.detach().clone() for p in groups["discriminator"]]
    g_before = [p.detach().clone() for p in groups["generator"]]
    out_d = gan(batch, losses=("discriminator",))
    loss_d, md = out_d.loss, out_d.metrics
    opt_d.zero_grad()
    loss_d.backward()
    assert all(p.grad is None for p in groups["generator"])
    opt_d.step()
    loss_g, mg = gan.generator_loss(batch)
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    assert math.isfinite(md["disc_loss"]) and {"gen_adv", "gen_fm", "mel_l1", "f0_l1", "gen_loss"} <= set(mg)
    assert any(not torch.equal(a, b) for a, b in zip(d_before, groups["discriminator"]))
    assert any(not torch.equal(a, b) for a, b in zip(g_before, groups["generator"]))


def test_overfits_one_utterance():
    """Mel-L1 (natural-log mel, full band) of one 0.32 s utterance falls below 1.5 in 60 steps."""
    torch.manual_seed(4)
    gan = VocoderGAN(HiFTConfig())
    wave = _voiced_wave(16)
    batch = {"wave": wave, "f0": estimate_f0(wave)}
    opt = torch.optim.AdamW(gan.generator.parameters(), lr=2e-3)
    first = None
    for _ in range(60):
        loss, metrics = gan.reconstruction_loss(batch)
        first = metrics["mel_l1"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, metrics = gan.reconstruction_loss(batch)
    print(f"vocoder mel-L1 {first:.3f} -> {metrics['mel_l1']:.3f}, F0-L1 {metrics['f0_l1']:.1f} Hz")
    assert metrics["mel_l1"] < 1.5 and metrics["mel_l1"] < 0.4 * first


def test_cosyvoice2_shapes_match_public_parameter_count():
    cfg = load_model_config("minmo-7b").vocoder
    with torch.device("meta"):
        voc = HiFTVocoder(cfg)
    n = sum(p.numel() for p in voc.parameters())
    # CosyVoice 2 hift.pt (HiFTGenerator at cosyvoice2.yaml shapes, weight-norm g and v): 20,821,295
    assert abs(n - 20_821_295) / 20_821_295 < 0.10
    names = {k for k, _ in voc.named_parameters()}
    assert "f0_predictor.condnet.8.parametrizations.weight.original1" in names
    assert "source_resblocks.2.activations2.2.alpha" in names and "m_source.l_linear.weight" in names


def test_mel_matches_vocoder_hop():
    wave = _voiced_wave(10)
    assert mel_spectrogram(wave).shape[-1] * 480 == wave.shape[1]


def test_multi_resolution_stft_loss():
    """Zero for identical audio, larger for worse copies, and part of the reconstruction loss
    (with a gradient) only when ``stft_loss_weight`` is set."""
    from minmo.models.vocoder import multi_resolution_stft_loss

    resolutions = HiFTConfig().stft_loss_resolutions
    wave = _voiced_wave(12)[0:1]
    noise = torch.randn_like(wave, generator=torch.Generator().manual_seed(0))
    assert float(multi_resolution_stft_loss(wave, wave, resolutions)) < 1e-6
    near = float(multi_resolution_stft_loss(wave, wave + 0.01 * noise, resolutions))
    far = float(multi_resolution_stft_loss(wave, wave + 0.1 * noise, resolutions))
    assert 0 < near < far
    batch = {"wave": wave}
    assert "stft" not in VocoderGAN(HiFTConfig()).reconstruction_loss(batch)[1]
    torch.manual_seed(5)
    gan = VocoderGAN(HiFTConfig(stft_loss_weight=20.0))
    loss, metrics = gan.reconstruction_loss(batch)
    loss.backward()
    assert metrics["stft"] > 0 and all(p.grad is not None for p in gan.generator.conv_post.parameters())
    assert loss.item() > 45.0 * metrics["mel_l1"] + 19.0 * metrics["stft"]
