"""Building blocks of the HiFT vocoder (HiFi-GAN + neural source filter + iSTFT head).

* :class:`Snake` activation and the dilated :class:`ResBlock` of HiFi-GAN/BigVGAN.
* :class:`F0Predictor`: five weight-normalised convolutions + ELU, linear to one value per
  mel frame, absolute value (Hz).
* :class:`SineSource`: harmonic sine excitation from frame-rate F0. The phase is a running
  sum of ``f0 / sample_rate`` carried in float64 from one call to the next, so a stream of
  calls produces the same excitation as one call; noise is a deterministic function of the
  absolute sample index at inference (random in training).

Parameter names follow CosyVoice 2's ``hift`` (``convs1``/``convs2``/``activations1``,
``condnet``/``classifier``, ``l_linear``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of a dilated odd-kernel convolution."""
    return (kernel_size * dilation - dilation) // 2


def init_conv_weights(module: nn.Module, std: float = 0.01) -> None:
    """HiFi-GAN initialisation: normal(0, 0.01) for convolution weights."""
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        module.weight.data.normal_(0.0, std)


class Snake(nn.Module):
    """``x + 1/alpha * sin^2(alpha x)`` with one ``alpha`` per channel (linear scale)."""

    def __init__(self, channels: int, alpha: float = 1.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((channels,), alpha))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, T)``."""
        a = self.alpha[None, :, None]
        return x + (1.0 / (a + 1e-9)) * torch.sin(x * a).pow(2)


class ResBlock(nn.Module):
    """Residual stack: for each dilation, Snake -> dilated conv -> Snake -> conv, added back."""

    def __init__(self, channels: int, kernel_size: int = 3, dilations: list[int] | tuple[int, ...] = (1, 3, 5)):
        super().__init__()
        self.convs1 = nn.ModuleList([
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilations
        ])
        self.convs2 = nn.ModuleList([
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=get_padding(kernel_size, 1)))
            for _ in dilations
        ])
        self.convs1.apply(init_conv_weights)
        self.convs2.apply(init_conv_weights)
        self.activations1 = nn.ModuleList([Snake(channels) for _ in dilations])
        self.activations2 = nn.ModuleList([Snake(channels) for _ in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` -> ``(B, C, T)``."""
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = x + c2(a2(c1(a1(x))))
        return x


class F0Predictor(nn.Module):
    """Mel ``(B, n_mels, T)`` -> F0 in Hz ``(B, T)`` (``condnet`` convs + ``classifier``)."""

    def __init__(self, in_channels: int = 80, channels: int = 512, num_layers: int = 5):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [weight_norm(nn.Conv1d(in_channels if i == 0 else channels, channels, 3, padding=1)), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.abs(self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1))


def hashed_normal(index: torch.Tensor, stream: int | torch.Tensor) -> torch.Tensor:
    """Deterministic standard-normal numbers from integer positions (no table, any length).

    Args:
        index: integer tensor of absolute positions.
        stream: independent sequence id (e.g. harmonic number), or an integer tensor of them
            that broadcasts with ``index`` (all streams in one pass of element-wise kernels).

    Returns:
        float32 tensor of the broadcast shape of ``index`` and ``stream``.
    """
    mask = (1 << 32) - 1

    def mix(x: torch.Tensor) -> torch.Tensor:
        x = (x ^ (x >> 16)) * 0x7FEB352D & mask
        x = (x ^ (x >> 15)) * 0x846CA68B & mask
        return x ^ (x >> 16)

    base = index.long() * 2 + stream * 0x9E3779B1
    u1, u2 = (mix(torch.stack([base, base + 1]) & mask).double() + 0.5) / 2.0**32
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).float()


class SineSource(nn.Module):
    """Harmonic-plus-noise excitation (neural source filter), merged by ``l_linear`` + tanh.

    Args:
        sample_rate: audio rate.
        hop: samples per F0 frame.
        harmonics: overtones above the fundamental (``harmonics + 1`` sines).
        sine_amp: sine amplitude (``nsf_alpha``).
        noise_std: noise in voiced regions (unvoiced regions get ``sine_amp / 3``).
        voiced_threshold: F0 (Hz) above which a frame counts as voiced.
    """

    def __init__(self, sample_rate: int, hop: int, harmonics: int = 8, sine_amp: float = 0.1,
                 noise_std: float = 0.003, voiced_threshold: float = 10.0):
        super().__init__()
        self.sample_rate = sample_rate
        self.hop = hop
        self.dim = harmonics + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold
        self.l_linear = nn.Linear(self.dim, 1)
        gen = torch.Generator().manual_seed(1)
        start = torch.rand(self.dim, generator=gen, dtype=torch.float64)
        start[0] = 0.0
        self.register_buffer("start_phase", start, persistent=False)

    def initial_phase(self, batch: int, device: torch.device) -> torch.Tensor:
        """Phase (in cycles) at sample 0: ``(B, harmonics + 1)`` float64; fundamental at 0,
        overtones random in training and fixed at inference."""
        if self.training:
            phase = torch.rand(batch, self.dim, device=device, dtype=torch.float64)
            phase[:, 0] = 0.0
            return phase
        return self.start_phase.to(device).expand(batch, -1).clone()

    def forward(
        self, f0: torch.Tensor, phase: torch.Tensor | None = None, sample_offset: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Excitation for frames of F0.

        Args:
            f0: ``(B, T)`` F0 in Hz per frame.
            phase: ``(B, harmonics + 1)`` float64 phase (cycles) before the first sample, or
                None for the start of an utterance.
            sample_offset: absolute index of the first sample (selects the inference noise).

        Returns:
            ``(B, 1, T * hop)`` source signal and the phase after the last sample (float64).
        """
        b, t = f0.shape
        if phase is None:
            phase = self.initial_phase(b, f0.device)
        with torch.no_grad():
            f0_s = f0.detach().double().repeat_interleave(self.hop, dim=1)  # (B, N)
            mult = torch.arange(1, self.dim + 1, device=f0.device, dtype=torch.float64)
            cycles = f0_s[:, :, None] * mult / self.sample_rate  # (B, N, H)
            cum = torch.cumsum(cycles, dim=1) + phase[:, None, :]
            new_phase = cum[:, -1, :] % 1.0 if t > 0 else phase
            sines = self.sine_amp * torch.sin(2 * math.pi * (cum % 1.0)).float()
            uv = (f0_s > self.voiced_threshold).float()[:, :, None]
            amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
            n = f0_s.shape[1]
            if self.training:
                noise = torch.randn(b, n, self.dim, device=f0.device)
            else:
                idx = torch.arange(sample_offset, sample_offset + n, device=f0.device)
                harmonics = torch.arange(self.dim, device=f0.device)
                noise = hashed_normal(idx[:, None], harmonics).expand(b, -1, -1)
            waves = sines * uv + amp * noise
        source = torch.tanh(self.l_linear(waves)).transpose(1, 2)
        return source, new_phase
