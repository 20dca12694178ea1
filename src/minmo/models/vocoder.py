"""HiFT vocoder: 80-bin mel (50 Hz) -> 24 kHz waveform, and its GAN training losses.

    mel (B, 80, T) --f0_predictor--> F0 (B, T) --m_source--> excitation (B, 1, 480 T)
    mel --conv_pre--> [lrelu, ups[i] (x8, x5, x3), + source_downs[i](STFT(excitation)) ->
    source_resblocks[i], mean of resblocks] --conv_post--> log-magnitude + phase (n_fft 16)
    --iSTFT (hop 4)--> audio (B, 480 T)

Module names follow CosyVoice 2's ``HiFTGenerator``. Training (:class:`VocoderGAN`) uses two
optimisers: one over ``generator`` parameters, one over ``discriminator`` parameters; each
training step calls :meth:`VocoderGAN.discriminator_loss` (step the discriminator optimiser),
then :meth:`VocoderGAN.generator_loss` (step the generator optimiser). See
``docs/speech_generation.md``.

Streaming (:meth:`HiFTVocoder.init_state` / :meth:`HiFTVocoder.step`): the vocoder is
non-causal, so each step re-reads ``stream_context_frames`` already emitted mel frames (and
their excitation) on the left, holds back the last ``stream_lookahead_frames`` frames until
more mel arrives (emitting them at the end), and cross-fades ``stream_crossfade_frames``
frames where a held-back region computed earlier meets the same region computed with more
right context. With context and lookahead at least the receptive field
(:meth:`HiFTVocoder.receptive_field`), streaming output equals the offline output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from minmo.audio.mel import MelSettings, mel_spectrogram
from minmo.config import HiFTConfig
from minmo.modules.cuda_graphs import CudaGraphCache
from minmo.modules.hift_blocks import F0Predictor, ResBlock, SineSource, init_conv_weights
from minmo.modules.hift_discriminators import MultipleDiscriminator
from minmo.modules.speech_outputs import LossOutput


@dataclass
class HiFTStreamState:
    """Per-session streaming state of :class:`HiFTVocoder` (owned by the caller).

    Attributes:
        frames_done: mel frames whose audio has been emitted (absolute).
        mel_context: ``(B, n_mels, <= context)`` last emitted mel frames (left context).
        source_context: ``(B, 1, hop * context)`` their excitation.
        pending_mel: ``(B, n_mels, P)`` received frames not yet emitted.
        phase: ``(B, harmonics + 1)`` float64 excitation phase at frame ``frames_done``.
        tail: ``(B, S)`` audio of the first pending frames computed last step (cross-fade).
    """

    frames_done: int
    mel_context: torch.Tensor
    source_context: torch.Tensor
    pending_mel: torch.Tensor
    phase: torch.Tensor | None
    tail: torch.Tensor


class HiFTVocoder(nn.Module):
    """HiFT generator (neural source filter + HiFi-GAN + iSTFT).

    Args:
        cfg: shapes and streaming settings (:class:`minmo.config.HiFTConfig`).
    """

    def __init__(self, cfg: HiFTConfig):
        super().__init__()
        self.cfg = cfg
        self.n_fft, self.istft_hop = cfg.istft_n_fft, cfg.istft_hop
        self.hop = int(np.prod(cfg.upsample_rates)) * cfg.istft_hop
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.lrelu_slope = cfg.lrelu_slope
        base = cfg.base_channels
        self.f0_predictor = F0Predictor(cfg.n_mels, cfg.f0_channels, cfg.f0_layers)
        self.m_source = SineSource(cfg.sample_rate, self.hop, cfg.nb_harmonics, cfg.nsf_alpha, cfg.nsf_sigma,
                                   cfg.nsf_voiced_threshold)
        self.conv_pre = weight_norm(nn.Conv1d(cfg.n_mels, base, 7, padding=3))
        self.ups = nn.ModuleList([
            weight_norm(nn.ConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, padding=(k - u) // 2))
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
        ])
        cum = np.cumprod([1] + cfg.upsample_rates[::-1][:-1])[::-1]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(zip(cum, cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes)):
            ch = base // 2 ** (i + 1)
            u = int(u)
            conv = nn.Conv1d(self.n_fft + 2, ch, 1) if u == 1 else nn.Conv1d(self.n_fft + 2, ch, u * 2, u, padding=u // 2)
            self.source_downs.append(conv)
            self.source_resblocks.append(ResBlock(ch, k, d))
        self.resblocks = nn.ModuleList([
            ResBlock(base // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
        ])
        self.conv_post = weight_norm(nn.Conv1d(base // 2 ** len(self.ups), self.n_fft + 2, 7, padding=3))
        self.ups.apply(init_conv_weights)
        self.conv_post.apply(init_conv_weights)
        self.register_buffer("stft_window", torch.hann_window(self.n_fft, periodic=True), persistent=False)
        self._graphed: tuple[CudaGraphCache, CudaGraphCache] | None = None

    def use_cuda_graphs(self, enabled: bool = True, max_graphs: int = 16, graph_factory=None) -> None:
        """Replay the streaming step's F0 predictor and generator (:meth:`spectrum`) as CUDA graphs, one per
        window length (:class:`minmo.modules.cuda_graphs.CudaGraphCache`; a no-op off CUDA).
        After the first chunks every window has the same length, so few graphs are made.
        Recordings read the weights in place: call this again after loading other weights.
        ``graph_factory``: see :class:`CudaGraphCache` (tests emulate graphs on CPU)."""
        self._graphed = None
        if enabled:
            self._graphed = (CudaGraphCache(self.f0_predictor, max_graphs, graph_factory=graph_factory),
                             CudaGraphCache(self.spectrum, max_graphs, graph_factory=graph_factory))

    # ------------------------------------------------------------------ core
    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Mel ``(B, n_mels, T)`` + excitation ``(B, 1, hop * T)`` -> audio ``(B, hop * T)``."""
        return self.istft(self.spectrum(mel, source))

    def spectrum(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """The generator: mel + excitation -> complex STFT of the audio ``(B, n_fft/2 + 1, frames)``."""
        spec = torch.stft(source.squeeze(1).float(), self.n_fft, self.istft_hop, self.n_fft,
                          window=self.stft_window.float(), return_complex=True)  # fp32 even under autocast
        s_stft = torch.cat([spec.real, spec.imag], dim=1)
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, self.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            x = sum(self.resblocks[i * self.num_kernels + j](x) for j in range(self.num_kernels)) / self.num_kernels
        x = self.conv_post(F.leaky_relu(x)).float()
        half = self.n_fft // 2 + 1
        magnitude = torch.exp(x[:, :half]).clamp(max=1e2)
        phase = torch.sin(x[:, half:])
        return torch.polar(magnitude, phase)

    def istft(self, spec: torch.Tensor) -> torch.Tensor:
        """Complex spectrum -> clamped audio. Kept out of :meth:`spectrum` because
        ``torch.istft`` checks its window envelope on the host, which a CUDA graph cannot record."""
        audio = torch.istft(spec, self.n_fft, self.istft_hop, self.n_fft, window=self.stft_window.float())
        return audio.clamp(-self.cfg.audio_limit, self.cfg.audio_limit)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offline: mel ``(B, n_mels, T)`` -> audio ``(B, hop * T)`` and predicted F0 ``(B, T)``."""
        f0 = self.f0_predictor(mel)
        source, _ = self.m_source(f0)
        return self.decode(mel, source), f0

    def receptive_field(self) -> int:
        """Upper bound, in mel frames on each side, of how far one output sample depends on the
        mel (F0 predictor, source path and generator convolutions, summed); a streaming
        context and lookahead this large reproduce the offline output exactly."""
        cfg = self.cfg

        def res_span(k: int, dilations: list[int]) -> int:  # samples on each side
            return sum((k - 1) * d // 2 + (k - 1) // 2 for d in dilations)

        total_rate = int(np.prod(cfg.upsample_rates))
        cum = np.cumprod([1] + cfg.upsample_rates[::-1][:-1])[::-1]
        rf = 3.0 + cfg.f0_layers  # conv_pre, F0 predictor (kernel-3 layers)
        rate = 1
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            rf += k / (2 * rate)
            rate *= u
            res = max(res_span(kk, d) for kk, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
            src = res_span(cfg.source_resblock_kernel_sizes[i], cfg.source_resblock_dilation_sizes[i])
            rf += (res + src) / rate + 2 * int(cum[i]) / total_rate
        rf += (4 + self.n_fft) / total_rate
        return int(math.ceil(rf))

    # ------------------------------------------------------------------ streaming
    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> HiFTStreamState:
        """Fresh streaming state for ``batch_size`` sessions."""
        device = torch.device(device)
        return HiFTStreamState(
            frames_done=0,
            mel_context=torch.zeros(batch_size, self.cfg.n_mels, 0, device=device),
            source_context=torch.zeros(batch_size, 1, 0, device=device),
            pending_mel=torch.zeros(batch_size, self.cfg.n_mels, 0, device=device),
            phase=None,
            tail=torch.zeros(batch_size, 0, device=device),
        )

    @torch.no_grad()
    def step(
        self,
        mel: torch.Tensor,
        state: HiFTStreamState,
        final: bool = False,
        context_frames: int | None = None,
        lookahead_frames: int | None = None,
        crossfade_frames: int | None = None,
    ) -> tuple[torch.Tensor, HiFTStreamState]:
        """Vocode newly arrived mel frames.

        Args:
            mel: ``(B, n_mels, T)`` new frames (``T`` may be 0).
            state: from :meth:`init_state` or the previous step (not modified).
            final: flush everything held back.
            context_frames / lookahead_frames / crossfade_frames: override the config.

        Returns:
            ``(B, hop * E)`` audio for the ``E`` frames emitted now and the new state.
        """
        ctx_n = self.cfg.stream_context_frames if context_frames is None else context_frames
        look = self.cfg.stream_lookahead_frames if lookahead_frames is None else lookahead_frames
        fade = self.cfg.stream_crossfade_frames if crossfade_frames is None else crossfade_frames
        fade = min(fade, look)
        hop = self.hop
        ctx = state.mel_context.shape[2]
        window = torch.cat([state.mel_context, state.pending_mel, mel.to(state.mel_context.dtype)], dim=2)
        total = window.shape[2]
        emit_end = total if final else total - look
        if emit_end <= ctx:  # nothing to emit yet
            new_state = HiFTStreamState(state.frames_done, state.mel_context, state.source_context,
                                        window[:, :, ctx:], state.phase, state.tail)
            return window.new_zeros(window.shape[0], 0), new_state
        f0_predictor, spectrum = self._graphed or (self.f0_predictor, self.spectrum)
        f0 = f0_predictor(window)
        new_f0 = f0[:, ctx:]
        src_emit, phase = self.m_source(new_f0[:, : emit_end - ctx], state.phase, state.frames_done * hop)
        src_rest, _ = self.m_source(new_f0[:, emit_end - ctx:], phase, (state.frames_done + emit_end - ctx) * hop)
        source = torch.cat([state.source_context, src_emit, src_rest], dim=2)
        audio = self.istft(spectrum(window, source))
        out = audio[:, ctx * hop: emit_end * hop]
        if state.tail.shape[1] > 0:
            n = min(state.tail.shape[1], out.shape[1])
            ramp = 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(n, device=out.device) + 0.5) / n)
            out = torch.cat([state.tail[:, :n] * (1 - ramp) + out[:, :n] * ramp, out[:, n:]], dim=1)
        tail = audio[:, emit_end * hop: (emit_end + fade) * hop] if not final else audio.new_zeros(audio.shape[0], 0)
        keep = max(0, emit_end - ctx_n)
        new_state = HiFTStreamState(
            frames_done=state.frames_done + emit_end - ctx,
            mel_context=window[:, :, keep:emit_end],
            source_context=source[:, :, keep * hop: emit_end * hop],
            pending_mel=window[:, :, emit_end:],
            phase=phase,
            tail=tail,
        )
        return out, new_state


# ---------------------------------------------------------------------- GAN training
def discriminator_adv_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN loss for the discriminator: ``mean((1 - D(y))^2) + mean(D(G(x))^2)``."""
    return sum(torch.mean((1 - r) ** 2) + torch.mean(g**2) for r, g in zip(real, fake))


def generator_adv_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN loss for the generator: ``mean((1 - D(G(x)))^2)``."""
    return sum(torch.mean((1 - g) ** 2) for g in fake)


def feature_matching_loss(real_maps: list[list[torch.Tensor]], fake_maps: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between discriminator feature maps of real and generated audio (x2, HiFi-GAN)."""
    loss = sum(torch.mean(torch.abs(r.detach() - g)) for rm, gm in zip(real_maps, fake_maps) for r, g in zip(rm, gm))
    return 2 * loss


def multi_resolution_stft_loss(real: torch.Tensor, fake: torch.Tensor, resolutions: list[list[int]]) -> torch.Tensor:
    """Mean over ``[n_fft, hop, win]`` resolutions of spectral convergence
    (``||R| - |F||_F / ||R||_F``) plus L1 of log magnitudes (Parallel WaveGAN's auxiliary loss).

    Args:
        real, fake: ``(B, S)`` waveforms of equal length.
    """
    total = real.new_zeros(())
    for n_fft, hop, win in resolutions:
        window = torch.hann_window(win, device=real.device, dtype=real.dtype)
        mags = [torch.stft(x, n_fft, hop, win, window, return_complex=True).abs().clamp_min(1e-7) for x in (real, fake)]
        convergence = torch.linalg.norm(mags[0] - mags[1]) / torch.linalg.norm(mags[0])
        total = total + convergence + F.l1_loss(mags[1].log(), mags[0].log())
    return total / len(resolutions)


class VocoderGAN(nn.Module):
    """HiFT generator + discriminators with the losses of one GAN training step.

    ``generator`` / ``discriminator`` are the two parameter groups (two optimisers).
    Batch keys: ``wave`` ``(B, N)`` 24 kHz audio (``N`` a multiple of the hop), optional
    ``mel`` ``(B, n_mels, N / hop)`` (computed from ``wave`` when absent) and ``f0``
    ``(B, N / hop)`` reference pitch in Hz (0 = unvoiced; F0 loss skipped when absent).
    """

    def __init__(self, cfg: HiFTConfig, mel_settings: MelSettings | None = None):
        super().__init__()
        self.cfg = cfg
        self.generator = HiFTVocoder(cfg)
        self.discriminator = MultipleDiscriminator(cfg.disc_periods, cfg.disc_resolutions, cfg.disc_channels)
        self.mel_settings = mel_settings or MelSettings(sample_rate=cfg.sample_rate, n_mels=cfg.n_mels)
        # the reconstruction loss uses the full band (CosyVoice 2: fmax = sr / 2)
        self.loss_mel_settings = MelSettings(sample_rate=cfg.sample_rate, n_mels=cfg.n_mels, fmax=None)

    def param_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """``{"generator": {name: p}, "discriminator": {name: p}}``: one optimiser each."""
        return {
            "generator": {f"generator.{k}": v for k, v in self.generator.named_parameters()},
            "discriminator": {f"discriminator.{k}": v for k, v in self.discriminator.named_parameters()},
        }

    def forward(self, batch: dict[str, torch.Tensor], losses: tuple[str, ...] = ("generator",)) -> LossOutput:
        """Training-loop entry: ``losses`` is ``("discriminator",)``, ``("generator",)`` or
        ``("reconstruction",)`` (mel/F0 only); see the module docstring for the GAN step."""
        if losses == ("discriminator",):
            return LossOutput(*self.discriminator_loss(batch))
        if losses == ("generator",):
            return LossOutput(*self.generator_loss(batch))
        if losses == ("reconstruction",):
            return LossOutput(*self.reconstruction_loss(batch))
        raise ValueError(f"VocoderGAN losses must be ('generator',), ('discriminator',) or ('reconstruction',), got {losses}")

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        wave = batch["wave"]
        hop = self.generator.hop
        frames = wave.shape[1] // hop
        wave = wave[:, : frames * hop]
        mel = batch.get("mel")
        if mel is None:
            mel = mel_spectrogram(wave, self.mel_settings)
        return wave, mel[:, :, :frames]

    def generator_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Generator step loss: adversarial + feature matching + reconstruction terms.

        Returns:
            Scalar loss (backprop into ``generator`` parameters only) and metrics.
        """
        wave, mel = self._inputs(batch)
        fake, f0 = self.generator(mel)
        real_logits, real_maps = self.discriminator(wave)
        fake_logits, fake_maps = self.discriminator(fake)
        adv = generator_adv_loss(fake_logits)
        fm = feature_matching_loss(real_maps, fake_maps)
        rec, metrics = self._reconstruction_terms(wave, fake, f0, batch.get("f0"))
        loss = adv + self.cfg.feature_loss_weight * fm + rec
        metrics = {"gen_adv": float(adv.detach()), "gen_fm": float(fm.detach()), **metrics,
                   "gen_loss": float(loss.detach())}
        return loss, metrics

    def discriminator_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Discriminator step loss on real audio vs. (detached) generated audio."""
        wave, mel = self._inputs(batch)
        with torch.no_grad():
            fake, _ = self.generator(mel)
        real_logits, _ = self.discriminator(wave)
        fake_logits, _ = self.discriminator(fake.detach())
        loss = discriminator_adv_loss(real_logits, fake_logits)
        return loss, {"disc_loss": float(loss.detach())}

    def reconstruction_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction terms only: a single-optimiser warm-up step without discriminators."""
        wave, mel = self._inputs(batch)
        fake, f0 = self.generator(mel)
        return self._reconstruction_terms(wave, fake, f0, batch.get("f0"))

    def _reconstruction_terms(self, wave: torch.Tensor, fake: torch.Tensor, f0: torch.Tensor,
                              f0_target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted mel-L1, multi-resolution STFT (when ``stft_loss_weight`` > 0) and F0-L1
        (when the batch has an ``f0`` target) of generated vs. real audio."""
        mel_l1 = F.l1_loss(mel_spectrogram(fake, self.loss_mel_settings), mel_spectrogram(wave, self.loss_mel_settings))
        loss = self.cfg.mel_loss_weight * mel_l1
        metrics = {"mel_l1": float(mel_l1.detach())}
        if self.cfg.stft_loss_weight > 0:
            stft = multi_resolution_stft_loss(wave, fake, self.cfg.stft_loss_resolutions)
            loss = loss + self.cfg.stft_loss_weight * stft
            metrics["stft"] = float(stft.detach())
        if f0_target is not None:
            f0_l1 = F.l1_loss(f0, f0_target[:, : f0.shape[1]].to(f0.dtype))
            loss = loss + self.cfg.f0_loss_weight * f0_l1
            metrics["f0_l1"] = float(f0_l1.detach())
        return loss, metrics
