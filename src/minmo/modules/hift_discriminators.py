"""Discriminators for HiFT vocoder training (as CosyVoice 2's ``MultipleDiscriminator``).

* :class:`MultiPeriodDiscriminator` (HiFi-GAN): the waveform folded into ``(T/p, p)`` for each
  period ``p``, 2-D convolutions along time.
* :class:`MultiResSpecDiscriminator`: 2-D convolutions on linear magnitude spectrograms at
  several STFT resolutions.

Each discriminator returns its logits (flattened) and the list of intermediate feature maps
used by the feature-matching loss. ``channels`` scales the widths (HiFi-GAN uses 32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

LRELU_SLOPE = 0.1

Logits = list[torch.Tensor]
FeatureMaps = list[list[torch.Tensor]]


def conv_stack(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``convs`` with leaky ReLU, then ``post``: flattened logits and every layer's output
    (the feature maps of the feature-matching loss)."""
    fmap = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = post(x)
    fmap.append(x)
    return torch.flatten(x, 1), fmap


class PeriodDiscriminator(nn.Module):
    """One period of the multi-period discriminator."""

    def __init__(self, period: int, channels: int = 32, kernel_size: int = 5, stride: int = 3):
        super().__init__()
        self.period = period
        widths = [1, channels, channels * 4, channels * 16, channels * 32, channels * 32]
        pad = (kernel_size - 1) // 2
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(widths[i], widths[i + 1], (kernel_size, 1), (stride if i < 4 else 1, 1), (pad, 0)))
            for i in range(5)
        ])
        self.conv_post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), 1, (1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x``: ``(B, 1, N)`` -> logits ``(B, L)`` and feature maps."""
        b, c, n = x.shape
        if n % self.period:
            x = F.pad(x, (0, self.period - n % self.period), mode="reflect" if n > self.period else "constant")
        return conv_stack(self.convs, self.conv_post, x.view(b, c, -1, self.period))


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN multi-period discriminator over ``periods``."""

    def __init__(self, periods: list[int] | tuple[int, ...] = (2, 3, 5, 7, 11), channels: int = 32):
        super().__init__()
        self.discriminators = nn.ModuleList([PeriodDiscriminator(p, channels) for p in periods])

    def forward(self, y: torch.Tensor) -> tuple[Logits, FeatureMaps]:
        """``y``: ``(B, N)`` waveform."""
        outs = [d(y.unsqueeze(1)) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class SpecDiscriminator(nn.Module):
    """2-D conv discriminator on a magnitude spectrogram of one resolution."""

    def __init__(self, fft_size: int, hop: int, win_length: int, channels: int = 32):
        super().__init__()
        self.fft_size, self.hop, self.win_length = fft_size, hop, win_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        c = channels
        self.discriminators = nn.ModuleList([
            weight_norm(nn.Conv2d(1, c, (3, 9), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
        ])
        self.out = weight_norm(nn.Conv2d(c, 1, 3, 1, 1))

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``y``: ``(B, N)`` -> logits and feature maps."""
        spec = torch.stft(y, self.fft_size, self.hop, self.win_length, self.window.to(y.device), return_complex=True)
        return conv_stack(self.discriminators, self.out, spec.abs().transpose(1, 2).unsqueeze(1))  # (B, 1, frames, bins)


class MultiResSpecDiscriminator(nn.Module):
    """Spectrogram discriminators at ``resolutions`` (``[n_fft, hop, win]`` each)."""

    def __init__(self, resolutions: list[list[int]], channels: int = 32):
        super().__init__()
        self.discriminators = nn.ModuleList([SpecDiscriminator(n, h, w, channels) for n, h, w in resolutions])

    def forward(self, y: torch.Tensor) -> tuple[Logits, FeatureMaps]:
        outs = [d(y) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class MultipleDiscriminator(nn.Module):
    """``mpd`` + ``mrd``; returns logits and feature maps of real and generated audio."""

    def __init__(self, periods: list[int], resolutions: list[list[int]], channels: int = 32):
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(periods, channels)
        self.mrd = MultiResSpecDiscriminator(resolutions, channels)

    def forward(self, y: torch.Tensor) -> tuple[Logits, FeatureMaps]:
        """``y``: ``(B, N)`` waveform -> all logits and feature maps."""
        l1, f1 = self.mpd(y)
        l2, f2 = self.mrd(y)
        return l1 + l2, f1 + f2
